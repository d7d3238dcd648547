package router

import (
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/zeebo/xxh3"
)

// maxSessions bounds the binding table; past it, idle bindings are swept and then any.
const maxSessions = 1 << 20

// sessions binds session IDs to endpoints. A session's first endpoint is its home: the
// rendezvous (highest random weight) winner of the session ID over the healthy endpoints
// serving its model, hashed by address. It depends on nothing but the session ID and that set,
// which every replica sees alike, so two routers, or one restarted, agree on it without
// talking; live load is deliberately not a weight, since replicas see different load. The
// table keeps the binding while the set changes (a new endpoint does not move a session) and
// forgets it after SessionTTL idle. Safe for concurrent use.
type sessions struct {
	ttl time.Duration

	mu    sync.Mutex
	binds map[string]binding
	adds  int

	gauge prometheus.GaugeFunc
	picks *prometheus.CounterVec
}

type binding struct {
	address string
	used    time.Time
}

// Outcomes of a session's pick, the outcome label of MetricSessionPicks.
const (
	SessionHome  = "home"  // picked its bound endpoint
	SessionSpill = "spill" // soft: the bound endpoint was saturated, another was picked
	SessionWait  = "wait"  // hard: the bound endpoint was saturated, the request waits for it
)

func newSessions(ttl time.Duration, reg prometheus.Registerer) *sessions {
	s := &sessions{ttl: ttl, binds: map[string]binding{}}
	s.gauge = prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: MetricSessions,
		Help: "Sessions bound to an endpoint (not idle past the session TTL)."}, func() float64 {
		s.mu.Lock()
		defer s.mu.Unlock()
		return float64(len(s.binds))
	})
	s.picks = prometheus.NewCounterVec(prometheus.CounterOpts{Name: MetricSessionPicks,
		Help: "Picks of requests carrying a session ID, by outcome (home, spill, wait)."}, []string{"outcome"})
	if reg != nil {
		reg.MustRegister(s.gauge, s.picks)
	}
	return s
}

// home returns the index in cands of the session's endpoint, binding it when unbound (or
// bound to an endpoint no longer among cands); -1 when cands is empty. cands are the healthy
// endpoints that may serve the request, saturated or not.
func (s *sessions) home(id, model string, cands []*epState, now time.Time) int {
	if len(cands) == 0 {
		return -1
	}
	key := model + "\x00" + id
	s.mu.Lock()
	defer s.mu.Unlock()
	if b, ok := s.binds[key]; ok && now.Sub(b.used) < s.ttl {
		for i, c := range cands {
			if c.ep.Address == b.address {
				s.binds[key] = binding{address: b.address, used: now}
				return i
			}
		}
	}
	best, bestH := -1, uint64(0)
	for i, c := range cands {
		if h := rendezvous(id, c.ep.Address); best < 0 || h > bestH || (h == bestH && c.ep.Address < cands[best].ep.Address) {
			best, bestH = i, h
		}
	}
	s.bindLocked(key, cands[best].ep.Address, now)
	return best
}

// rendezvous is the session's hash weight on an endpoint.
func rendezvous(id, address string) uint64 {
	return xxh3.HashString(id + "\x00" + address)
}

func (s *sessions) bindLocked(key, address string, now time.Time) {
	s.binds[key] = binding{address: address, used: now}
	s.adds++
	if s.adds < 1024 && len(s.binds) <= maxSessions {
		return
	}
	s.adds = 0
	for k, b := range s.binds {
		if now.Sub(b.used) >= s.ttl {
			delete(s.binds, k)
		}
	}
	for k := range s.binds {
		if len(s.binds) <= maxSessions {
			break
		}
		delete(s.binds, k)
	}
}
