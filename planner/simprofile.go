package planner

import (
	"time"

	"github.com/kvgate/kvgate/engine/sim"
)

// Lengths ProfileFromSim derives curves at (those within the engine's context).
var simLengths = [...]int{512, 2048, 8192, 32768, 131072}

// Load levels (fraction of saturation) of the derived prefill curves.
var simUtilizations = [...]float64{0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95}

// ProfileFromSim derives a profile from the simulated engine's timing model (cfg after its
// defaults), in seconds instead of a sweep. Prefill: a prompt of L tokens alone takes S (its
// chunks' steps); saturated, steps are full and the engine computes L/T tokens per second
// per prompt time T; at utilisation u the p90 TTFT is modelled as S + 1.5*u/(1-u)*T (a
// queue in front of a batch server). Decode: n sequences at context c step in
// Base + n*(PerToken+PerSeq) + n*c*PerContextToken, giving n/step tokens per second at that
// ITL, for n up to what the KV cache and max_num_seqs hold.
func ProfileFromSim(cfg sim.Config) *Profile {
	cfg = cfg.WithDefaults()
	t := cfg.Timing
	speed := t.Speed
	if speed <= 0 {
		speed = 1
	}
	step := func(tokens, seqs int, context, pairs float64) float64 { // seconds
		ns := float64(t.Base) + float64(t.PerToken)*float64(tokens) + float64(t.PerSeq)*float64(seqs) +
			float64(t.PerContextToken)*context + t.PerAttnPair*pairs
		return ns / speed / float64(time.Second)
	}
	p := &Profile{Name: "sim", GPUsPerEngine: 1}
	b := cfg.MaxNumBatchedTokens
	for _, l := range simLengths {
		if l > cfg.MaxModelLen {
			break
		}
		alone, sat := 0.0, 0.0 // one prompt alone; its share of saturated steps
		for done := 0; done < l; {
			n := min(b, l-done)
			pairs := float64(n) * (float64(done) + float64(n)/2)
			ctx := float64(done + n)
			alone += step(n, 1, ctx, pairs)
			share := float64(n) / float64(b) // of a full step's fixed cost
			sat += share*step(0, 0, 0, 0) + step(n, 1, ctx, pairs) - step(0, 0, 0, 0)
			done += n
		}
		c := PrefillCurve{PromptTokens: l}
		for _, u := range simUtilizations {
			c.Points = append(c.Points, PrefillPoint{
				TTFTMs:     (alone + 1.5*u/(1-u)*sat) * 1000,
				TokensPerS: u * float64(l) / sat,
			})
		}
		p.Prefill = append(p.Prefill, c)

		nmax := min(cfg.MaxNumSeqs, cfg.NumBlocks*cfg.BlockSize/l)
		d := DecodeCurve{ContextTokens: l}
		for n := 1; n <= nmax; n = nextBatch(n, nmax) {
			s := step(n, n, float64(n)*float64(l), 0)
			d.Points = append(d.Points, DecodePoint{ITLMs: s * 1000, TokensPerS: float64(n) / s})
		}
		if len(d.Points) > 0 {
			p.Decode = append(p.Decode, d)
		}
	}
	p.Sort()
	return p
}

// nextBatch doubles n, ending on nmax itself (past it when n is nmax).
func nextBatch(n, nmax int) int {
	if n == nmax {
		return n + 1
	}
	return min(2*n, nmax)
}
