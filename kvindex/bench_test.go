package kvindex_test

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"runtime"
	"sync"
	"testing"

	"github.com/kvgate/kvgate/kvindex"
)

// The benchmark fleet: 64 endpoints, each holding conversations of 256
// blocks (4,096 tokens of 16-token blocks). A conversation opens with one of
// 32 system prompts (16 to 64 blocks, popular ones more often) that many
// endpoints share; a quarter of the conversations also sit on a second
// endpoint and a tenth were offloaded to CPU. Building stops at 1,000,000
// distinct tree nodes.
const (
	benchEndpoints  = 64
	benchBlockSize  = 16
	benchPromptLen  = 256
	benchSystems    = 32
	benchMinNodes   = 1_000_000
	benchQueries    = 1024
	benchEventBlock = 16 // blocks per Stored event, as an engine flushes them
)

type benchFixture struct {
	x       *kvindex.Index
	queries [][]kvindex.BlockHash
	pairs   int
	heap    uint64 // bytes the index holds
	convs   int    // conversations stored
}

func heapInUse() uint64 {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

func randTokens(rnd *rand.Rand, n int) []uint32 {
	t := make([]uint32, n)
	for i := range t {
		t[i] = rnd.Uint32N(128_000)
	}
	return t
}

// storePrompt stores tokens on ep as a chain of Stored events, externals
// numbered from *ext.
func storePrompt(x *kvindex.Index, ep kvindex.EndpointID, tokens []uint32, tier kvindex.Tier, ext *uint64, blocks []kvindex.Block) {
	var parent kvindex.ExternalHash
	has := false
	n := len(tokens) / benchBlockSize
	for start := 0; start < n; start += benchEventBlock {
		blocks = blocks[:0]
		for i := start; i < min(n, start+benchEventBlock); i++ {
			*ext++
			blocks = append(blocks, kvindex.Block{External: kvindex.ExternalHash(*ext), Tokens: tokens[i*benchBlockSize : (i+1)*benchBlockSize]})
		}
		x.ApplyStored(ep, kvindex.Stored{Parent: parent, HasParent: has, Blocks: blocks, Tier: tier})
		parent, has = blocks[len(blocks)-1].External, true
	}
}

// benchConv is one conversation of the benchmark fleet: its prompt sits on
// endpoint ep (on tier), and on replica too unless replica < 0.
type benchConv struct {
	ep, replica int
	tier        kvindex.Tier
	prompt      []uint32
}

// benchFleet generates the fleet's conversations in a fixed order until yield
// returns false; the prompt slice is reused between calls.
func benchFleet(yield func(conv int, c *benchConv) bool) {
	rnd := rand.New(rand.NewPCG(7, 7))
	systems := make([][]uint32, benchSystems)
	for i := range systems {
		systems[i] = randTokens(rnd, (16+rnd.IntN(49))*benchBlockSize)
	}
	c := benchConv{prompt: make([]uint32, benchPromptLen*benchBlockSize)}
	for conv := 0; ; conv++ {
		// Zipf-like choice of system prompt: low indexes are popular.
		sys := systems[min(rnd.IntN(benchSystems), rnd.IntN(benchSystems))]
		copy(c.prompt, sys)
		for i := len(sys); i < len(c.prompt); i++ {
			c.prompt[i] = rnd.Uint32N(128_000)
		}
		c.tier = kvindex.TierGPU
		if rnd.IntN(10) == 0 {
			c.tier = kvindex.TierCPU
		}
		c.ep, c.replica = conv%benchEndpoints, -1
		if rnd.IntN(4) == 0 {
			c.replica = rnd.IntN(benchEndpoints)
		}
		if !yield(conv, &c) {
			return
		}
	}
}

var fixture = sync.OnceValue(func() *benchFixture {
	f := &benchFixture{queries: make([][]kvindex.BlockHash, 0, benchQueries)}
	for range benchQueries {
		f.queries = append(f.queries, make([]kvindex.BlockHash, 0, benchPromptLen))
	}
	before := heapInUse()
	x := kvindex.New(nil)
	eps := make([]kvindex.EndpointID, benchEndpoints)
	for i := range eps {
		eps[i] = x.Endpoint(fmt.Sprintf("10.0.%d.%d:8000", i/16, i%16))
	}
	var ext uint64
	blocks := make([]kvindex.Block, 0, benchEventBlock)
	q := 0
	benchFleet(func(conv int, c *benchConv) bool {
		if x.Nodes() >= benchMinNodes {
			f.convs = conv
			return false
		}
		storePrompt(x, eps[c.ep], c.prompt, c.tier, &ext, blocks)
		if c.replica >= 0 {
			storePrompt(x, eps[c.replica], c.prompt, kvindex.TierGPU, &ext, blocks)
		}
		if q < benchQueries && conv%7 == 0 {
			f.queries[q] = kvindex.HashBlocks(f.queries[q], 0, c.prompt, benchBlockSize)
			q++
		}
		return true
	})
	f.queries = f.queries[:q]
	for _, ep := range eps {
		f.pairs += x.Blocks(ep)
	}
	f.x = x
	f.heap = heapInUse() - before
	return f
})

// BenchmarkFindMatches queries a 256-block prompt against an index of at
// least 1,000,000 blocks over 64 endpoints; every query is a stored
// conversation, so the walk goes all 256 blocks deep.
func BenchmarkFindMatches(b *testing.B) {
	f := fixture()
	var out kvindex.Matches
	f.x.FindMatches(f.queries[0], &out)
	if out.Depth != benchPromptLen {
		b.Fatalf("query depth %d, want %d", out.Depth, benchPromptLen)
	}
	b.ReportAllocs()
	b.ResetTimer()
	cpu0 := processCPU()
	n := 0
	for i := 0; b.Loop(); i++ {
		f.x.FindMatches(f.queries[i%len(f.queries)], &out)
		n++
	}
	b.ReportMetric(float64(processCPU()-cpu0)/float64(n), "cpu-ns/op")
	b.ReportMetric(float64(f.x.Nodes()), "nodes")
	b.ReportMetric(float64(f.pairs), "pairs")
	b.ReportMetric(float64(f.heap)/float64(f.pairs), "heapB/pair")
}

// BenchmarkFindMatchesParallel runs the same queries from every core while
// nothing is applied.
func BenchmarkFindMatchesParallel(b *testing.B) {
	f := fixture()
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		var out kvindex.Matches
		i := 0
		for pb.Next() {
			f.x.FindMatches(f.queries[i%len(f.queries)], &out)
			i++
		}
	})
}

// BenchmarkHashBlocks hashes a 4,096-token prompt into 256 block hashes.
func BenchmarkHashBlocks(b *testing.B) {
	toks := randTokens(rand.New(rand.NewPCG(1, 1)), benchPromptLen*benchBlockSize)
	dst := make([]kvindex.BlockHash, 0, benchPromptLen)
	b.SetBytes(int64(len(toks) * 4))
	b.ReportAllocs()
	cpu0 := processCPU()
	n := 0
	for b.Loop() {
		dst = kvindex.HashBlocks(dst[:0], 0, toks, benchBlockSize)
		n++
	}
	b.ReportMetric(float64(processCPU()-cpu0)/float64(n), "cpu-ns/op")
}

// BenchmarkApplyStored applies Stored events of 16 blocks into a growing
// index over 64 endpoints: most events continue the endpoint's previous
// chain (a sequence being prefilled or decoded), one in eight starts a new
// one. Each op is one event; blocks/s is the figure of merit.
func BenchmarkApplyStored(b *testing.B) {
	rnd := rand.New(rand.NewPCG(3, 3))
	pool := make([][]uint32, 4096)
	for i := range pool {
		pool[i] = randTokens(rnd, benchBlockSize)
	}
	x := kvindex.New(nil)
	eps := make([]kvindex.EndpointID, benchEndpoints)
	last := make([]kvindex.ExternalHash, benchEndpoints)
	for i := range eps {
		eps[i] = x.Endpoint(fmt.Sprint("ep", i))
	}
	blocks := make([]kvindex.Block, benchEventBlock)
	before := heapInUse()
	b.ReportAllocs()
	b.ResetTimer()
	cpu0 := processCPU()
	n := 0
	for b.Loop() {
		e := n % benchEndpoints
		for j := range blocks {
			blocks[j] = kvindex.Block{External: kvindex.ExternalHash(n*benchEventBlock + j + 1), Tokens: pool[(n*benchEventBlock+j)%len(pool)]}
		}
		x.ApplyStored(eps[e], kvindex.Stored{
			Parent: last[e], HasParent: last[e] != 0 && n%8 != 0,
			Blocks: blocks, Seed: uint64(n),
		})
		last[e] = blocks[len(blocks)-1].External
		n++
	}
	b.StopTimer()
	b.ReportMetric(float64(n*benchEventBlock)/b.Elapsed().Seconds(), "blocks/s")
	if cpu := processCPU() - cpu0; cpu > 0 {
		b.ReportMetric(float64(n*benchEventBlock)/cpu.Seconds(), "blocks/cpu-s")
	}
	if n*benchEventBlock >= 100_000 {
		b.ReportMetric(float64(heapInUse()-before)/float64(n*benchEventBlock), "heapB/pair")
	}
	runtime.KeepAlive(x)
}

// BenchmarkSnapshot writes and reads back the FindMatches fixture.
func BenchmarkSnapshot(b *testing.B) {
	f := fixture()
	var buf bytes.Buffer
	if err := f.x.WriteSnapshot(&buf); err != nil {
		b.Fatal(err)
	}
	size := buf.Len()
	b.Run("Write", func(b *testing.B) {
		b.SetBytes(int64(size))
		var w bytes.Buffer
		for b.Loop() {
			w.Reset()
			if err := f.x.WriteSnapshot(&w); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(size)/float64(f.pairs), "B/pair")
	})
	b.Run("Read", func(b *testing.B) {
		b.SetBytes(int64(size))
		for b.Loop() {
			y := kvindex.New(nil)
			if err := y.ReadSnapshot(bytes.NewReader(buf.Bytes())); err != nil {
				b.Fatal(err)
			}
		}
	})
}
