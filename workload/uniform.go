package workload

import "fmt"

// Uniform returns n requests, all arriving at time 0, each with its own prompt of prompt
// tokens (no two share a block) and output tokens wanted: the load of an engine sweep. seed
// separates the prompts of different sweeps.
func Uniform(n, prompt, output int, seed uint64) (*Trace, error) {
	if n < 1 || prompt < 1 || output < 1 {
		return nil, fmt.Errorf("uniform workload: requests, prompt and output must be >= 1, got %d, %d, %d", n, prompt, output)
	}
	t := &Trace{Name: fmt.Sprintf("uniform-%dx%d", prompt, output), Requests: make([]Request, n)}
	for i := range t.Requests {
		t.Requests[i] = Request{
			ID: i, InputLength: prompt, OutputLength: output, Session: -1,
			segments: []segment{{seed: syntheticSeed(3, seed, uint64(i)), n: prompt}},
		}
	}
	return t, nil
}
