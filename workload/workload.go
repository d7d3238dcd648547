// Package workload holds request traces: the Mooncake trace format, synthetic multi-turn
// workloads, and their expansion into prompt tokens so that equal blocks get equal tokens.
// It owns no step of a request or a KV event: it describes the requests a client sends.
package workload

import (
	"fmt"
	"time"
)

// Request is one request of a trace. Its prompt is described by segments of deterministic
// pseudo-random tokens, so a trace of millions of prompt tokens costs almost no memory and two
// prompts that share segments share their tokens exactly.
type Request struct {
	ID           int
	Arrival      time.Duration // from the start of the trace
	InputLength  int           // prompt tokens
	OutputLength int           // completion tokens wanted
	Session      int           // conversation id; -1 when the trace has none
	Turn         int
	Tenant       int // tenant (fairness ID) index; 0 when the trace has none
	Priority     int // priority band (x-kvgate-priority); negative is sheddable
	// HashIDs are the trace's prefix block ids (Mooncake), kept for analysis.
	HashIDs  []int
	segments []segment
}

// segment is n tokens of the token stream named by seed.
type segment struct {
	seed uint64
	n    int
}

// Trace is an ordered list of requests (by arrival).
type Trace struct {
	Name     string
	Requests []Request
}

// Token-id range used for generated prompts: ordinary vocabulary entries of common
// byte-level BPE tokenizers (Qwen3, Llama 3), clear of special and added tokens.
const (
	tokenLow  = 1000
	tokenHigh = 100000
)

// AppendTokens appends the request's prompt tokens to dst.
func (r *Request) AppendTokens(dst []uint32) []uint32 {
	for _, s := range r.segments {
		dst = appendSegment(dst, s)
	}
	return dst
}

// Tokens returns the prompt tokens in a new slice.
func (r *Request) Tokens() []uint32 {
	return r.AppendTokens(make([]uint32, 0, r.InputLength))
}

func appendSegment(dst []uint32, s segment) []uint32 {
	for i := 0; i < s.n; i++ {
		dst = append(dst, tokenAt(s.seed, uint64(i)))
	}
	return dst
}

// tokenAt is the i-th token of stream seed: splitmix64 of the pair, folded into the range.
func tokenAt(seed, i uint64) uint32 {
	z := seed*0x9e3779b97f4a7c15 + i*0xbf58476d1ce4e5b9 + 0x94d049bb133111eb
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
	z = (z ^ (z >> 27)) * 0x94d049bb133111eb
	z ^= z >> 31
	return tokenLow + uint32(z%(tokenHigh-tokenLow))
}

// ScaleRate divides every arrival time by x (x = 2 replays the trace twice as fast).
func (t *Trace) ScaleRate(x float64) error {
	if !(x > 0) {
		return fmt.Errorf("rate scale must be > 0, got %v", x)
	}
	for i := range t.Requests {
		t.Requests[i].Arrival = time.Duration(float64(t.Requests[i].Arrival) / x)
	}
	return nil
}

// Limit keeps the first n requests (n <= 0 keeps all).
func (t *Trace) Limit(n int) {
	if n > 0 && n < len(t.Requests) {
		t.Requests = t.Requests[:n]
	}
}

// Stats summarises a trace.
type Stats struct {
	Requests     int
	PromptTokens int64
	OutputTokens int64
	Duration     time.Duration
}

// Stats returns totals over the trace.
func (t *Trace) Stats() Stats {
	s := Stats{Requests: len(t.Requests)}
	for _, r := range t.Requests {
		s.PromptTokens += int64(r.InputLength)
		s.OutputTokens += int64(r.OutputLength)
		if r.Arrival > s.Duration {
			s.Duration = r.Arrival
		}
	}
	return s
}
