package kvindex_test

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/kvgate/kvgate/kvindex"
)

// model is the naive reference: per endpoint, a map from external hash to
// the prefix (the path of block hashes, as a string) it names, and a map from
// prefix to the tiers held. A prefix "exists" while some endpoint holds it or
// a longer prefix; external hashes naming a prefix that stopped existing are
// forgotten, as the index forgets blocks whose node it freed.
type model struct {
	eps map[string]*modelEP
}

type modelEP struct {
	ext map[kvindex.ExternalHash]string
	res map[string]uint8
}

func newModel() *model { return &model{eps: map[string]*modelEP{}} }

func (m *model) ep(name string) *modelEP {
	e := m.eps[name]
	if e == nil {
		e = &modelEP{ext: map[kvindex.ExternalHash]string{}, res: map[string]uint8{}}
		m.eps[name] = e
	}
	return e
}

func pathKey(parent string, h kvindex.BlockHash) string {
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], uint64(h))
	return parent + string(b[:])
}

func pathHashes(p string) []kvindex.BlockHash {
	hs := make([]kvindex.BlockHash, 0, len(p)/8)
	for i := 0; i+8 <= len(p); i += 8 {
		hs = append(hs, kvindex.BlockHash(binary.LittleEndian.Uint64([]byte(p[i:i+8]))))
	}
	return hs
}

// existing returns every prefix of every held prefix.
func (m *model) existing() map[string]bool {
	ex := map[string]bool{}
	for _, e := range m.eps {
		for p := range e.res {
			for l := 8; l <= len(p); l += 8 {
				ex[p[:l]] = true
			}
		}
	}
	return ex
}

func (m *model) sweep() {
	ex := m.existing()
	for _, e := range m.eps {
		for h, p := range e.ext {
			if !ex[p] {
				delete(e.ext, h)
			}
		}
	}
}

func (m *model) stored(name string, ev kvindex.Stored) {
	e := m.ep(name)
	if ev.Tier >= kvindex.NumTiers {
		return
	}
	parent := ""
	if ev.HasParent {
		p, ok := e.ext[ev.Parent]
		if !ok {
			return
		}
		parent = p
	}
	for _, b := range ev.Blocks {
		p := pathKey(parent, kvindex.HashBlock(ev.Seed, b.Tokens))
		e.res[p] |= 1 << ev.Tier
		old, had := e.ext[b.External]
		e.ext[b.External] = p
		if had && old != p {
			delete(e.res, old)
			m.sweep()
		}
		parent = p
	}
}

func (m *model) removed(name string, ev kvindex.Removed) {
	e := m.ep(name)
	if ev.Tier >= kvindex.NumTiers {
		return
	}
	for _, h := range ev.Hashes {
		p, ok := e.ext[h]
		if !ok {
			continue
		}
		if r := e.res[p] &^ (1 << ev.Tier); r != 0 {
			e.res[p] = r
			continue
		}
		delete(e.res, p)
		delete(e.ext, h)
		m.sweep()
	}
}

func (m *model) cleared(name string) {
	e := m.ep(name)
	clear(e.ext)
	clear(e.res)
	m.sweep()
}

func (m *model) removeEndpoint(name string) {
	delete(m.eps, name)
	m.sweep()
}

// matches returns the expected FindMatches answer, keyed by endpoint name.
func (m *model) matches(hashes []kvindex.BlockHash) (map[string]kvindex.Match, int) {
	want := map[string]kvindex.Match{}
	depth := 0
	for name, e := range m.eps {
		var mt kvindex.Match
		p := ""
		for _, h := range hashes {
			p = pathKey(p, h)
			r := e.res[p]
			if r == 0 {
				break
			}
			mt.Blocks++
			for t := kvindex.Tier(0); t < kvindex.NumTiers; t++ {
				if r&(1<<t) != 0 {
					mt.Tiers[t]++
					break
				}
			}
		}
		if mt.Blocks > 0 {
			want[name] = mt
			depth = max(depth, mt.Blocks)
		}
	}
	return want, depth
}

// check compares x with m on hashes; only endpoints in names are compared
// when names is non-nil.
func check(t testing.TB, x *kvindex.Index, m *model, hashes []kvindex.BlockHash, only string) {
	t.Helper()
	var got kvindex.Matches
	x.FindMatches(hashes, &got)
	want, depth := m.matches(hashes)
	if only != "" {
		w := want[only]
		clear(want)
		depth = 0
		if w.Blocks > 0 {
			want[only] = w
			depth = w.Blocks
		}
	}
	gotBy := map[string]kvindex.Match{}
	for i, g := range got.Endpoints {
		if i > 0 && got.Endpoints[i-1].Endpoint >= g.Endpoint {
			t.Fatalf("endpoints not in ascending ID order: %+v", got.Endpoints)
		}
		name := x.EndpointName(g.Endpoint)
		w, ok := want[name]
		g.Endpoint = 0
		if !ok || w != g {
			t.Fatalf("query %x: endpoint %q: got %+v, want %+v (present %v)\nall got %+v\nall want %+v", hashes, name, g, w, ok, got.Endpoints, want)
		}
		gotBy[name] = g
	}
	if len(gotBy) != len(want) {
		t.Fatalf("query %x: got %d endpoints %+v, want %d %+v", hashes, len(gotBy), got.Endpoints, len(want), want)
	}
	if got.Depth != depth {
		t.Fatalf("query %x: depth %d, want %d", hashes, got.Depth, depth)
	}
}

// checkAll compares every endpoint's block count and the node count, then
// queries every held prefix (and one block beyond) and some random ones.
func checkAll(t testing.TB, x *kvindex.Index, m *model, rnd *rand.Rand) {
	t.Helper()
	for name, e := range m.eps {
		if got := x.Blocks(x.Endpoint(name)); got != len(e.res) {
			t.Fatalf("Blocks(%s) = %d, want %d", name, got, len(e.res))
		}
	}
	if got, want := x.Nodes(), len(m.existing()); got != want {
		t.Fatalf("Nodes() = %d, want %d (a node leaked or was freed early)", got, want)
	}
	for _, e := range m.eps {
		for p := range e.res {
			hs := pathHashes(p)
			check(t, x, m, hs, "")
			check(t, x, m, append(hs, kvindex.HashBlock(0, pool[rnd.IntN(len(pool))])), "")
		}
	}
	for range 4 {
		check(t, x, m, randomQuery(rnd), "")
	}
}

var pool = [][]uint32{{1, 2, 3, 4}, {5, 6, 7, 8}, {1, 2, 3, 5}, {9, 9, 9, 9}}

var seeds = []uint64{0, kvindex.Seed("lora-a")}

var names = []string{"ep0", "ep1", "ep2", "ep3", "ep4"}

func randomQuery(rnd *rand.Rand) []kvindex.BlockHash {
	seed := seeds[rnd.IntN(len(seeds))]
	var toks []uint32
	for range rnd.IntN(7) {
		toks = append(toks, pool[rnd.IntN(len(pool))]...)
	}
	return kvindex.HashBlocks(nil, seed, toks, 4)
}

// byteSource turns fuzz input into small choices; it reports exhaustion.
type byteSource struct {
	b []byte
}

func (s *byteSource) next(n int) int {
	if len(s.b) == 0 {
		return 0
	}
	v := int(s.b[0]) % n
	s.b = s.b[1:]
	return v
}

// drive applies the operations encoded in data to a fresh index and the
// model, checking them against each other after every operation.
// pad endpoints are interned first so the driven ones get larger IDs (62 puts
// them across the first 64-endpoint word and makes churn cross the second).
func drive(t testing.TB, data []byte, pad int) {
	x := kvindex.New(nil)
	for i := range pad {
		x.Endpoint(fmt.Sprint("pad", i))
	}
	m := newModel()
	src := &byteSource{b: data}
	rnd := rand.New(rand.NewPCG(uint64(len(data)), 1))
	for len(src.b) > 0 {
		name := names[src.next(len(names))]
		ep := x.Endpoint(name)
		m.ep(name)
		switch src.next(10) {
		case 0, 1, 2, 3:
			ev := kvindex.Stored{
				HasParent: src.next(2) == 1,
				Parent:    kvindex.ExternalHash(src.next(12)),
				Tier:      kvindex.Tier(src.next(3)),
				Seed:      seeds[src.next(2)],
			}
			for range 1 + src.next(4) {
				ev.Blocks = append(ev.Blocks, kvindex.Block{
					External: kvindex.ExternalHash(src.next(12)),
					Tokens:   pool[src.next(len(pool))],
				})
			}
			x.ApplyStored(ep, ev)
			m.stored(name, ev)
		case 4, 5:
			ev := kvindex.Removed{Tier: kvindex.Tier(src.next(3))}
			for range 1 + src.next(3) {
				ev.Hashes = append(ev.Hashes, kvindex.ExternalHash(src.next(12)))
			}
			x.ApplyRemoved(ep, ev)
			m.removed(name, ev)
		case 6:
			x.ApplyCleared(ep)
			m.cleared(name)
		case 7:
			x.RemoveEndpoint(ep)
			m.removeEndpoint(name)
		case 8:
			checkSnapshot(t, x, m, rnd)
		case 9:
			// an invalid tier is ignored by both
			x.ApplyStored(ep, kvindex.Stored{Tier: kvindex.NumTiers, Blocks: []kvindex.Block{{Tokens: pool[0]}}})
			x.ApplyRemoved(ep, kvindex.Removed{Tier: 7, Hashes: []kvindex.ExternalHash{1}})
		}
		checkAll(t, x, m, rnd)
	}
}

// checkSnapshot restores x's whole snapshot, and each endpoint's own, into
// fresh indexes and compares them with the model.
func checkSnapshot(t testing.TB, x *kvindex.Index, m *model, rnd *rand.Rand) {
	t.Helper()
	var buf bytes.Buffer
	if err := x.WriteSnapshot(&buf); err != nil {
		t.Fatal(err)
	}
	y := kvindex.New(nil)
	if err := y.ReadSnapshot(bytes.NewReader(buf.Bytes())); err != nil {
		t.Fatalf("ReadSnapshot: %v", err)
	}
	checkAll(t, y, m, rnd)
	// Writing the restored index gives the same bytes.
	var again bytes.Buffer
	if err := y.WriteSnapshot(&again); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(buf.Bytes(), again.Bytes()) {
		t.Fatalf("snapshot of restored index differs: %d vs %d bytes", buf.Len(), again.Len())
	}
	for name, e := range m.eps {
		var b bytes.Buffer
		if err := x.WriteEndpointSnapshot(x.Endpoint(name), &b); err != nil {
			t.Fatal(err)
		}
		z := kvindex.New(nil)
		if err := z.ReadSnapshot(&b); err != nil {
			t.Fatalf("ReadSnapshot(%s): %v", name, err)
		}
		if got := z.Blocks(z.Endpoint(name)); got != len(e.res) {
			t.Fatalf("endpoint snapshot of %s: %d blocks, want %d", name, got, len(e.res))
		}
		for p := range e.res {
			check(t, z, m, pathHashes(p), name)
		}
		check(t, z, m, randomQuery(rnd), name)
	}
}

func newRand(seed uint64) *rand.Rand { return rand.New(rand.NewPCG(seed, seed)) }

func TestModelRandom(t *testing.T) {
	for i := range 200 {
		t.Run(fmt.Sprint(i), func(t *testing.T) {
			rnd := rand.New(rand.NewPCG(uint64(i), 42))
			data := make([]byte, 400)
			for j := range data {
				data[j] = byte(rnd.Uint32())
			}
			drive(t, data, []int{0, 62}[i%2])
		})
	}
}

func FuzzIndex(f *testing.F) {
	f.Add([]byte{})
	f.Add([]byte{0, 0, 0, 0, 0, 1, 0, 0, 1, 4, 1, 0, 1, 8})
	f.Add(bytes.Repeat([]byte{3, 1, 7, 2, 9, 4, 6, 5, 0, 8}, 20))
	f.Add([]byte(strings.Repeat("kvgate radix index", 8)))
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) > 2000 {
			data = data[:2000]
		}
		drive(t, data, len(data)%2*62)
	})
}
