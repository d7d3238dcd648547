package kvindex_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"

	"github.com/kvgate/kvgate/kvindex"
)

func sampleIndex() *kvindex.Index {
	x := kvindex.New(nil)
	a, b := x.Endpoint("a"), x.Endpoint("b")
	x.ApplyStored(a, chain(0, 5, kvindex.TierGPU))
	x.ApplyStored(a, chain(0, 2, kvindex.TierCPU))
	x.ApplyStored(b, chain(0, 3, kvindex.TierDisk))
	return x
}

func snapshotBytes(t testing.TB, x *kvindex.Index) []byte {
	var buf bytes.Buffer
	if err := x.WriteSnapshot(&buf); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestReadSnapshotRejectsMalformed(t *testing.T) {
	good := snapshotBytes(t, sampleIndex())
	hdr := []byte("kvgidx\x00\x01")
	node := func(b []byte, parent uint64) []byte {
		b = binary.AppendUvarint(b, parent)
		return binary.LittleEndian.AppendUint64(b, 42)
	}
	tests := []struct {
		name string
		in   []byte
	}{
		{"empty", nil},
		{"bad magic", append([]byte("kvgidx\x00\x02"), good[8:]...)},
		{"truncated", good[:len(good)-1]},
		{"trailing bytes", append(append([]byte{}, good...), 0)},
		{"node count beyond input", binary.AppendUvarint(append([]byte{}, hdr...), 1<<40)},
		{"parent not earlier", append(node(binary.AppendUvarint(append([]byte{}, hdr...), 1), 1), 0)},
		{"overlong varint", append(append([]byte{}, hdr...), 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01)},
		{"entry names node 0", func() []byte {
			b := node(binary.AppendUvarint(append([]byte{}, hdr...), 1), 0)
			b = append(b, 1, 1, 'a', 1)
			b = binary.LittleEndian.AppendUint64(b, 7)
			return append(b, 0, 1)
		}()},
		{"bad tier mask", func() []byte {
			b := node(binary.AppendUvarint(append([]byte{}, hdr...), 1), 0)
			b = append(b, 1, 1, 'a', 1)
			b = binary.LittleEndian.AppendUint64(b, 7)
			return append(b, 1, 8)
		}()},
		{"duplicate endpoint", func() []byte {
			b := binary.AppendUvarint(append([]byte{}, hdr...), 0)
			return append(b, 2, 1, 'a', 0, 1, 'a', 0)
		}()},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			x := sampleIndex()
			before := snapshotBytes(t, x)
			err := x.ReadSnapshot(bytes.NewReader(tc.in))
			if !errors.Is(err, kvindex.ErrSnapshot) {
				t.Fatalf("got %v, want ErrSnapshot", err)
			}
			if !bytes.Equal(before, snapshotBytes(t, x)) {
				t.Fatal("a rejected snapshot changed the index")
			}
		})
	}
}

func TestEndpointSnapshotReplacesOnlyThatEndpoint(t *testing.T) {
	src := sampleIndex()
	var buf bytes.Buffer
	if err := src.WriteEndpointSnapshot(src.Endpoint("a"), &buf); err != nil {
		t.Fatal(err)
	}
	dst := kvindex.New(nil)
	a, c := dst.Endpoint("a"), dst.Endpoint("c")
	dst.ApplyStored(a, chain(0, 9, kvindex.TierGPU)) // stale state, replaced
	dst.ApplyStored(c, chain(0, 1, kvindex.TierGPU)) // untouched
	if err := dst.ReadSnapshot(&buf); err != nil {
		t.Fatal(err)
	}
	var out kvindex.Matches
	dst.FindMatches(query(9), &out)
	want := []kvindex.Match{
		{Endpoint: a, Blocks: 5, Tiers: [3]int{5, 0, 0}},
		{Endpoint: c, Blocks: 1, Tiers: [3]int{1, 0, 0}},
	}
	if len(out.Endpoints) != 2 || out.Endpoints[0] != want[0] || out.Endpoints[1] != want[1] {
		t.Fatalf("got %+v, want %+v", out.Endpoints, want)
	}
	if dst.Blocks(a) != 5 || dst.Blocks(c) != 1 {
		t.Fatalf("blocks a=%d c=%d, want 5 1", dst.Blocks(a), dst.Blocks(c))
	}
	// The restored external hashes work: removing block 4 shortens a's match.
	dst.ApplyRemoved(a, kvindex.Removed{Hashes: []kvindex.ExternalHash{4}})
	dst.ApplyStored(a, chain(5, 6, kvindex.TierGPU)) // parent 4 is gone: ignored
	dst.FindMatches(query(9), &out)
	if out.Endpoints[0].Blocks != 4 {
		t.Fatalf("after removing block 4: %+v", out.Endpoints)
	}
	// CPU copies of blocks 0 and 1 came back too.
	dst.ApplyRemoved(a, kvindex.Removed{Hashes: []kvindex.ExternalHash{0, 1}, Tier: kvindex.TierGPU})
	dst.FindMatches(query(9), &out)
	if got := out.Endpoints[0]; got.Blocks != 4 || got.Tiers != [3]int{2, 2, 0} {
		t.Fatalf("after dropping GPU copies: %+v", got)
	}
}

func TestSnapshotUnknownEndpointIsEmpty(t *testing.T) {
	x := sampleIndex()
	var buf bytes.Buffer
	if err := x.WriteEndpointSnapshot(77, &buf); err != nil {
		t.Fatal(err)
	}
	y := sampleIndex()
	if err := y.ReadSnapshot(&buf); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(snapshotBytes(t, x), snapshotBytes(t, y)) {
		t.Fatal("an empty snapshot changed the index")
	}
}

// FuzzReadSnapshot feeds arbitrary bytes to ReadSnapshot: no panic, and an
// accepted snapshot is restored, written and read back to the same bytes.
func FuzzReadSnapshot(f *testing.F) {
	f.Add(snapshotBytes(f, sampleIndex()))
	f.Add([]byte("kvgidx\x00\x01\x00\x00"))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		x := kvindex.New(nil)
		if err := x.ReadSnapshot(bytes.NewReader(data)); err != nil {
			if !errors.Is(err, kvindex.ErrSnapshot) {
				t.Fatalf("error %v does not wrap ErrSnapshot", err)
			}
			return
		}
		one := snapshotBytes(t, x)
		y := kvindex.New(nil)
		if err := y.ReadSnapshot(bytes.NewReader(one)); err != nil {
			t.Fatalf("re-reading a written snapshot: %v", err)
		}
		if two := snapshotBytes(t, y); !bytes.Equal(one, two) {
			t.Fatal("snapshot is not stable across a round trip")
		}
	})
}
