package kvindex_test

import (
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/kvgate/kvgate/kvindex"
)

// approxIndex is what the approximate benchmarks drive: Approx, or refApprox
// (the implementation it replaced) for the ratio in the same run.
type approxIndex interface {
	Record(ep kvindex.EndpointID, hashes []kvindex.BlockHash, now time.Time)
	FindMatches(hashes []kvindex.BlockHash, now time.Time, out *kvindex.Matches)
}

var (
	_ approxIndex = (*kvindex.Approx)(nil)
	_ approxIndex = (*refApprox)(nil)
)

var approxImpls = []struct {
	name string
	new  func(ttl time.Duration, capacity int) approxIndex
}{
	{"new", func(ttl time.Duration, c int) approxIndex { return kvindex.NewApprox(ttl, c) }},
	{"old", func(ttl time.Duration, c int) approxIndex { return newRefApprox(ttl, c) }},
}

// approxFixture holds the conversations of the exact fixture, recorded one a
// millisecond (each on its endpoint and replica), so it has the same
// (prefix, endpoint) residencies as the exact index. Its ttl is the recording
// span plus a millisecond: at end nothing has expired; at end+span/10 the
// first tenth of the conversations has, and no Record has swept it yet, so
// every queried endpoint needs its expiry checked.
type approxFixture struct {
	a        approxIndex
	heap     uint64
	end      time.Time
	expiring time.Time
}

var approxFixtures sync.Map // impl name -> *approxFixture

func getApproxFixture(name string, newA func(time.Duration, int) approxIndex) *approxFixture {
	if f, ok := approxFixtures.Load(name); ok {
		return f.(*approxFixture)
	}
	ef := fixture()
	t0 := time.Unix(1_700_000_000, 0)
	span := time.Duration(ef.convs) * time.Millisecond
	hashes := make([]kvindex.BlockHash, 0, benchPromptLen)
	before := heapInUse()
	a := newA(span+time.Millisecond, 0)
	benchFleet(func(conv int, c *benchConv) bool {
		if conv == ef.convs {
			return false
		}
		now := t0.Add(time.Duration(conv) * time.Millisecond)
		hashes = kvindex.HashBlocks(hashes[:0], 0, c.prompt, benchBlockSize)
		a.Record(kvindex.EndpointID(c.ep), hashes, now)
		if c.replica >= 0 {
			a.Record(kvindex.EndpointID(c.replica), hashes, now)
		}
		return true
	})
	f := &approxFixture{a: a, heap: heapInUse() - before, end: t0.Add(span - time.Millisecond)}
	f.expiring = f.end.Add(span / 10)
	approxFixtures.Store(name, f)
	return f
}

// BenchmarkApproxFindMatches queries 256-block prompts against approximate
// indexes holding the same residencies as BenchmarkFindMatches' exact index
// (about 1.2M over 64 endpoints), old and new implementation and the exact
// index in one run. Both implementations' answers are compared first.
func BenchmarkApproxFindMatches(b *testing.B) {
	ef := fixture()
	b.Run("exact", func(b *testing.B) {
		var out kvindex.Matches
		b.ReportAllocs()
		cpu0, n := processCPU(), 0
		for i := 0; b.Loop(); i++ {
			ef.x.FindMatches(ef.queries[i%len(ef.queries)], &out)
			n++
		}
		b.ReportMetric(float64(processCPU()-cpu0)/float64(n), "cpu-ns/op")
		b.ReportMetric(float64(ef.heap)/float64(ef.pairs), "heapB/pair")
	})
	fs := map[string]*approxFixture{}
	for _, impl := range approxImpls {
		fs[impl.name] = getApproxFixture(impl.name, impl.new)
	}
	var got, want kvindex.Matches
	for _, q := range ef.queries {
		for _, at := range []time.Time{fs["new"].end, fs["new"].expiring} {
			fs["new"].a.FindMatches(q, at, &got)
			fs["old"].a.FindMatches(q, at, &want)
			if got.Depth != want.Depth || len(got.Endpoints) != len(want.Endpoints) {
				b.Fatalf("new and old approximate indexes disagree: depth %d/%d, %d/%d endpoints", got.Depth, want.Depth, len(got.Endpoints), len(want.Endpoints))
			}
			for i := range got.Endpoints {
				if got.Endpoints[i] != want.Endpoints[i] {
					b.Fatalf("new and old approximate indexes disagree: %+v vs %+v", got.Endpoints[i], want.Endpoints[i])
				}
			}
		}
	}
	fs["new"].a.FindMatches(ef.queries[0], fs["new"].end, &got)
	if got.Depth != benchPromptLen {
		b.Fatalf("query depth %d, want %d", got.Depth, benchPromptLen)
	}
	for _, impl := range approxImpls {
		f := fs[impl.name]
		for _, c := range []struct {
			name string
			at   time.Time
		}{{"fresh", f.end}, {"expiring", f.expiring}} {
			b.Run(impl.name+"/"+c.name, func(b *testing.B) {
				var out kvindex.Matches
				b.ReportAllocs()
				cpu0, n := processCPU(), 0
				for i := 0; b.Loop(); i++ {
					f.a.FindMatches(ef.queries[i%len(ef.queries)], c.at, &out)
					n++
				}
				b.ReportMetric(float64(processCPU()-cpu0)/float64(n), "cpu-ns/op")
				b.ReportMetric(float64(f.heap)/float64(ef.pairs), "heapB/pair")
			})
		}
	}
}

// BenchmarkApproxRecord records 256-block prompts (a shared system prompt of
// 16 to 64 blocks, then the conversation's own blocks; 4,099 distinct prompts
// in rotation, so some are sent again) round-robin over 64 endpoints with a
// capacity of 16,384 blocks each: about 1M residencies in steady state, with
// eviction (timed once every endpoint is full). Each op is one Record;
// blocks/s is the figure of merit.
func BenchmarkApproxRecord(b *testing.B) {
	rnd := rand.New(rand.NewPCG(5, 5))
	systems := make([][]uint32, benchSystems)
	for i := range systems {
		systems[i] = randTokens(rnd, (16+rnd.IntN(49))*benchBlockSize)
	}
	prompts := make([][]kvindex.BlockHash, 4099)
	toks := make([]uint32, benchPromptLen*benchBlockSize)
	for i := range prompts {
		sys := systems[min(rnd.IntN(benchSystems), rnd.IntN(benchSystems))]
		copy(toks, sys)
		for j := len(sys); j < len(toks); j++ {
			toks[j] = rnd.Uint32N(128_000)
		}
		prompts[i] = kvindex.HashBlocks(nil, 0, toks, benchBlockSize)
	}
	for _, impl := range approxImpls {
		b.Run(impl.name, func(b *testing.B) {
			a := impl.new(time.Hour, 16384)
			t0 := time.Unix(1_700_000_000, 0)
			n := 0
			for ; n < 2*len(prompts); n++ { // to steady state: every endpoint full
				a.Record(kvindex.EndpointID(n%benchEndpoints), prompts[n%len(prompts)], t0.Add(time.Duration(n)*time.Millisecond))
			}
			b.ReportAllocs()
			cpu0, n0 := processCPU(), n
			for b.Loop() {
				a.Record(kvindex.EndpointID(n%benchEndpoints), prompts[n%len(prompts)], t0.Add(time.Duration(n)*time.Millisecond))
				n++
			}
			b.ReportMetric(float64((n-n0)*benchPromptLen)/b.Elapsed().Seconds(), "blocks/s")
			if cpu := processCPU() - cpu0; cpu > 0 {
				b.ReportMetric(float64((n-n0)*benchPromptLen)/cpu.Seconds(), "blocks/cpu-s")
			}
		})
	}
}

// BenchmarkApproxForget times the router's correction of approximate mode
// (router.correctApprox): the engine reported fewer cached tokens than predicted,
// so Forget drops what the endpoint was recorded to hold from the first uncached
// block of the 256-block prompt on, and Record records the prompt again. Every
// prompt opens with the same 32-block system prompt, held by all eps endpoints;
// each endpoint holds 64 conversations under it (32 + 64 x 224 = 14,368 blocks),
// and the engine reports 128 of the 256 blocks cached, so each op drops the
// conversation's last 128 blocks and records them again (endpoints and
// conversations in rotation). eps=1/convs=4096 is the same tree (917,504 + 32
// blocks) held by one endpoint, with nobody sharing the prefix; convs=4 holds
// 16x less per endpoint (928 blocks) in a 16x smaller tree. One op is one
// Forget plus one Record; forget-ns is the wall time of the Forget alone.
func BenchmarkApproxForget(b *testing.B) {
	const (
		system = 32
		keep   = benchPromptLen / 2
	)
	for _, c := range []struct{ eps, convs int }{{benchEndpoints, 64}, {1, 64 * benchEndpoints}, {benchEndpoints, 4}} {
		eps, convs := c.eps, c.convs
		b.Run(fmt.Sprintf("eps=%d/convs=%d", eps, convs), func(b *testing.B) {
			rnd := rand.New(rand.NewPCG(7, uint64(eps)))
			sys := make([]kvindex.BlockHash, system)
			for i := range sys {
				sys[i] = kvindex.BlockHash(rnd.Uint64())
			}
			prompts := make([][]kvindex.BlockHash, eps*convs) // endpoint i%eps
			for i := range prompts {
				p := append(make([]kvindex.BlockHash, 0, benchPromptLen), sys...)
				for len(p) < benchPromptLen {
					p = append(p, kvindex.BlockHash(rnd.Uint64()))
				}
				prompts[i] = p
			}
			a := kvindex.NewApprox(time.Hour, 0)
			now := time.Unix(1_700_000_000, 0)
			for i, p := range prompts {
				a.Record(kvindex.EndpointID(i%eps), p, now)
			}
			b.ReportAllocs()
			cpu0, n := processCPU(), 0
			var forget time.Duration
			for b.Loop() {
				i := n % len(prompts)
				ep := kvindex.EndpointID(i % eps)
				now = now.Add(time.Millisecond)
				t0 := time.Now()
				got := a.Forget(ep, prompts[i], keep)
				forget += time.Since(t0)
				if got != benchPromptLen-keep {
					b.Fatalf("Forget dropped %d blocks, want %d", got, benchPromptLen-keep)
				}
				a.Record(ep, prompts[i], now)
				n++
			}
			b.ReportMetric(float64(processCPU()-cpu0)/float64(n), "cpu-ns/op")
			b.ReportMetric(float64(forget.Nanoseconds())/float64(n), "forget-ns")
		})
	}
}
