package sim

import (
	"slices"
	"time"
)

// DefaultLoRALoad is how long moving an adapter into a GPU slot takes: a rank-16 adapter of
// an 8B model (about 80 MB of weights over the attention and MLP projections) read from an
// NVMe SSD at 7 GB/s is 11 ms; vLLM reads it on the first request that needs it.
const DefaultLoRALoad = 10 * time.Millisecond

// LoRA adapters in the engine core, as vLLM's scheduler and LoRA model manager treat them: a
// batch holds requests of at most MaxLoRAs distinct adapters (a waiting request whose adapter
// would exceed that is skipped, and later ones may go first), and the adapters sit in
// MaxLoRAs GPU slots, least recently used out first; a request whose adapter is not in a
// slot pays LoRALoad in the step that admits it.

// loraFits reports whether s's adapter can join the running batch.
func (e *Engine) loraFits(s *seq) bool {
	a := s.req.LoRAName
	if a == "" || e.cfg.MaxLoRAs <= 0 {
		return true
	}
	active := 0
	seen := make([]string, 0, e.cfg.MaxLoRAs)
	for _, r := range e.running {
		l := r.req.LoRAName
		if l == "" || slices.Contains(seen, l) {
			continue
		}
		if l == a {
			return true
		}
		seen = append(seen, l)
		active++
	}
	return active < e.cfg.MaxLoRAs
}

// activateLoRA puts s's adapter in a GPU slot, charging the load to this step when it was
// not there.
func (e *Engine) activateLoRA(s *seq) {
	a := s.req.LoRAName
	if a == "" {
		return
	}
	if i := slices.Index(e.loraSlots, a); i >= 0 {
		e.loraSlots = append(slices.Delete(e.loraSlots, i, i+1), a) // most recently used last
		return
	}
	e.loraSlots = append(e.loraSlots, a)
	e.load += time.Duration(float64(e.cfg.LoRALoad) / e.cfg.Timing.Speed)
	e.stats.LoRALoads++
	if e.cfg.MaxLoRAs > 0 && len(e.loraSlots) > e.cfg.MaxLoRAs {
		victim := 0
		for i, l := range e.loraSlots[:len(e.loraSlots)-1] {
			if !slices.ContainsFunc(e.running, func(r *seq) bool { return r.req.LoRAName == l }) {
				victim = i
				break
			}
		}
		e.loraSlots = slices.Delete(e.loraSlots, victim, victim+1)
	}
}

// loraStats fills the adapters of the running and waiting requests, sorted.
func (e *Engine) loraStats(st *Stats) {
	if !e.sawLoRA {
		return
	}
	st.RunningLoRAs, st.WaitingLoRAs = adapters(e.running), adapters(e.waiting)
}

func adapters(ss []*seq) []string {
	var out []string
	for _, s := range ss {
		if a := s.req.LoRAName; a != "" && !slices.Contains(out, a) {
			out = append(out, a)
		}
	}
	slices.Sort(out)
	return out
}
