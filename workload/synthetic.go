package workload

import (
	"fmt"
	"math"
	"math/rand/v2"
	"sort"
	"time"
)

// Synthetic describes a workload of shared system prompts times multi-turn conversations:
// every conversation starts with one of SystemPrompts system prompts, and each of its turns
// sends the whole history so far plus a new user message, as chat clients do.
type Synthetic struct {
	SystemPrompts int           // distinct shared system prompts
	SystemTokens  int           // tokens in each system prompt
	Conversations int           // conversations in the trace
	Turns         int           // turns per conversation
	UserTokens    int           // tokens of each user message (±Jitter)
	OutputTokens  int           // completion tokens of each turn (±Jitter)
	Jitter        float64       // relative spread of user and output lengths, 0..1
	Rate          float64       // new conversations per second (Poisson)
	ThinkTime     time.Duration // gap between a turn's arrival and the next turn of the same conversation
	Seed          uint64
	// TenantWeights, when set, assigns each conversation a tenant (Request.Tenant, the index)
	// with these relative weights, e.g. {10, 1}; PriorityShares a priority band with these
	// shares. Both draw from their own random stream: traces without them do not change.
	TenantWeights  []float64
	PriorityShares []PriorityShare
}

// PriorityShare is the share (a relative weight) of conversations in one priority band.
type PriorityShare struct {
	Priority int
	Share    float64
}

// pickWeighted draws an index with the given relative weights.
func pickWeighted(rng *rand.Rand, weights []float64) int {
	total := 0.0
	for _, w := range weights {
		total += w
	}
	x := rng.Float64() * total
	for i, w := range weights {
		if x < w {
			return i
		}
		x -= w
	}
	return len(weights) - 1
}

// DefaultSynthetic is a chat-assistant-like workload: a few long shared system prompts and
// many short multi-turn conversations.
func DefaultSynthetic() Synthetic {
	return Synthetic{
		SystemPrompts: 8, SystemTokens: 2048,
		Conversations: 400, Turns: 5,
		UserTokens: 256, OutputTokens: 128, Jitter: 0.5,
		Rate: 4, ThinkTime: 5 * time.Second, Seed: 1,
	}
}

// Validate reports the first configuration error.
func (s Synthetic) Validate() error {
	switch {
	case s.SystemPrompts < 1:
		return fmt.Errorf("system prompts must be >= 1")
	case s.SystemTokens < 0 || s.UserTokens < 1 || s.OutputTokens < 1:
		return fmt.Errorf("token lengths must be positive")
	case s.Conversations < 1 || s.Turns < 1:
		return fmt.Errorf("conversations and turns must be >= 1")
	case s.Jitter < 0 || s.Jitter > 1:
		return fmt.Errorf("jitter must be within 0..1")
	case !(s.Rate > 0):
		return fmt.Errorf("rate must be > 0")
	case s.ThinkTime < 0:
		return fmt.Errorf("think time must be >= 0")
	}
	for _, w := range s.TenantWeights {
		if !(w > 0) {
			return fmt.Errorf("tenant weights must be > 0")
		}
	}
	for _, p := range s.PriorityShares {
		if !(p.Share > 0) {
			return fmt.Errorf("priority shares must be > 0")
		}
	}
	return nil
}

// Generate builds the trace. The same configuration always gives the same trace.
func (s Synthetic) Generate() (*Trace, error) {
	if err := s.Validate(); err != nil {
		return nil, err
	}
	rng := rand.New(rand.NewPCG(s.Seed, 0x6b7667617465))
	jit := func(n int) int {
		if s.Jitter == 0 {
			return n
		}
		f := 1 + s.Jitter*(2*rng.Float64()-1)
		return max(1, int(math.Round(float64(n)*f)))
	}
	t := &Trace{Name: "synthetic"}
	classes := rand.New(rand.NewPCG(s.Seed, 0x636c61737365))
	shares := make([]float64, len(s.PriorityShares))
	for i, p := range s.PriorityShares {
		shares[i] = p.Share
	}
	var start time.Duration
	for c := 0; c < s.Conversations; c++ {
		start += time.Duration(rng.ExpFloat64() / s.Rate * float64(time.Second))
		tenant, prio := 0, 0
		if len(s.TenantWeights) > 0 {
			tenant = pickWeighted(classes, s.TenantWeights)
		}
		if len(shares) > 0 {
			prio = s.PriorityShares[pickWeighted(classes, shares)].Priority
		}
		sys := rng.IntN(s.SystemPrompts)
		history := []segment{{seed: syntheticSeed(0, uint64(sys), 0), n: s.SystemTokens}}
		if s.SystemTokens == 0 {
			history = history[:0]
		}
		at := start
		for turn := 0; turn < s.Turns; turn++ {
			user := segment{seed: syntheticSeed(1, uint64(c), uint64(turn)), n: jit(s.UserTokens)}
			history = append(history, user)
			segs := append([]segment(nil), history...)
			n := 0
			for _, sg := range segs {
				n += sg.n
			}
			out := jit(s.OutputTokens)
			t.Requests = append(t.Requests, Request{
				Arrival: at, InputLength: n, OutputLength: out,
				Session: c, Turn: turn, Tenant: tenant, Priority: prio, segments: segs,
			})
			// The answer becomes part of the next turn's prompt.
			history = append(history, segment{seed: syntheticSeed(2, uint64(c), uint64(turn)), n: out})
			at += s.ThinkTime
		}
	}
	sort.SliceStable(t.Requests, func(i, j int) bool { return t.Requests[i].Arrival < t.Requests[j].Arrival })
	for i := range t.Requests {
		t.Requests[i].ID = i
	}
	return t, nil
}

// syntheticSeed names a token stream; the low bit 0 keeps it apart from Mooncake's streams.
func syntheticSeed(kind, a, b uint64) uint64 {
	return (kind<<60 ^ a<<30 ^ b) << 1
}
