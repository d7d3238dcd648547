package planner_test

import (
	"fmt"
	"time"

	"github.com/kvgate/kvgate/engine/sim"
	"github.com/kvgate/kvgate/planner"
)

func ExampleProfileFromSim() {
	p := planner.ProfileFromSim(sim.Config{})
	fmt.Printf("prefill of 8192-token prompts at TTFT 2s: %.0f tokens/s\n", p.PrefillThroughput(8192, 2*time.Second))
	fmt.Printf("decode at 8192 tokens of context, ITL 50ms: %.0f tokens/s\n", p.DecodeThroughput(8192, 50*time.Millisecond))
	// Output:
	// prefill of 8192-token prompts at TTFT 2s: 12267 tokens/s
	// decode at 8192 tokens of context, ITL 50ms: 1970 tokens/s
}
