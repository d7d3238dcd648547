package engine

import (
	"errors"
	"fmt"
	"math"
	"strconv"
)

// Field names of vLLM's msgspec structs, in declaration order. A positional
// (array_like) event lists its fields in this order after the tag; a map event
// uses them as keys. Later vLLM releases only ever appended fields.
var (
	storedFields = [...]string{
		"block_hashes", "parent_block_hash", "token_ids", "block_size", "lora_id",
		"medium", "lora_name", "extra_keys", "group_idx", "kv_cache_spec_kind",
		"kv_cache_spec_sliding_window", "locality", "ownership", "session_id",
	}
	removedFields = [...]string{"block_hashes", "medium", "group_idx", "locality", "ownership"}

	storedNames  = asBytes(storedFields[:])
	removedNames = asBytes(removedFields[:])
)

func asBytes(ss []string) [][]byte {
	out := make([][]byte, len(ss))
	for i, s := range ss {
		out[i] = []byte(s)
	}
	return out
}

// storedRequired is how many BlockStored fields a positional event must
// carry: block_hashes through block_size. SGLang stops after lora_id, older
// vLLM after medium, current vLLM writes lora_name too.
const storedRequired = 4

// Bits recording which required fields a map event carried.
const (
	seenHashes = 1 << iota
	seenTokens
	seenBlockSize
)

// DecodeBatch decodes one KV-event batch payload as vLLM or SGLang publish it,
// in any of the shapes found in the field (positional or map-encoded, at batch
// and at event level independently), with integer or byte-string block
// hashes, and with trailing optional fields present or absent. Unknown map
// keys and extra trailing positional fields are skipped. It never panics and
// allocates no more than a small multiple of len(payload); the returned batch
// does not alias payload.
func DecodeBatch(payload []byte) (EventBatch, error) {
	r := reader{b: payload}
	b, err := r.batch()
	if err == nil && r.off != len(payload) {
		err = fmt.Errorf("%d trailing bytes after the batch", len(payload)-r.off)
	}
	if err != nil {
		return EventBatch{}, fmt.Errorf("engine: decode KV event batch at byte %d: %w", r.off, err)
	}
	return b, nil
}

func (r *reader) batch() (EventBatch, error) {
	var b EventBatch
	c, err := r.peek()
	if err != nil {
		return b, err
	}
	switch {
	case isArray(c):
		n, err := r.arrayLen()
		if err != nil {
			return b, err
		}
		if n < 2 {
			return b, fmt.Errorf("batch array has %d fields, want [ts, events, data_parallel_rank?]", n)
		}
		if b.TS, err = r.float(); err != nil {
			return b, fmt.Errorf("ts: %w", err)
		}
		if b.Events, err = r.events(); err != nil {
			return b, err
		}
		if n >= 3 {
			if b.DPRank, err = r.optInt(); err != nil {
				return b, fmt.Errorf("data_parallel_rank: %w", err)
			}
		}
		for i := 3; i < n; i++ {
			if err := r.skip(0); err != nil {
				return b, err
			}
		}
		return b, nil
	case isMap(c):
		n, err := r.mapLen()
		if err != nil {
			return b, err
		}
		var haveTS, haveEvents bool
		for range n {
			k, err := r.str()
			if err != nil {
				return b, fmt.Errorf("batch key: %w", err)
			}
			switch string(k) {
			case "ts":
				haveTS = true
				if b.TS, err = r.float(); err != nil {
					return b, fmt.Errorf("ts: %w", err)
				}
			case "events":
				haveEvents = true
				if b.Events, err = r.events(); err != nil {
					return b, err
				}
			case "data_parallel_rank", "dp_rank":
				if b.DPRank, err = r.optInt(); err != nil {
					return b, fmt.Errorf("%s: %w", k, err)
				}
			default:
				if err := r.skip(0); err != nil {
					return b, err
				}
			}
		}
		if !haveTS || !haveEvents {
			return b, errors.New(`batch map lacks "ts" or "events"`)
		}
		return b, nil
	}
	return b, fmt.Errorf("batch is a msgpack %s, want array or map", typeName(c))
}

func (r *reader) events() ([]Event, error) {
	n, err := r.arrayLen()
	if err != nil {
		return nil, fmt.Errorf("events: %w", err)
	}
	evs := make([]Event, 0, min(n, 256))
	for i := range n {
		e, err := r.event()
		if err != nil {
			return nil, fmt.Errorf("event %d: %w", i, err)
		}
		evs = append(evs, e)
	}
	return evs, nil
}

func kindOf(tag []byte) (EventKind, error) {
	switch string(tag) {
	case tagBlockStored:
		return BlockStored, nil
	case tagBlockRemoved:
		return BlockRemoved, nil
	case tagAllBlocksCleared:
		return AllBlocksCleared, nil
	}
	return 0, fmt.Errorf("unknown event type %q", tag)
}

func (r *reader) event() (Event, error) {
	var e Event
	c, err := r.peek()
	if err != nil {
		return e, err
	}
	switch {
	case isArray(c):
		n, err := r.arrayLen()
		if err != nil {
			return e, err
		}
		if n == 0 {
			return e, errors.New("empty event array")
		}
		tag, err := r.str()
		if err != nil {
			return e, fmt.Errorf("event tag: %w", err)
		}
		if e.Kind, err = kindOf(tag); err != nil {
			return e, err
		}
		var names [][]byte
		switch e.Kind {
		case BlockStored:
			if n-1 < storedRequired {
				return e, fmt.Errorf("BlockStored has %d fields, want at least %d", n-1, storedRequired)
			}
			names = storedNames
		case BlockRemoved:
			if n-1 < 1 {
				return e, errors.New("BlockRemoved lacks block_hashes")
			}
			names = removedNames
		}
		for i := 1; i < n; i++ {
			if i-1 < len(names) {
				if _, err := r.field(&e, names[i-1]); err != nil {
					return e, err
				}
			} else if err := r.skip(0); err != nil {
				return e, err
			}
		}
	case isMap(c):
		n, err := r.mapLen()
		if err != nil {
			return e, err
		}
		seen := 0
		for range n {
			k, err := r.str()
			if err != nil {
				return e, fmt.Errorf("event key: %w", err)
			}
			if string(k) == "type" {
				tag, err := r.str()
				if err != nil {
					return e, fmt.Errorf("event type: %w", err)
				}
				if e.Kind, err = kindOf(tag); err != nil {
					return e, err
				}
				continue
			}
			bit, err := r.field(&e, k)
			if err != nil {
				return e, err
			}
			seen |= bit
		}
		switch e.Kind {
		case 0:
			return e, errors.New(`event map lacks "type"`)
		case BlockStored:
			if seen&(seenHashes|seenTokens|seenBlockSize) != seenHashes|seenTokens|seenBlockSize {
				return e, errors.New("BlockStored lacks block_hashes, token_ids or block_size")
			}
		case BlockRemoved:
			if seen&seenHashes == 0 {
				return e, errors.New("BlockRemoved lacks block_hashes")
			}
		}
	default:
		return e, fmt.Errorf("event is a msgpack %s, want array or map", typeName(c))
	}
	normalize(&e)
	return e, nil
}

// normalize drops what an event's kind does not carry and fills defaults, so
// that a decoded event encodes and decodes back to itself.
func normalize(e *Event) {
	switch e.Kind {
	case BlockStored:
		if e.Medium == "" {
			e.Medium = MediumGPU
		}
	case BlockRemoved:
		if e.Medium == "" {
			e.Medium = MediumGPU
		}
		*e = Event{Kind: BlockRemoved, BlockHashes: e.BlockHashes, Medium: e.Medium,
			GroupIdx: e.GroupIdx, Locality: e.Locality, Ownership: e.Ownership}
	case AllBlocksCleared:
		*e = Event{Kind: AllBlocksCleared}
	}
}

// zeroIntHash is the integer hash 0, which producers use to mean "no parent block".
const zeroIntHash = BlockHash("\x00\x00\x00\x00\x00\x00\x00\x00")

// field decodes the value of the named field into e and returns the
// seen-bit of a required field. Unknown names are skipped.
func (r *reader) field(e *Event, name []byte) (int, error) {
	var err error
	bit := 0
	switch string(name) {
	case "block_hashes":
		bit = seenHashes
		e.BlockHashes, err = r.hashes()
	case "parent_block_hash":
		var isNil bool
		if isNil, err = r.nilNext(); err == nil && !isNil {
			e.Parent, err = r.hash()
			// llm-d-inference-sim's positional events send the integer 0 for "no parent".
			if e.Parent == zeroIntHash {
				e.Parent = ""
			}
		}
	case "token_ids":
		bit = seenTokens
		e.TokenIDs, err = r.tokens()
	case "block_size":
		bit = seenBlockSize
		e.BlockSize, err = r.blockSize()
	case "lora_id":
		e.LoRAID, err = r.optInt()
	case "medium":
		e.Medium, err = r.optStr()
	case "lora_name":
		e.LoRAName, err = r.optStr()
	case "extra_keys":
		e.BlockExtraKeys, e.ExtraKeys, err = r.extraKeys()
	case "group_idx":
		e.GroupIdx, err = r.optInt()
	case "kv_cache_spec_kind":
		e.KVCacheSpecKind, err = r.optStr()
	case "kv_cache_spec_sliding_window":
		e.KVCacheSpecSlidingWindow, err = r.optInt()
	case "locality":
		e.Locality, err = r.optStr()
	case "ownership":
		e.Ownership, err = r.optStr()
	case "session_id":
		e.SessionID, err = r.optStr()
	default:
		err = r.skip(0)
	}
	if err != nil {
		return 0, fmt.Errorf("%s: %w", string(name), err)
	}
	return bit, nil
}

// hashes reads a list of block hashes. All hashes of the list share one
// string allocation.
func (r *reader) hashes() ([]BlockHash, error) {
	n, err := r.arrayLen()
	if err != nil {
		return nil, err
	}
	var endsArr [64]int
	ends := endsArr[:0]
	if n > len(endsArr) {
		ends = make([]int, 0, n)
	}
	buf := make([]byte, 0, 8*min(n, r.remaining()))
	for i := range n {
		if buf, err = r.appendHash(buf); err != nil {
			return nil, fmt.Errorf("hash %d: %w", i, err)
		}
		ends = append(ends, len(buf))
	}
	all := string(buf)
	hs := make([]BlockHash, n)
	start := 0
	for i, end := range ends {
		hs[i] = BlockHash(all[start:end])
		start = end
	}
	return hs, nil
}

func (r *reader) hash() (BlockHash, error) {
	b, err := r.appendHash(nil)
	return BlockHash(b), err
}

// appendHash appends the raw bytes of one hash: an integer as 8 big-endian
// bytes (negative values as two's complement), a bin or str as its bytes.
func (r *reader) appendHash(buf []byte) ([]byte, error) {
	c, err := r.peek()
	if err != nil {
		return buf, err
	}
	if isInt(c) {
		v, _, err := r.integer()
		if err != nil {
			return buf, err
		}
		return append(buf, byte(v>>56), byte(v>>48), byte(v>>40), byte(v>>32),
			byte(v>>24), byte(v>>16), byte(v>>8), byte(v)), nil
	}
	if isBin(c) || isStr(c) {
		p, err := r.strOrBin()
		return append(buf, p...), err
	}
	return buf, fmt.Errorf("got %s, want int or bytes", typeName(c))
}

func (r *reader) tokens() ([]uint32, error) {
	n, err := r.arrayLen()
	if err != nil {
		return nil, err
	}
	ts := make([]uint32, n)
	for i := range ts {
		v, neg, err := r.integer()
		if err != nil {
			return nil, fmt.Errorf("token %d: %w", i, err)
		}
		if neg || v > math.MaxUint32 {
			return nil, fmt.Errorf("token %d: %d is not a uint32", i, int64(v))
		}
		ts[i] = uint32(v)
	}
	return ts, nil
}

// blockSize reads block_size, or the first entry of the num_toks_per_block
// list that the earliest vLLM releases sent in its place.
func (r *reader) blockSize() (int, error) {
	c, err := r.peek()
	if err != nil {
		return 0, err
	}
	if isArray(c) {
		n, err := r.arrayLen()
		if err != nil {
			return 0, err
		}
		size := 0
		for i := range n {
			v, err := r.int64Val()
			if err != nil {
				return 0, err
			}
			if i == 0 {
				if v < 0 || v > math.MaxInt32 {
					return 0, fmt.Errorf("block size %d out of range", v)
				}
				size = int(v)
			}
		}
		return size, nil
	}
	v, err := r.int64Val()
	if err != nil {
		return 0, err
	}
	if v < 0 || v > math.MaxInt32 {
		return 0, fmt.Errorf("block size %d out of range", v)
	}
	return int(v), nil
}

func (r *reader) optInt() (*int, error) {
	if isNil, err := r.nilNext(); err != nil || isNil {
		return nil, err
	}
	v, err := r.int64Val()
	if err != nil {
		return nil, err
	}
	i := int(v)
	return &i, nil
}

func (r *reader) optStr() (string, error) {
	if isNil, err := r.nilNext(); err != nil || isNil {
		return "", err
	}
	s, err := r.str()
	if string(s) == MediumGPU { // the common case, without an allocation
		return MediumGPU, err
	}
	return string(s), err
}

// extraKeys reads vLLM's extra_keys: nil, or one entry per block that is nil
// or a tuple of values (multimodal identifiers, LoRA name, cache salt,
// prompt-embedding hashes). Values are rendered as strings; nested tuples are
// flattened into their block's entry; maps and extension values are dropped.
func (r *reader) extraKeys() (perBlock [][]string, flat []string, err error) {
	if isNil, err := r.nilNext(); err != nil || isNil {
		return nil, nil, err
	}
	n, err := r.arrayLen()
	if err != nil {
		return nil, nil, err
	}
	perBlock = make([][]string, n)
	for i := range perBlock {
		isNil, err := r.nilNext()
		if err != nil {
			return nil, nil, err
		}
		if isNil {
			continue
		}
		keys := []string{}
		if keys, err = r.appendKeys(keys, 0); err != nil {
			return nil, nil, fmt.Errorf("block %d: %w", i, err)
		}
		perBlock[i] = keys
		flat = append(flat, keys...)
	}
	return perBlock, flat, nil
}

func (r *reader) appendKeys(keys []string, depth int) ([]string, error) {
	if depth > maxDepth {
		return nil, fmt.Errorf("nesting deeper than %d", maxDepth)
	}
	c, err := r.peek()
	if err != nil {
		return nil, err
	}
	switch {
	case isArray(c):
		n, err := r.arrayLen()
		if err != nil {
			return nil, err
		}
		for range n {
			if keys, err = r.appendKeys(keys, depth+1); err != nil {
				return nil, err
			}
		}
		return keys, nil
	case isStr(c) || isBin(c):
		p, err := r.strOrBin()
		return append(keys, string(p)), err
	case isInt(c):
		v, neg, err := r.integer()
		if neg {
			return append(keys, strconv.FormatInt(int64(v), 10)), err
		}
		return append(keys, strconv.FormatUint(v, 10)), err
	case c == 0xca || c == 0xcb:
		f, err := r.float()
		return append(keys, strconv.FormatFloat(f, 'g', -1, 64)), err
	case c == 0xc2 || c == 0xc3:
		r.off++
		return append(keys, strconv.FormatBool(c == 0xc3)), nil
	case c == 0xc0:
		r.off++
		return append(keys, ""), nil
	}
	return keys, r.skip(depth)
}

// EncodeBatch encodes b as the engines publish it. ShapeMap is what current
// vLLM main writes (msgspec structs without array_like, omit_defaults): the
// batch as {"ts", "events", "data_parallel_rank"?}, each event as a map that
// starts with "type" and lists required fields always and optional ones only
// when set. ShapeArray is the positional form of vLLM's array_like structs:
// required fields always, trailing unset optional fields omitted.
// ShapeMapEvents is a positional batch holding map events. An empty Medium is
// written as "GPU"; ExtraKeys is ignored (BlockExtraKeys is written).
func EncodeBatch(b EventBatch, shape Shape, hashFormat HashFormat) ([]byte, error) {
	return AppendBatch(nil, b, shape, hashFormat)
}

// AppendBatch is EncodeBatch appending to dst.
func AppendBatch(dst []byte, b EventBatch, shape Shape, hashFormat HashFormat) ([]byte, error) {
	if shape < ShapeArray || shape > ShapeMapEvents {
		return dst, fmt.Errorf("engine: unknown shape %d", shape)
	}
	if hashFormat != HashInt && hashFormat != HashBytes {
		return dst, fmt.Errorf("engine: unknown hash format %d", hashFormat)
	}
	w := writer{b: dst, hf: hashFormat, mapEvents: shape != ShapeArray}
	if shape == ShapeMap {
		n := 2
		if b.DPRank != nil {
			n++
		}
		w.b = appendMapLen(w.b, n)
		w.b = appendStr(w.b, "ts")
		w.b = appendFloat(w.b, b.TS)
		w.b = appendStr(w.b, "events")
	} else {
		n := 2
		if b.DPRank != nil {
			n++
		}
		w.b = appendArrayLen(w.b, n)
		w.b = appendFloat(w.b, b.TS)
	}
	w.b = appendArrayLen(w.b, len(b.Events))
	for i := range b.Events {
		if err := w.event(&b.Events[i]); err != nil {
			return dst, fmt.Errorf("engine: encode event %d: %w", i, err)
		}
	}
	if b.DPRank != nil {
		if shape == ShapeMap {
			w.b = appendStr(w.b, "data_parallel_rank")
		}
		w.b = appendInt(w.b, int64(*b.DPRank))
	}
	return w.b, nil
}

type writer struct {
	b         []byte
	hf        HashFormat
	mapEvents bool
}

// field is one struct field to write: its name, whether it is required
// (written even when unset), whether it is set, and how to write its value.
type field struct {
	name     string
	required bool
	set      bool
	write    func(*writer)
}

func (w *writer) event(e *Event) error {
	var tag string
	var fs []field
	switch e.Kind {
	case BlockStored:
		tag = tagBlockStored
		if e.BlockSize < 0 {
			return fmt.Errorf("negative block size %d", e.BlockSize)
		}
		fs = []field{
			{"block_hashes", true, true, func(w *writer) { w.hashes(e.BlockHashes) }},
			{"parent_block_hash", true, true, func(w *writer) { w.optHash(e.Parent) }},
			{"token_ids", true, true, func(w *writer) { w.tokens(e.TokenIDs) }},
			{"block_size", true, true, func(w *writer) { w.b = appendInt(w.b, int64(e.BlockSize)) }},
			{"lora_id", true, true, func(w *writer) { w.optInt(e.LoRAID) }},
			{"medium", true, true, func(w *writer) { w.medium(e.Medium) }},
			{"lora_name", true, true, func(w *writer) { w.optStr(e.LoRAName) }},
			{"extra_keys", false, e.BlockExtraKeys != nil, func(w *writer) { w.extraKeys(e.BlockExtraKeys) }},
			{"group_idx", false, e.GroupIdx != nil, func(w *writer) { w.optInt(e.GroupIdx) }},
			{"kv_cache_spec_kind", false, e.KVCacheSpecKind != "", func(w *writer) { w.optStr(e.KVCacheSpecKind) }},
			{"kv_cache_spec_sliding_window", false, e.KVCacheSpecSlidingWindow != nil, func(w *writer) { w.optInt(e.KVCacheSpecSlidingWindow) }},
			{"locality", false, e.Locality != "", func(w *writer) { w.optStr(e.Locality) }},
			{"ownership", false, e.Ownership != "", func(w *writer) { w.optStr(e.Ownership) }},
			{"session_id", false, e.SessionID != "", func(w *writer) { w.optStr(e.SessionID) }},
		}
	case BlockRemoved:
		tag = tagBlockRemoved
		fs = []field{
			{"block_hashes", true, true, func(w *writer) { w.hashes(e.BlockHashes) }},
			{"medium", true, true, func(w *writer) { w.medium(e.Medium) }},
			{"group_idx", false, e.GroupIdx != nil, func(w *writer) { w.optInt(e.GroupIdx) }},
			{"locality", false, e.Locality != "", func(w *writer) { w.optStr(e.Locality) }},
			{"ownership", false, e.Ownership != "", func(w *writer) { w.optStr(e.Ownership) }},
		}
	case AllBlocksCleared:
		tag = tagAllBlocksCleared
	default:
		return fmt.Errorf("unknown event kind %d", e.Kind)
	}
	if w.mapEvents {
		n := 1
		for _, f := range fs {
			if f.required || f.set {
				n++
			}
		}
		w.b = appendMapLen(w.b, n)
		w.b = appendStr(w.b, "type")
		w.b = appendStr(w.b, tag)
		for _, f := range fs {
			if f.required || f.set {
				w.b = appendStr(w.b, f.name)
				f.write(w)
			}
		}
		return nil
	}
	// Positional: msgspec's omit_defaults drops only a trailing run of
	// fields at their default; one set field keeps every field before it.
	last := -1
	for i, f := range fs {
		if f.required || f.set {
			last = i
		}
	}
	w.b = appendArrayLen(w.b, 1+last+1)
	w.b = appendStr(w.b, tag)
	for _, f := range fs[:last+1] {
		f.write(w)
	}
	return nil
}

func (w *writer) hash(h BlockHash) {
	if w.hf == HashBytes {
		w.b = appendBin(w.b, string(h))
		return
	}
	w.b = appendUint(w.b, h.Uint64())
}

func (w *writer) hashes(hs []BlockHash) {
	w.b = appendArrayLen(w.b, len(hs))
	for _, h := range hs {
		w.hash(h)
	}
}

func (w *writer) optHash(h BlockHash) {
	if h == "" {
		w.b = appendNil(w.b)
		return
	}
	w.hash(h)
}

func (w *writer) tokens(ts []uint32) {
	w.b = appendArrayLen(w.b, len(ts))
	for _, t := range ts {
		w.b = appendUint(w.b, uint64(t))
	}
}

func (w *writer) optInt(v *int) {
	if v == nil {
		w.b = appendNil(w.b)
		return
	}
	w.b = appendInt(w.b, int64(*v))
}

func (w *writer) optStr(s string) {
	if s == "" {
		w.b = appendNil(w.b)
		return
	}
	w.b = appendStr(w.b, s)
}

func (w *writer) medium(s string) {
	if s == "" {
		s = MediumGPU
	}
	w.b = appendStr(w.b, s)
}

func (w *writer) extraKeys(perBlock [][]string) {
	if perBlock == nil {
		w.b = appendNil(w.b)
		return
	}
	w.b = appendArrayLen(w.b, len(perBlock))
	for _, keys := range perBlock {
		if keys == nil {
			w.b = appendNil(w.b)
			continue
		}
		w.b = appendArrayLen(w.b, len(keys))
		for _, k := range keys {
			w.b = appendStr(w.b, k)
		}
	}
}
