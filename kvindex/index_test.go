package kvindex_test

import (
	"strings"
	"testing"

	"github.com/kvgate/kvgate/kvindex"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// blk returns block number i's tokens (4 tokens a block).
func blk(i int) []uint32 { return []uint32{uint32(i), uint32(i) + 1000, uint32(i) + 2000, 7} }

// chain returns the Stored event for blocks from..to-1 with externals equal
// to their numbers, chained under from-1 when from > 0.
func chain(from, to int, tier kvindex.Tier) kvindex.Stored {
	ev := kvindex.Stored{Parent: kvindex.ExternalHash(from - 1), HasParent: from > 0, Tier: tier}
	for i := from; i < to; i++ {
		ev.Blocks = append(ev.Blocks, kvindex.Block{External: kvindex.ExternalHash(i), Tokens: blk(i)})
	}
	return ev
}

func query(n int) []kvindex.BlockHash {
	var toks []uint32
	for i := range n {
		toks = append(toks, blk(i)...)
	}
	return kvindex.HashBlocks(nil, 0, toks, 4)
}

type op func(x *kvindex.Index, a, b kvindex.EndpointID)

func TestIndexScenarios(t *testing.T) {
	type want struct {
		a, b  kvindex.Match // Endpoint field ignored
		depth int
	}
	tests := []struct {
		name string
		ops  []op
		q    int // query length in blocks
		want want
	}{
		{
			name: "shared prefix, different depths",
			ops: []op{
				func(x *kvindex.Index, a, b kvindex.EndpointID) { x.ApplyStored(a, chain(0, 6, kvindex.TierGPU)) },
				func(x *kvindex.Index, a, b kvindex.EndpointID) { x.ApplyStored(b, chain(0, 3, kvindex.TierGPU)) },
			},
			q:    8,
			want: want{a: kvindex.Match{Blocks: 6, Tiers: [3]int{6, 0, 0}}, b: kvindex.Match{Blocks: 3, Tiers: [3]int{3, 0, 0}}, depth: 6},
		},
		{
			name: "chained events extend the prefix",
			ops: []op{
				func(x *kvindex.Index, a, b kvindex.EndpointID) { x.ApplyStored(a, chain(0, 2, kvindex.TierGPU)) },
				func(x *kvindex.Index, a, b kvindex.EndpointID) { x.ApplyStored(a, chain(2, 5, kvindex.TierCPU)) },
			},
			q:    5,
			want: want{a: kvindex.Match{Blocks: 5, Tiers: [3]int{2, 3, 0}}, depth: 5},
		},
		{
			name: "a token-less copy lands on the tier of blocks already reported",
			ops: []op{
				func(x *kvindex.Index, a, b kvindex.EndpointID) { x.ApplyStored(a, chain(0, 4, kvindex.TierGPU)) },
				func(x *kvindex.Index, a, b kvindex.EndpointID) {
					x.ApplyStoredCopies(a, kvindex.TierCPU, []kvindex.ExternalHash{0, 1, 2, 3})
					x.ApplyRemoved(a, kvindex.Removed{Hashes: []kvindex.ExternalHash{0, 1, 2, 3}, Tier: kvindex.TierGPU})
				},
			},
			q:    4,
			want: want{a: kvindex.Match{Blocks: 4, Tiers: [3]int{0, 4, 0}}, depth: 4},
		},
		{
			name: "a token-less copy of hashes never reported is ignored",
			ops: []op{
				func(x *kvindex.Index, a, b kvindex.EndpointID) { x.ApplyStored(a, chain(0, 2, kvindex.TierGPU)) },
				func(x *kvindex.Index, a, b kvindex.EndpointID) {
					x.ApplyStoredCopies(b, kvindex.TierCPU, []kvindex.ExternalHash{0, 1})
				},
			},
			q:    2,
			want: want{a: kvindex.Match{Blocks: 2, Tiers: [3]int{2, 0, 0}}, depth: 2},
		},
		{
			name: "a removed middle block cuts the contiguous prefix",
			ops: []op{
				func(x *kvindex.Index, a, b kvindex.EndpointID) { x.ApplyStored(a, chain(0, 6, kvindex.TierGPU)) },
				func(x *kvindex.Index, a, b kvindex.EndpointID) {
					x.ApplyRemoved(a, kvindex.Removed{Hashes: []kvindex.ExternalHash{2}})
				},
			},
			q:    6,
			want: want{a: kvindex.Match{Blocks: 2, Tiers: [3]int{2, 0, 0}}, depth: 2},
		},
		{
			name: "GPU copy removed, CPU copy still counts",
			ops: []op{
				func(x *kvindex.Index, a, b kvindex.EndpointID) { x.ApplyStored(a, chain(0, 4, kvindex.TierGPU)) },
				func(x *kvindex.Index, a, b kvindex.EndpointID) { x.ApplyStored(a, chain(0, 4, kvindex.TierCPU)) },
				func(x *kvindex.Index, a, b kvindex.EndpointID) {
					x.ApplyRemoved(a, kvindex.Removed{Hashes: []kvindex.ExternalHash{0, 1}, Tier: kvindex.TierGPU})
				},
			},
			q:    4,
			want: want{a: kvindex.Match{Blocks: 4, Tiers: [3]int{2, 2, 0}}, depth: 4},
		},
		{
			name: "removal from a tier the block is not on changes nothing",
			ops: []op{
				func(x *kvindex.Index, a, b kvindex.EndpointID) { x.ApplyStored(a, chain(0, 3, kvindex.TierDisk)) },
				func(x *kvindex.Index, a, b kvindex.EndpointID) {
					x.ApplyRemoved(a, kvindex.Removed{Hashes: []kvindex.ExternalHash{0}, Tier: kvindex.TierGPU})
				},
			},
			q:    3,
			want: want{a: kvindex.Match{Blocks: 3, Tiers: [3]int{0, 0, 3}}, depth: 3},
		},
		{
			name: "unknown parent is ignored",
			ops: []op{
				func(x *kvindex.Index, a, b kvindex.EndpointID) { x.ApplyStored(a, chain(3, 5, kvindex.TierGPU)) },
			},
			q:    5,
			want: want{},
		},
		{
			name: "parent known to another endpoint only is unknown",
			ops: []op{
				func(x *kvindex.Index, a, b kvindex.EndpointID) { x.ApplyStored(b, chain(0, 2, kvindex.TierGPU)) },
				func(x *kvindex.Index, a, b kvindex.EndpointID) { x.ApplyStored(a, chain(2, 4, kvindex.TierGPU)) },
			},
			q:    4,
			want: want{b: kvindex.Match{Blocks: 2, Tiers: [3]int{2, 0, 0}}, depth: 2},
		},
		{
			name: "holding only a later block gives no match",
			ops: []op{
				func(x *kvindex.Index, a, b kvindex.EndpointID) { x.ApplyStored(b, chain(0, 3, kvindex.TierGPU)) },
				func(x *kvindex.Index, a, b kvindex.EndpointID) { x.ApplyStored(a, chain(0, 3, kvindex.TierGPU)) },
				func(x *kvindex.Index, a, b kvindex.EndpointID) {
					x.ApplyRemoved(a, kvindex.Removed{Hashes: []kvindex.ExternalHash{0}})
				},
			},
			q:    3,
			want: want{b: kvindex.Match{Blocks: 3, Tiers: [3]int{3, 0, 0}}, depth: 3},
		},
		{
			name: "cleared endpoint holds nothing",
			ops: []op{
				func(x *kvindex.Index, a, b kvindex.EndpointID) { x.ApplyStored(a, chain(0, 3, kvindex.TierGPU)) },
				func(x *kvindex.Index, a, b kvindex.EndpointID) { x.ApplyStored(b, chain(0, 1, kvindex.TierGPU)) },
				func(x *kvindex.Index, a, b kvindex.EndpointID) { x.ApplyCleared(a) },
			},
			q:    3,
			want: want{b: kvindex.Match{Blocks: 1, Tiers: [3]int{1, 0, 0}}, depth: 1},
		},
		{
			name: "LoRA-seeded blocks do not match a base-model query",
			ops: []op{
				func(x *kvindex.Index, a, b kvindex.EndpointID) {
					ev := chain(0, 3, kvindex.TierGPU)
					ev.Seed = kvindex.Seed("adapter")
					x.ApplyStored(a, ev)
				},
			},
			q:    3,
			want: want{},
		},
		{
			name: "an external hash reused for other tokens moves",
			ops: []op{
				func(x *kvindex.Index, a, b kvindex.EndpointID) { x.ApplyStored(a, chain(0, 3, kvindex.TierGPU)) },
				func(x *kvindex.Index, a, b kvindex.EndpointID) {
					// external 1 now names a different first block
					x.ApplyStored(a, kvindex.Stored{Blocks: []kvindex.Block{{External: 1, Tokens: []uint32{9, 9, 9, 9}}}})
				},
			},
			q:    3,
			want: want{a: kvindex.Match{Blocks: 1, Tiers: [3]int{1, 0, 0}}, depth: 1},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			x := kvindex.New(nil)
			a, b := x.Endpoint("a"), x.Endpoint("b")
			for _, o := range tc.ops {
				o(x, a, b)
			}
			var got kvindex.Matches
			x.FindMatches(query(tc.q), &got)
			var ga, gb kvindex.Match
			for _, m := range got.Endpoints {
				switch m.Endpoint {
				case a:
					ga = m
				case b:
					gb = m
				default:
					t.Fatalf("unexpected endpoint %d", m.Endpoint)
				}
			}
			ga.Endpoint, gb.Endpoint = 0, 0
			if ga != tc.want.a || gb != tc.want.b || got.Depth != tc.want.depth {
				t.Fatalf("got a=%+v b=%+v depth=%d, want a=%+v b=%+v depth=%d", ga, gb, got.Depth, tc.want.a, tc.want.b, tc.want.depth)
			}
			n := 0
			if tc.want.a.Blocks > 0 {
				n++
			}
			if tc.want.b.Blocks > 0 {
				n++
			}
			if got.Candidates() != n {
				t.Fatalf("Candidates() = %d, want %d", got.Candidates(), n)
			}
		})
	}
}

func TestEndpointNames(t *testing.T) {
	x := kvindex.New(nil)
	a := x.Endpoint("10.0.0.1:8000")
	if x.Endpoint("10.0.0.1:8000") != a {
		t.Fatal("Endpoint is not idempotent")
	}
	b := x.Endpoint("10.0.0.2:8000")
	if a == b {
		t.Fatal("two names share an ID")
	}
	if x.EndpointName(a) != "10.0.0.1:8000" || x.EndpointName(b) != "10.0.0.2:8000" || x.EndpointName(99) != "" {
		t.Fatalf("EndpointName: %q %q %q", x.EndpointName(a), x.EndpointName(b), x.EndpointName(99))
	}
	x.ApplyStored(a, chain(0, 3, kvindex.TierGPU))
	x.RemoveEndpoint(a)
	if x.EndpointName(a) != "" || x.Blocks(a) != 0 || x.Nodes() != 0 {
		t.Fatalf("after RemoveEndpoint: name %q, blocks %d, nodes %d", x.EndpointName(a), x.Blocks(a), x.Nodes())
	}
	// Events for a removed ID are ignored until the ID is handed out again.
	x.ApplyStored(a, chain(0, 3, kvindex.TierGPU))
	if x.Nodes() != 0 {
		t.Fatal("event for a removed endpoint was applied")
	}
	c := x.Endpoint("10.0.0.1:8000")
	if x.Blocks(c) != 0 || x.EndpointName(c) != "10.0.0.1:8000" {
		t.Fatal("re-added endpoint is not fresh")
	}
}

func TestEndpointIDReuse(t *testing.T) {
	// IDs are reused only when a fresh one would widen every node's bitset.
	x := kvindex.New(nil)
	ids := map[kvindex.EndpointID]bool{}
	for i := range 64 {
		ids[x.Endpoint(strings.Repeat("e", i+1))] = true
	}
	x.RemoveEndpoint(x.Endpoint("e"))
	id := x.Endpoint("new")
	if id != 0 {
		t.Fatalf("expected freed ID 0 reused at 64 IDs, got %d", id)
	}
	if id := x.Endpoint("newer"); id != 64 {
		t.Fatalf("expected fresh ID 64 with none free, got %d", id)
	}
	x.RemoveEndpoint(x.Endpoint("ee"))
	if id := x.Endpoint("newest"); id != 65 {
		t.Fatalf("expected fresh ID 65 while the second word has room, got %d", id)
	}
}

func TestFindMatchesNoAlloc(t *testing.T) {
	x := kvindex.New(nil)
	for i := range 100 { // IDs beyond 64 use a second bitset word
		x.ApplyStored(x.Endpoint(strings.Repeat("x", i+1)), chain(0, 1+i%20, kvindex.Tier(i%3)))
	}
	q := query(32)
	var out kvindex.Matches
	x.FindMatches(q, &out)
	if out.Depth != 20 || len(out.Endpoints) != 100 {
		t.Fatalf("depth %d, %d endpoints; want 20, 100", out.Depth, len(out.Endpoints))
	}
	if n := testing.AllocsPerRun(50, func() { x.FindMatches(q, &out) }); n != 0 {
		t.Fatalf("FindMatches allocates %v times with a reused Matches", n)
	}
	var empty kvindex.Matches
	x.FindMatches(nil, &empty)
	if empty.Depth != 0 || len(empty.Endpoints) != 0 {
		t.Fatal("empty query matched")
	}
}

func TestMetrics(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	x := kvindex.New(reg)
	a, b := x.Endpoint("a"), x.Endpoint("b")
	x.ApplyStored(a, chain(0, 4, kvindex.TierGPU))
	x.ApplyStored(b, chain(0, 2, kvindex.TierGPU))
	x.ApplyStored(a, chain(10, 12, kvindex.TierGPU))                              // unknown parent 9
	x.ApplyRemoved(a, kvindex.Removed{Hashes: []kvindex.ExternalHash{3, 77, 78}}) // 2 unknown
	x.ApplyCleared(b)
	x.ApplyStored(kvindex.EndpointID(50), chain(0, 1, kvindex.TierGPU)) // unknown endpoint
	x.ApplyStored(a, kvindex.Stored{Tier: 5})                           // invalid tier

	want := `
# HELP kvgate_kvindex_endpoints Endpoints known to the KV index.
# TYPE kvgate_kvindex_endpoints gauge
kvgate_kvindex_endpoints 2
# HELP kvgate_kvindex_events_applied_total KV events applied to the index, by event type.
# TYPE kvgate_kvindex_events_applied_total counter
kvgate_kvindex_events_applied_total{event="cleared"} 1
kvgate_kvindex_events_applied_total{event="endpoint_removed"} 0
kvgate_kvindex_events_applied_total{event="removed"} 1
kvgate_kvindex_events_applied_total{event="snapshot"} 0
kvgate_kvindex_events_applied_total{event="stored"} 2
# HELP kvgate_kvindex_events_ignored_total KV events or blocks ignored by the index, by reason.
# TYPE kvgate_kvindex_events_ignored_total counter
kvgate_kvindex_events_ignored_total{reason="invalid_tier"} 1
kvgate_kvindex_events_ignored_total{reason="unknown_block"} 2
kvgate_kvindex_events_ignored_total{reason="unknown_endpoint"} 1
kvgate_kvindex_events_ignored_total{reason="unknown_parent"} 1
# HELP kvgate_kvindex_nodes Radix-tree nodes (distinct cached prefixes) in the KV index.
# TYPE kvgate_kvindex_nodes gauge
kvgate_kvindex_nodes 3
# HELP kvgate_kvindex_resident_blocks Resident (block, endpoint) pairs in the KV index.
# TYPE kvgate_kvindex_resident_blocks gauge
kvgate_kvindex_resident_blocks 3
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want),
		kvindex.MetricEndpoints, kvindex.MetricEventsApplied, kvindex.MetricEventsIgnored,
		kvindex.MetricNodes, kvindex.MetricBlocks); err != nil {
		t.Fatal(err)
	}
	if n := testutil.CollectAndCount(reg, kvindex.MetricApplySeconds); n != 5 {
		t.Fatalf("apply latency series: %d, want 5", n)
	}
}
