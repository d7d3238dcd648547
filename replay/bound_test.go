package replay

import (
	"strings"
	"testing"

	"github.com/kvgate/kvgate/workload"
)

func TestLRUEvictsLeastRecent(t *testing.T) {
	l := newLRU(2)
	l.touch(1)
	l.touch(2)
	l.touch(1) // 2 is now the least recent
	l.touch(3)
	if !l.has(1) || l.has(2) || !l.has(3) {
		t.Fatalf("has 1,2,3 = %v %v %v, want true false true", l.has(1), l.has(2), l.has(3))
	}
	l.touch(4)
	if l.has(1) || !l.has(3) || !l.has(4) || len(l.index) != 2 {
		t.Fatal("second eviction wrong")
	}
}

func TestBoundHitRatio(t *testing.T) {
	// Two requests sharing one 512-token block of three: the second one's first block hits.
	in := `{"timestamp": 0, "input_length": 1536, "output_length": 1, "hash_ids": [1, 2, 3]}
{"timestamp": 1, "input_length": 1536, "output_length": 1, "hash_ids": [1, 4, 5]}
`
	tr, err := workload.ReadMooncake(strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	// Cacheable blocks of 16 tokens: (1536-1)/16 = 95 per request; 32 shared.
	got := BoundHitRatio(tr, 16, 1<<20)
	if want := 32.0 / 190; got != want {
		t.Fatalf("infinite cache: %v, want %v", got, want)
	}
	// A cache of 31 blocks keeps the first prompt's 31 head blocks (refreshed last).
	if got := BoundHitRatio(tr, 16, 31); got != 31.0/190 {
		t.Fatalf("31-block cache: %v, want %v", got, 31.0/190)
	}
	if got := BoundHitRatio(tr, 16, 0); got != 0 {
		t.Fatalf("no cache: %v, want 0", got)
	}
	// Big enough for one prompt: the head survives (tail refreshed first, evicted first).
	if got := BoundHitRatio(tr, 16, 96); got != 32.0/190 {
		t.Fatalf("one-prompt cache: %v, want %v", got, 32.0/190)
	}
}

func TestInfiniteHitRatio(t *testing.T) {
	in := `{"timestamp": 0, "input_length": 1536, "output_length": 1, "hash_ids": [1, 2, 3]}
{"timestamp": 1, "input_length": 1536, "output_length": 1, "hash_ids": [1, 4, 5]}
{"timestamp": 2, "input_length": 1024, "output_length": 1, "hash_ids": [1, 2]}
`
	tr, err := workload.ReadMooncake(strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	// 95 + 95 + 63 cacheable blocks; the second shares its first 32, the third all 63.
	if got, want := InfiniteHitRatio(tr, 16), (32.0+63)/(95+95+63); got != want {
		t.Fatalf("infinite: %v, want %v", got, want)
	}
	if got, want := BoundHitRatio(tr, 16, 1<<20), InfiniteHitRatio(tr, 16); got != want {
		t.Fatalf("bound with room for everything %v, infinite %v", got, want)
	}
}

// TestBoundCachesLastFullBlock: a prompt of whole blocks computes its last block too (only
// its last token is never served from cache), and the engine keeps that block for the next
// turn; the bound did not, so an engine could beat it.
func TestBoundCachesLastFullBlock(t *testing.T) {
	in := `{"timestamp": 0, "input_length": 1024, "output_length": 1, "hash_ids": [1, 2]}
{"timestamp": 1, "input_length": 1536, "output_length": 1, "hash_ids": [1, 2, 3]}
`
	tr, err := workload.ReadMooncake(strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	// 63 + 95 cacheable blocks; the second prompt finds all 64 full blocks of the first.
	want := 64.0 / (63 + 95)
	if got := BoundHitRatio(tr, 16, 1<<20); got != want {
		t.Fatalf("bound: %v, want %v", got, want)
	}
	if got := InfiniteHitRatio(tr, 16); got != want {
		t.Fatalf("infinite: %v, want %v", got, want)
	}
}
