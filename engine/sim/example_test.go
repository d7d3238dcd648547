package sim_test

import (
	"fmt"
	"time"

	"github.com/kvgate/kvgate/engine/sim"
)

// Example drives an engine in virtual time, as kvgate replay does: the caller owns the clock,
// adds requests when they arrive, and advances to each step's End.
func Example() {
	e, err := sim.New(sim.Config{NumBlocks: 1024})
	if err != nil {
		panic(err)
	}
	prompt := make([]uint32, 1000)
	for i := range prompt {
		prompt[i] = uint32(i)
	}
	arrivals := []struct {
		at time.Duration
		id string
	}{{0, "first"}, {500 * time.Millisecond, "second"}}

	var now time.Duration
	arrived := map[string]time.Duration{}
	for len(arrivals) > 0 || e.Busy() {
		// Idle: jump the clock to the next arrival.
		if !e.Busy() && arrivals[0].at > now {
			now = arrivals[0].at
		}
		for len(arrivals) > 0 && arrivals[0].at <= now {
			a := arrivals[0]
			arrivals = arrivals[1:]
			arrived[a.id] = a.at
			if err := e.Add(sim.Request{ID: a.id, Prompt: prompt, MaxTokens: 3}); err != nil {
				panic(err)
			}
		}
		r := e.Step(now)
		now = r.End
		for _, o := range r.Outputs {
			if o.Index == 0 {
				fmt.Printf("%s: ttft %v, cached %d of %d\n", o.ID, (now - arrived[o.ID]).Round(time.Millisecond), o.CachedTokens, o.PromptTokens)
			}
		}
	}
	// Output:
	// first: ttft 57ms, cached 0 of 1000
	// second: ttft 6ms, cached 992 of 1000
}
