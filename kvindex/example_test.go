package kvindex_test

import (
	"fmt"

	"github.com/kvgate/kvgate/kvindex"
)

func Example() {
	x := kvindex.New(nil)
	a, b := x.Endpoint("10.0.0.1:8000"), x.Endpoint("10.0.0.2:8000")

	system := []uint32{1, 2, 3, 4, 5, 6, 7, 8} // two blocks of 4 tokens
	user := []uint32{9, 10, 11, 12}

	// Engine a cached system+user on GPU; engine b cached the system
	// prompt and offloaded it to CPU.
	x.ApplyStored(a, kvindex.Stored{Blocks: []kvindex.Block{
		{External: 101, Tokens: system[:4]}, {External: 102, Tokens: system[4:]}, {External: 103, Tokens: user},
	}})
	x.ApplyStored(b, kvindex.Stored{Tier: kvindex.TierFromMedium("CPU"), Blocks: []kvindex.Block{
		{External: 0xbeef, Tokens: system[:4]}, {External: 0xcafe, Tokens: system[4:]},
	}})

	prompt := append(append([]uint32{}, system...), user...)
	prompt = append(prompt, 13, 14) // a partial block is not hashed
	hashes := kvindex.HashBlocks(nil, 0, prompt, 4)

	var m kvindex.Matches
	x.FindMatches(hashes, &m)
	for _, e := range m.Endpoints {
		fmt.Printf("%s: %d blocks (gpu %d, cpu %d)\n", x.EndpointName(e.Endpoint), e.Blocks, e.Tiers[kvindex.TierGPU], e.Tiers[kvindex.TierCPU])
	}
	fmt.Println("depth", m.Depth)
	// Output:
	// 10.0.0.1:8000: 3 blocks (gpu 3, cpu 0)
	// 10.0.0.2:8000: 2 blocks (gpu 0, cpu 2)
	// depth 3
}
