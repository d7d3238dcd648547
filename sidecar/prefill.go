package sidecar

import "sync"

// PrefillSet is the set of prefill engines (host:port, as the router names them in
// HeaderPrefiller) the sidecar may send a prompt and the client's credentials to: the ones
// the router could have named. Fixed addresses come from configuration; Set replaces the
// followed ones (those discovery reports). It is safe for concurrent use; the zero value and
// nil hold nothing.
type PrefillSet struct {
	mu       sync.RWMutex
	fixed    map[string]bool
	followed map[string]bool
}

// NewPrefillSet returns a set holding the fixed addresses.
func NewPrefillSet(fixed ...string) *PrefillSet {
	p := &PrefillSet{fixed: map[string]bool{}}
	for _, a := range fixed {
		p.fixed[a] = true
	}
	return p
}

// Set replaces the followed addresses (the fixed ones stay).
func (p *PrefillSet) Set(followed []string) {
	m := make(map[string]bool, len(followed))
	for _, a := range followed {
		m[a] = true
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.followed = m
}

// Has reports whether addr is a known prefill engine.
func (p *PrefillSet) Has(addr string) bool {
	if p == nil {
		return false
	}
	p.mu.RLock()
	defer p.mu.RUnlock()
	return p.fixed[addr] || p.followed[addr]
}

// Len is how many addresses the set holds.
func (p *PrefillSet) Len() int {
	if p == nil {
		return 0
	}
	p.mu.RLock()
	defer p.mu.RUnlock()
	n := len(p.fixed)
	for a := range p.followed {
		if !p.fixed[a] {
			n++
		}
	}
	return n
}
