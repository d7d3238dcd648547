package router

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"

	"github.com/kvgate/kvgate/kvindex"
)

// The routing policies.
const (
	PolicyKV           = "kv"            // cached overlap and load, as Dynamo's KV router
	PolicyRoundRobin   = "round-robin"   // rotate over the eligible endpoints
	PolicyRandom       = "random"        // uniform
	PolicyLeastLoad    = "least-load"    // the kv cost without cache credit
	PolicyApproxPrefix = "approx-prefix" // text prefix remembered per endpoint, then load (Inference Extension)
)

// Policies returns the policy names, in a new slice the caller may keep.
func Policies() []string {
	return []string{PolicyKV, PolicyRoundRobin, PolicyRandom, PolicyLeastLoad, PolicyApproxPrefix}
}

// Candidate is what the scorer knows about one eligible endpoint for one request. The
// scorer reads nothing else: no clock, no sockets, so the same decision can be replayed.
type Candidate struct {
	// Cached is how many leading prompt blocks the endpoint holds, by tier (kv policy).
	Cached [kvindex.NumTiers]int
	// Matched is how many leading text chunks were routed to it before (approx-prefix).
	Matched int
	// PrefillBlocks is the uncached prompt blocks of requests routed to it that have not
	// produced their first token yet.
	PrefillBlocks float64
	// DecodeBlocks is the blocks held by requests routed to it that have not ended.
	DecodeBlocks float64
	// Waiting is the engine-reported queue length.
	Waiting float64
	// Remote is how many prompt blocks beyond Cached the endpoint could pull from another
	// endpoint's cache (P2P); they are credited at Scoring.RemoteCredit.
	Remote int
}

// CachedBlocks is the total overlap over all tiers.
func (c *Candidate) CachedBlocks() int {
	n := 0
	for _, b := range c.Cached {
		n += b
	}
	return n
}

// Scoring holds the weights of the cost function.
type Scoring struct {
	// TierCredit is how much of a prefill a cached block saves, by tier (GPU, CPU, disk).
	TierCredit [kvindex.NumTiers]float64
	// RemoteCredit is how much of a prefill a block pulled from another endpoint saves
	// (Candidate.Remote); 0 unless the router's P2P is on.
	RemoteCredit float64
	// OverlapWeight scales the prefill term against the decode term (Dynamo's
	// overlap_score_weight, 1 there); 2 by default.
	OverlapWeight float64
	// QueueWeight is how many blocks each request in the engine's own queue counts for in
	// the decode term; 0 (Dynamo's formula) by default.
	QueueWeight float64
	// MissWeight scales this request's own uncached blocks against the in-flight prefill
	// already queued on the endpoint: a cache miss costs the request its prefill time and
	// costs every later request the engine time it takes, so values above 1 keep prefixes
	// together when engines are busy. 1 is Dynamo's formula.
	MissWeight float64
	// Temperature > 0 samples the pick from a softmax over the normalized costs; 0 takes the
	// lowest cost, ties broken at random.
	Temperature float64
}

// DefaultScoring returns the default weights: tier credit 1, 0.75, 0.25, overlap weight 2,
// miss weight 16, temperature 0.
//
// Dynamo's formula is overlap weight 1 and miss weight 1. kvgate weighs a request's own
// uncached blocks 16 times the prefill already queued on an endpoint, because a miss is engine
// time that every later request there waits behind and work the cluster does twice; under
// load Dynamo's weights trade cache hits for balance, which adds prefill work and feeds the
// overload. The overlap weight stays low (2) so that decode load still spreads requests when
// many engines share few hot prefixes. `kvgate replay` chose these over a grid of both weights
// on the Mooncake trace (1x, 1.5x, 2x rate) and on synthetic multi-turn workloads of 4, 8 and
// 64 engines (docs/BENCHMARKS.md).
func DefaultScoring() Scoring {
	return Scoring{TierCredit: [kvindex.NumTiers]float64{1, 0.75, 0.25}, OverlapWeight: 2, MissWeight: 16}
}

// DynamoScoring returns Dynamo's KV router weights (overlap weight 1, miss weight 1), for
// comparisons.
func DynamoScoring() Scoring {
	return Scoring{TierCredit: [kvindex.NumTiers]float64{1, 0.75, 0.25}, OverlapWeight: 1, MissWeight: 1}
}

// Credit is the number of prompt blocks c's cache saves.
func (s *Scoring) Credit(c *Candidate) float64 {
	var x float64
	for t, b := range c.Cached {
		x += float64(b) * s.TierCredit[t]
	}
	return x + float64(c.Remote)*s.RemoteCredit
}

// Cost is the logit of sending a request of requestBlocks prompt blocks to c (lower is
// better): OverlapWeight * (MissWeight * (requestBlocks - credited overlap) + in-flight
// prefill blocks) + (active decode blocks + requestBlocks) + QueueWeight * engine queue.
func (s *Scoring) Cost(c *Candidate, requestBlocks int) float64 {
	miss := s.MissWeight
	if miss == 0 {
		miss = 1
	}
	prefill := miss*max(float64(requestBlocks)-s.Credit(c), 0) + c.PrefillBlocks
	decode := c.DecodeBlocks + float64(requestBlocks)
	return s.OverlapWeight*prefill + decode + s.QueueWeight*c.Waiting
}

// Ranker orders candidates under one policy. It is deterministic given its random source and
// the sequence of calls, and holds no other state than the round-robin position. Not safe for
// concurrent use.
type Ranker struct {
	policy string
	s      Scoring
	rng    *rand.Rand
	next   uint64

	costs []float64 // scratch
}

// NewRanker returns a Ranker for policy; rng breaks ties and samples (a seeded source makes it
// reproducible).
func NewRanker(policy string, s Scoring, rng *rand.Rand) (*Ranker, error) {
	if !slices.Contains(Policies(), policy) {
		return nil, fmt.Errorf("router: unknown policy %q (want one of %v)", policy, Policies())
	}
	if s.OverlapWeight < 0 || s.Temperature < 0 || s.QueueWeight < 0 || s.MissWeight < 0 || s.RemoteCredit < 0 {
		return nil, fmt.Errorf("router: scoring weights must not be negative: %+v", s)
	}
	if rng == nil {
		rng = rand.New(rand.NewPCG(1, 2))
	}
	return &Ranker{policy: policy, s: s, rng: rng}, nil
}

// Policy returns the ranker's policy.
func (p *Ranker) Policy() string { return p.policy }

// Scoring returns the ranker's weights.
func (p *Ranker) Scoring() Scoring { return p.s }

// Rank returns the indexes of cands, best first (every index once), for a request of
// requestBlocks prompt blocks. costs, when not nil, receives each candidate's cost under the
// policy (the kv cost, without cache credit for least-load and approx-prefix, 0 otherwise).
func (p *Ranker) Rank(cands []Candidate, requestBlocks int, costs []float64) []int {
	n := len(cands)
	order := make([]int, n)
	for i := range order {
		order[i] = i
	}
	if n <= 1 {
		if n == 1 && costs != nil {
			costs[0] = p.cost(&cands[0], requestBlocks)
		}
		return order
	}
	if cap(p.costs) < n {
		p.costs = make([]float64, n)
	}
	c := p.costs[:n]
	for i := range cands {
		c[i] = p.cost(&cands[i], requestBlocks)
	}
	if costs != nil {
		copy(costs, c)
	}
	switch p.policy {
	case PolicyRoundRobin:
		start := int(p.next % uint64(n))
		p.next++
		for i := range order {
			order[i] = (start + i) % n
		}
		return order
	case PolicyRandom:
		p.rng.Shuffle(n, func(i, j int) { order[i], order[j] = order[j], order[i] })
		return order
	case PolicyApproxPrefix:
		p.rng.Shuffle(n, func(i, j int) { order[i], order[j] = order[j], order[i] })
		slices.SortStableFunc(order, func(a, b int) int {
			if cands[a].Matched != cands[b].Matched {
				return cands[b].Matched - cands[a].Matched
			}
			return cmpFloat(c[a], c[b])
		})
		return order
	}
	// kv and least-load: lowest cost first, ties in random order.
	p.rng.Shuffle(n, func(i, j int) { order[i], order[j] = order[j], order[i] })
	slices.SortStableFunc(order, func(a, b int) int { return cmpFloat(c[a], c[b]) })
	if p.s.Temperature > 0 {
		first := p.sample(c)
		i := slices.Index(order, first)
		copy(order[1:i+1], order[:i])
		order[0] = first
	}
	return order
}

func (p *Ranker) cost(c *Candidate, requestBlocks int) float64 {
	switch p.policy {
	case PolicyKV:
		return p.s.Cost(c, requestBlocks)
	case PolicyLeastLoad, PolicyApproxPrefix:
		nc := *c
		nc.Cached = [kvindex.NumTiers]int{}
		nc.Remote = 0
		return p.s.Cost(&nc, requestBlocks)
	}
	return 0
}

// sample draws an index with probability proportional to exp(-x/T), x the cost normalized to
// [0, 1] over the candidates (Dynamo's softmax sampling).
func (p *Ranker) sample(costs []float64) int {
	lo, hi := slices.Min(costs), slices.Max(costs)
	if hi == lo {
		return p.rng.IntN(len(costs))
	}
	w := make([]float64, len(costs))
	var sum float64
	for i, x := range costs {
		w[i] = math.Exp(-((x - lo) / (hi - lo)) / p.s.Temperature)
		sum += w[i]
	}
	r := p.rng.Float64() * sum
	for i, x := range w {
		if r < x {
			return i
		}
		r -= x
	}
	return len(costs) - 1
}

func cmpFloat(a, b float64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}
