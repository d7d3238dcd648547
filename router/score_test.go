package router_test

import (
	"math"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/kvgate/kvgate/kvindex"
	"github.com/kvgate/kvgate/router"
)

func TestCost(t *testing.T) {
	s := router.DynamoScoring()
	tests := []struct {
		name string
		c    router.Candidate
		req  int
		want float64
	}{
		{"idle, nothing cached", router.Candidate{}, 10, 10 + 10},
		{"all cached on GPU", router.Candidate{Cached: [kvindex.NumTiers]int{10, 0, 0}}, 10, 0 + 10},
		{"tier credit", router.Candidate{Cached: [kvindex.NumTiers]int{2, 4, 4}}, 10, (10 - 2 - 3 - 1) + 10},
		{"in-flight prefill and decode", router.Candidate{Cached: [kvindex.NumTiers]int{4}, PrefillBlocks: 3, DecodeBlocks: 20}, 10, (10 - 4 + 3) + (20 + 10)},
		{"credit never below zero", router.Candidate{Cached: [kvindex.NumTiers]int{12}}, 10, 0 + 10},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := s.Cost(&tt.c, tt.req); math.Abs(got-tt.want) > 1e-9 {
				t.Errorf("Cost = %v, want %v", got, tt.want)
			}
		})
	}
	s.OverlapWeight, s.QueueWeight = 2, 1.5
	c := router.Candidate{Cached: [kvindex.NumTiers]int{4}, PrefillBlocks: 1, DecodeBlocks: 5, Waiting: 2}
	if got, want := s.Cost(&c, 10), 2*(10-4+1)+(5+10)+1.5*2.0; got != want {
		t.Errorf("weighted Cost = %v, want %v", got, want)
	}
	// The defaults: overlap weight 2 over (miss weight 16 * own uncached + queued prefill).
	d := router.DefaultScoring()
	if got, want := d.Cost(&c, 10), 2*(16*(10-4)+1.0)+(5+10); got != want {
		t.Errorf("default Cost = %v, want %v", got, want)
	}
}

func newRanker(t *testing.T, policy string, s router.Scoring, seed uint64) *router.Ranker {
	t.Helper()
	p, err := router.NewRanker(policy, s, rand.New(rand.NewPCG(seed, seed)))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestRankerPolicies(t *testing.T) {
	cands := []router.Candidate{
		{DecodeBlocks: 50},
		{Cached: [kvindex.NumTiers]int{8}, DecodeBlocks: 10}, // best for kv
		{DecodeBlocks: 5, Matched: 3},                        // least load; best text match
		{DecodeBlocks: 30, Matched: 3},
	}
	tests := []struct {
		policy string
		first  int
	}{
		{router.PolicyKV, 1},
		{router.PolicyLeastLoad, 2},
		{router.PolicyApproxPrefix, 2}, // longest match, then least load
	}
	for _, tt := range tests {
		t.Run(tt.policy, func(t *testing.T) {
			p := newRanker(t, tt.policy, router.DefaultScoring(), 1)
			costs := make([]float64, len(cands))
			order := p.Rank(cands, 10, costs)
			if order[0] != tt.first {
				t.Errorf("order %v costs %v, want %d first", order, costs, tt.first)
			}
			sorted := slices.Clone(order)
			slices.Sort(sorted)
			if !slices.Equal(sorted, []int{0, 1, 2, 3}) {
				t.Errorf("order %v is not a permutation", order)
			}
		})
	}
	t.Run("round-robin", func(t *testing.T) {
		p := newRanker(t, router.PolicyRoundRobin, router.DefaultScoring(), 1)
		var firsts []int
		for range 8 {
			firsts = append(firsts, p.Rank(cands, 10, nil)[0])
		}
		if !slices.Equal(firsts, []int{0, 1, 2, 3, 0, 1, 2, 3}) {
			t.Errorf("firsts %v", firsts)
		}
	})
	t.Run("random covers all and is reproducible", func(t *testing.T) {
		run := func() []int {
			p := newRanker(t, router.PolicyRandom, router.DefaultScoring(), 7)
			var firsts []int
			for range 200 {
				firsts = append(firsts, p.Rank(cands, 10, nil)[0])
			}
			return firsts
		}
		a, b := run(), run()
		if !slices.Equal(a, b) {
			t.Error("same seed, different picks")
		}
		for i := range cands {
			if !slices.Contains(a, i) {
				t.Errorf("candidate %d never picked", i)
			}
		}
	})
}

func TestRankerTiesAreRandom(t *testing.T) {
	p := newRanker(t, router.PolicyKV, router.DefaultScoring(), 3)
	cands := make([]router.Candidate, 4) // all equal
	seen := map[int]int{}
	for range 400 {
		seen[p.Rank(cands, 10, nil)[0]]++
	}
	for i := range cands {
		if seen[i] < 50 {
			t.Errorf("tie broken unevenly: %v", seen)
		}
	}
}

func TestRankerTemperature(t *testing.T) {
	cands := []router.Candidate{{DecodeBlocks: 0}, {DecodeBlocks: 10}, {DecodeBlocks: 20}}
	count := func(temp float64) [3]int {
		s := router.DefaultScoring()
		s.Temperature = temp
		p := newRanker(t, router.PolicyKV, s, 11)
		var n [3]int
		for range 3000 {
			n[p.Rank(cands, 4, nil)[0]]++
		}
		return n
	}
	if n := count(0); n[0] != 3000 {
		t.Errorf("temperature 0 is not argmin: %v", n)
	}
	// exp(-0/T) : exp(-0.5/T) : exp(-1/T) with T=0.5 is 1 : 0.37 : 0.14.
	n := count(0.5)
	if !(n[0] > n[1] && n[1] > n[2] && n[2] > 200) {
		t.Errorf("softmax sampling at T=0.5: %v", n)
	}
	if frac := float64(n[0]) / 3000; math.Abs(frac-1/(1+math.Exp(-1)+math.Exp(-2))) > 0.05 {
		t.Errorf("P(best) = %.3f, want about %.3f", frac, 1/(1+math.Exp(-1)+math.Exp(-2)))
	}
}

func TestNewRankerRejects(t *testing.T) {
	if _, err := router.NewRanker("fastest", router.DefaultScoring(), nil); err == nil {
		t.Error("unknown policy accepted")
	}
	s := router.DefaultScoring()
	s.Temperature = -1
	if _, err := router.NewRanker(router.PolicyKV, s, nil); err == nil {
		t.Error("negative temperature accepted")
	}
}
