package discovery

import (
	"context"
	"sync"
)

// Static is a Source over a list held in memory; Set changes it (an in-process source for
// tests and programs that embed kvgate; kvgate up uses no discovery). It is safe for
// concurrent use.
type Static struct {
	mu   sync.Mutex
	eps  []Endpoint
	subs map[*staticSub]struct{}
}

type staticSub struct {
	box latest
}

var _ Source = (*Static)(nil)

// NewStatic returns a Static holding a copy of eps.
func NewStatic(eps []Endpoint) *Static {
	return &Static{eps: sortedCopy(eps), subs: map[*staticSub]struct{}{}}
}

// Set replaces the list; watchers get the new set if it differs from the old one.
func (s *Static) Set(eps []Endpoint) {
	next := sortedCopy(eps)
	s.mu.Lock()
	defer s.mu.Unlock()
	if equalSets(s.eps, next) {
		return
	}
	s.eps = next
	for sub := range s.subs {
		sub.box.put(sortedCopy(next))
	}
}

// Endpoints returns a copy of the current list.
func (s *Static) Endpoints() []Endpoint {
	s.mu.Lock()
	defer s.mu.Unlock()
	return sortedCopy(s.eps)
}

// Watch implements Source.
func (s *Static) Watch(ctx context.Context) <-chan []Endpoint {
	sub := &staticSub{box: newLatest()}
	s.mu.Lock()
	sub.box.put(sortedCopy(s.eps))
	s.subs[sub] = struct{}{}
	s.mu.Unlock()
	return forward(ctx, sub.box, func() {
		s.mu.Lock()
		delete(s.subs, sub)
		s.mu.Unlock()
	})
}
