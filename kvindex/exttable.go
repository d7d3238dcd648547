package kvindex

// extTable maps one endpoint's external hashes to nodes: open addressing
// with linear probing and backward-shift deletion, one 16-byte slot per
// entry, so a lookup usually costs one cache miss (external hashes are
// random and an endpoint holds up to millions of them). A slot whose ref
// names node 0 (the root, never a block) is empty.
type extTable struct {
	slots []extSlot
	n     int
	shift uint8
}

type extSlot struct {
	key ExternalHash
	ref extRef
}

const extMinSlots = 16

// home mixes k fully (engines and simulators may number blocks
// sequentially) and takes the top bits.
func (t *extTable) home(k ExternalHash) int {
	h := uint64(k)
	h ^= h >> 33
	h *= 0xff51afd7ed558ccd
	h ^= h >> 33
	h *= 0xc4ceb9fe1a85ec53
	return int(h >> t.shift)
}

// Len returns the number of entries.
func (t *extTable) Len() int { return t.n }

func (t *extTable) get(k ExternalHash) (extRef, bool) {
	if t.n == 0 {
		return extRef{}, false
	}
	mask := len(t.slots) - 1
	for i := t.home(k); ; i = (i + 1) & mask {
		s := &t.slots[i]
		if s.ref.node == 0 {
			return extRef{}, false
		}
		if s.key == k {
			return s.ref, true
		}
	}
}

// touch loads the home slots of blocks' external hashes. The loads are
// independent, so their cache misses overlap instead of being paid one by one
// inside the apply loop; the result only keeps the loads from being dropped.
func (t *extTable) touch(blocks []Block) uint64 {
	if len(t.slots) == 0 {
		return 0
	}
	var sum uint64
	for _, b := range blocks {
		sum += uint64(t.slots[t.home(b.External)].key)
	}
	return sum
}

// put sets k to r (r.node != 0) and returns the previous value.
func (t *extTable) put(k ExternalHash, r extRef) (old extRef, had bool) {
	if (t.n+1)*4 > len(t.slots)*3 {
		t.grow()
	}
	mask := len(t.slots) - 1
	for i := t.home(k); ; i = (i + 1) & mask {
		s := &t.slots[i]
		if s.ref.node == 0 {
			s.key, s.ref = k, r
			t.n++
			return extRef{}, false
		}
		if s.key == k {
			old, s.ref = s.ref, r
			return old, true
		}
	}
}

func (t *extTable) del(k ExternalHash) {
	if t.n == 0 {
		return
	}
	mask := len(t.slots) - 1
	i := t.home(k)
	for ; ; i = (i + 1) & mask {
		if t.slots[i].ref.node == 0 {
			return
		}
		if t.slots[i].key == k {
			break
		}
	}
	// Shift later entries of the probe run back into the hole unless that
	// would move one before its home slot.
	for j := (i + 1) & mask; t.slots[j].ref.node != 0; j = (j + 1) & mask {
		h := t.home(t.slots[j].key)
		if (j-h)&mask >= (j-i)&mask {
			t.slots[i] = t.slots[j]
			i = j
		}
	}
	t.slots[i] = extSlot{}
	t.n--
}

func (t *extTable) grow() {
	old := t.slots
	size := max(extMinSlots, 2*len(old))
	t.slots = make([]extSlot, size)
	t.shift = uint8(64 - bitsLen(size-1))
	t.n = 0
	mask := size - 1
	for _, s := range old {
		if s.ref.node == 0 {
			continue
		}
		i := t.home(s.key)
		for t.slots[i].ref.node != 0 {
			i = (i + 1) & mask
		}
		t.slots[i] = s
		t.n++
	}
}

func bitsLen(x int) int {
	n := 0
	for ; x > 0; x >>= 1 {
		n++
	}
	return n
}

// all calls f for every entry.
func (t *extTable) all(f func(ExternalHash, extRef)) {
	for _, s := range t.slots {
		if s.ref.node != 0 {
			f(s.key, s.ref)
		}
	}
}
