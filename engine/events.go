// Package engine holds what is specific to each engine kind: the KV-event wire
// format of vLLM and SGLang, its ZMQ transport, and the engines' metric names.
// In a KV event's path it owns E1 and E2 (the wire format, publishing and subscribing); it
// owns no step of a request.
package engine

import (
	"encoding/binary"
	"strconv"

	"github.com/zeebo/xxh3"
)

// BlockHash is an engine's block hash as raw bytes: an integer hash is its
// 8-byte big-endian two's-complement form, a byte-string hash (vLLM's 32-byte
// sha256 digest) is its bytes. It is comparable and usable as a map key; the
// empty string means "no hash" (a BlockStored without parent).
type BlockHash string

// HashFromUint64 returns the BlockHash of an integer hash.
func HashFromUint64(v uint64) BlockHash {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], v)
	return BlockHash(b[:])
}

// Uint64 folds the hash to 64 bits: an 8-byte hash is read big-endian (so
// HashFromUint64(v).Uint64() == v); any other length is hashed with xxh3.
func (h BlockHash) Uint64() uint64 {
	if len(h) == 8 {
		return binary.BigEndian.Uint64([]byte(h))
	}
	return xxh3.HashString(string(h))
}

// EventKind is the tag of a KV-cache event.
type EventKind uint8

// The event kinds vLLM and SGLang publish.
const (
	BlockStored EventKind = iota + 1
	BlockRemoved
	AllBlocksCleared
)

// String returns the wire tag of the kind ("BlockStored", ...).
func (k EventKind) String() string {
	switch k {
	case BlockStored:
		return tagBlockStored
	case BlockRemoved:
		return tagBlockRemoved
	case AllBlocksCleared:
		return tagAllBlocksCleared
	}
	return "EventKind(" + strconv.Itoa(int(k)) + ")"
}

// Wire tags of the events.
const (
	tagBlockStored      = "BlockStored"
	tagBlockRemoved     = "BlockRemoved"
	tagAllBlocksCleared = "AllBlocksCleared"
)

// MediumGPU is the medium of an event that names none.
const MediumGPU = "GPU"

// Event is one KV-cache event. Which fields are meaningful depends on Kind:
// BlockStored uses all of them, BlockRemoved uses BlockHashes, Medium and
// GroupIdx, AllBlocksCleared none.
type Event struct {
	Kind        EventKind
	BlockHashes []BlockHash
	Parent      BlockHash // "" = none
	TokenIDs    []uint32  // len = len(BlockHashes) * BlockSize for full blocks
	BlockSize   int
	LoRAID      *int
	LoRAName    string // "" = none
	Medium      string // "GPU" when the engine names none
	// ExtraKeys is every extra key of every block, flattened in order, each
	// rendered as a string (str as is, bytes as raw bytes, numbers in decimal).
	// It is filled by DecodeBatch and ignored by EncodeBatch.
	ExtraKeys []string
	// BlockExtraKeys is vLLM's extra_keys, one entry per block (nil for a block
	// without extra keys), rendered as ExtraKeys is. EncodeBatch writes it.
	BlockExtraKeys [][]string

	// Newer vLLM fields, nil/"" when absent.
	GroupIdx                 *int
	KVCacheSpecKind          string
	KVCacheSpecSlidingWindow *int
	Locality                 string
	Ownership                string
	SessionID                string
}

// EventBatch is one published message: vLLM's KVEventBatch.
type EventBatch struct {
	TS     float64 // seconds since the epoch
	Events []Event
	DPRank *int // data-parallel rank, nil when absent
}

// Shape is the msgpack layout of a batch.
type Shape uint8

// The layouts found in the field. DecodeBatch reads all of them.
const (
	// ShapeArray: batch and events are positional arrays (vLLM array_like
	// structs, SGLang, llm-d-inference-sim).
	ShapeArray Shape = iota + 1
	// ShapeMap: batch and events are maps, events tagged by "type" (current
	// vLLM main, where the structs are no longer array_like).
	ShapeMap
	// ShapeMapEvents: positional batch, map-encoded events (a vLLM revision
	// where only the batch stayed array_like).
	ShapeMapEvents
)

// HashFormat is how EncodeBatch writes block hashes.
type HashFormat uint8

// Hash formats.
const (
	// HashInt writes each hash as an unsigned integer (vLLM's default,
	// VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES=1). A hash that is not 8 bytes
	// long is written as its Uint64().
	HashInt HashFormat = iota + 1
	// HashBytes writes each hash as a msgpack bin of its bytes (vLLM with
	// VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES=0: 32-byte sha256 digests).
	HashBytes
)
