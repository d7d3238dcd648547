package kvindex

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"slices"
	"time"
)

// Snapshot format (all integers unsigned varints unless noted):
//
//	magic    "kvgidx\x00\x01"
//	nodes    count, then per node numbered 1..count: parent number (0 = root,
//	         else smaller than its own), hash (8 bytes little-endian)
//	eps      count, then per endpoint: name length, name, entry count, then
//	         per entry: external hash (8 bytes little-endian), node number,
//	         tier mask (one byte, bit t = Tier t, 1..7)
//
// Only the prefixes the written endpoints hold, and their ancestors, are
// written. Entries are sorted by external hash and endpoints by ID, so equal
// indexes give equal bytes.
const snapshotMagic = "kvgidx\x00\x01"

// ErrSnapshot wraps every error ReadSnapshot returns for malformed input.
var ErrSnapshot = errors.New("kvindex: bad snapshot")

type snapEntry struct {
	ext  ExternalHash
	node uint32
	mask uint8
}

// WriteSnapshot writes the whole index to w. Readers are not blocked;
// appliers wait while the snapshot is encoded in memory, not while it is
// written to w.
func (x *Index) WriteSnapshot(w io.Writer) error {
	return x.writeSnapshot(w, nil)
}

// WriteEndpointSnapshot writes ep's part of the index: its blocks, on which
// tiers, and the prefixes above them. ReadSnapshot restores it. An unknown ep
// gives a snapshot with no endpoints.
func (x *Index) WriteEndpointSnapshot(ep EndpointID, w io.Writer) error {
	return x.writeSnapshot(w, &ep)
}

func (x *Index) writeSnapshot(w io.Writer, only *EndpointID) error {
	b := x.encodeSnapshot(only)
	_, err := w.Write(b)
	return err
}

func (x *Index) encodeSnapshot(only *EndpointID) []byte {
	x.applyMu.Lock()
	defer x.applyMu.Unlock()
	// Holding applyMu, nothing changes the tree: it is read without x.mu.
	x.namesMu.RLock()
	names := slices.Clone(x.names)
	alive := slices.Clone(x.alive)
	x.namesMu.RUnlock()

	type epSnap struct {
		name    string
		entries []snapEntry
	}
	var eps []epSnap
	for id, st := range x.eps {
		if st == nil || id >= len(alive) || !alive[id] || (only != nil && EndpointID(id) != *only) {
			continue
		}
		es := make([]snapEntry, 0, st.ext.Len())
		st.ext.all(func(h ExternalHash, r extRef) {
			if !x.valid(r) {
				return
			}
			if m := x.tiers(r.node, EndpointID(id)); m != 0 {
				es = append(es, snapEntry{h, r.node, m})
			}
		})
		slices.SortFunc(es, func(a, b snapEntry) int {
			switch {
			case a.ext < b.ext:
				return -1
			case a.ext > b.ext:
				return 1
			}
			return 0
		})
		eps = append(eps, epSnap{names[id], es})
	}

	// Number the nodes so that a parent comes before its children.
	num := make([]uint32, len(x.nodes))
	order := make([]uint32, 0, x.live)
	var stack []uint32
	for _, e := range eps {
		for _, en := range e.entries {
			for i := en.node; i != 0 && num[i] == 0; i = x.nodes[i].parent {
				stack = append(stack, i)
			}
			for k := len(stack) - 1; k >= 0; k-- {
				order = append(order, stack[k])
				num[stack[k]] = uint32(len(order))
			}
			stack = stack[:0]
		}
	}

	size := len(snapshotMagic) + 2*binary.MaxVarintLen64 + len(order)*(8+binary.MaxVarintLen32)
	for _, e := range eps {
		size += 2*binary.MaxVarintLen64 + len(e.name) + len(e.entries)*(9+binary.MaxVarintLen32)
	}
	b := make([]byte, 0, size)
	b = append(b, snapshotMagic...)
	b = binary.AppendUvarint(b, uint64(len(order)))
	for _, i := range order {
		b = binary.AppendUvarint(b, uint64(num[x.nodes[i].parent]))
		b = binary.LittleEndian.AppendUint64(b, uint64(x.nodes[i].hash))
	}
	b = binary.AppendUvarint(b, uint64(len(eps)))
	for _, e := range eps {
		b = binary.AppendUvarint(b, uint64(len(e.name)))
		b = append(b, e.name...)
		b = binary.AppendUvarint(b, uint64(len(e.entries)))
		for _, en := range e.entries {
			b = binary.LittleEndian.AppendUint64(b, uint64(en.ext))
			b = binary.AppendUvarint(b, uint64(num[en.node]))
			b = append(b, en.mask)
		}
	}
	return b
}

type snapNode struct {
	parent uint32
	hash   BlockHash
}

type snapEndpoint struct {
	name    string
	entries []snapEntry // node is a snapshot node number
}

type snapshot struct {
	nodes []snapNode // index 0 is the root
	eps   []snapEndpoint
}

type snapReader struct {
	b   []byte
	err error
}

func (r *snapReader) fail(format string, args ...any) {
	if r.err == nil {
		r.err = fmt.Errorf("%w: "+format, append([]any{ErrSnapshot}, args...)...)
	}
}

func (r *snapReader) uvarint(what string) uint64 {
	if r.err != nil {
		return 0
	}
	v, n := binary.Uvarint(r.b)
	if n <= 0 {
		r.fail("truncated or overlong %s", what)
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *snapReader) u64(what string) uint64 {
	if r.err != nil {
		return 0
	}
	if len(r.b) < 8 {
		r.fail("truncated %s", what)
		return 0
	}
	v := binary.LittleEndian.Uint64(r.b)
	r.b = r.b[8:]
	return v
}

// count reads a count of items at least min bytes long each and checks that
// the rest of the input can hold them.
func (r *snapReader) count(what string, min int) int {
	n := r.uvarint(what)
	if r.err == nil && n > uint64(len(r.b)/min) {
		r.fail("%s %d exceeds the input", what, n)
		return 0
	}
	return int(n)
}

func decodeSnapshot(b []byte) (*snapshot, error) {
	if !bytes.HasPrefix(b, []byte(snapshotMagic)) {
		return nil, fmt.Errorf("%w: missing magic", ErrSnapshot)
	}
	r := &snapReader{b: b[len(snapshotMagic):]}
	s := &snapshot{}
	n := r.count("node count", 9)
	s.nodes = make([]snapNode, 1, n+1)
	for k := 1; k <= n && r.err == nil; k++ {
		p := r.uvarint("parent")
		h := r.u64("hash")
		if r.err == nil && p >= uint64(k) {
			r.fail("node %d has parent %d, not an earlier node", k, p)
		}
		s.nodes = append(s.nodes, snapNode{uint32(p), BlockHash(h)})
	}
	ne := r.count("endpoint count", 2)
	seen := map[string]bool{}
	for e := 0; e < ne && r.err == nil; e++ {
		l := r.count("name length", 1)
		if r.err != nil {
			break
		}
		name := string(r.b[:l])
		r.b = r.b[l:]
		if seen[name] {
			r.fail("endpoint %q appears twice", name)
			break
		}
		seen[name] = true
		m := r.count("entry count", 10)
		ep := snapEndpoint{name: name, entries: make([]snapEntry, 0, m)}
		for i := 0; i < m && r.err == nil; i++ {
			h := r.u64("external hash")
			k := r.uvarint("node")
			if r.err == nil && (k == 0 || k > uint64(n)) {
				r.fail("entry names node %d of %d", k, n)
			}
			if r.err == nil && len(r.b) == 0 {
				r.fail("truncated tier mask")
			}
			if r.err != nil {
				break
			}
			mask := r.b[0]
			r.b = r.b[1:]
			if mask == 0 || mask >= 1<<NumTiers {
				r.fail("bad tier mask %#x", mask)
				break
			}
			ep.entries = append(ep.entries, snapEntry{ExternalHash(h), uint32(k), mask})
		}
		s.eps = append(s.eps, ep)
	}
	if r.err == nil && len(r.b) != 0 {
		r.fail("%d trailing bytes", len(r.b))
	}
	if r.err != nil {
		return nil, r.err
	}
	return s, nil
}

// ReadSnapshot restores a snapshot written by WriteSnapshot or
// WriteEndpointSnapshot: each endpoint it names (interned by name) gets
// exactly the blocks the snapshot gives it; other endpoints are untouched.
// Malformed input returns an error wrapping ErrSnapshot and changes nothing.
func (x *Index) ReadSnapshot(r io.Reader) error {
	b, err := io.ReadAll(r)
	if err != nil {
		return fmt.Errorf("kvindex: reading snapshot: %w", err)
	}
	s, err := decodeSnapshot(b)
	if err != nil {
		return err
	}
	start := time.Now()
	ids := make([]EndpointID, len(s.eps))
	for i, e := range s.eps {
		ids[i] = x.Endpoint(e.name)
	}
	x.applyMu.Lock()
	defer x.applyMu.Unlock()
	// Snapshot node -> index node; checked for validity on use, since a
	// repeated external hash may drop (and free) a node resolved earlier.
	live := make([]extRef, len(s.nodes))
	var stack []uint32
	for i, e := range s.eps {
		ep := ids[i]
		if !x.aliveEndpoint(ep) { // removed since it was interned above
			continue
		}
		x.clear(ep)
		x.mu.Lock()
		st := x.state(ep)
		for j, en := range e.entries {
			if j > 0 && j%applyChunk == 0 {
				x.mu.Unlock()
				x.mu.Lock()
			}
			// Resolve the node and any unresolved ancestors, root first.
			for k := en.node; k != 0 && !x.valid(live[k]); k = s.nodes[k].parent {
				stack = append(stack, k)
			}
			for len(stack) > 0 {
				k := stack[len(stack)-1]
				stack = stack[:len(stack)-1]
				p := live[s.nodes[k].parent].node // the root's entry stays 0
				c := x.child(p, s.nodes[k].hash)
				if c == 0 {
					c = x.addChild(p, s.nodes[k].hash)
				}
				live[k] = extRef{c, x.nodes[c].gen}
			}
			c := live[en.node].node
			for t := Tier(0); t < NumTiers; t++ {
				if en.mask&(1<<t) != 0 && x.setTier(c, ep, t) {
					st.blocks++
					x.pairs++
				}
			}
			old, had := st.ext.put(en.ext, extRef{c, x.nodes[c].gen})
			if had && old.node != c && x.valid(old) {
				x.dropNode(st, ep, old.node)
			}
		}
		x.mu.Unlock()
	}
	x.done(eventSnapshot, start)
	return nil
}
