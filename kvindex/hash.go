package kvindex

import (
	"encoding/binary"
	"unsafe"

	"github.com/zeebo/xxh3"
)

// BlockHash is kvindex's own hash of one block's token ids (xxh3 under a seed).
// It keys a radix-tree node under its parent, so it only has to tell apart the
// children of one node: the path from the root carries the prefix.
type BlockHash uint64

// ExternalHash is an engine's own name for a block (vLLM's block hash). Integer
// hashes are used as they are; byte-string hashes go through ExternalFromBytes.
type ExternalHash uint64

// ExternalFromBytes turns a byte-string block hash into an ExternalHash: exactly
// 8 bytes are read as a big-endian integer, any other length is hashed with xxh3.
func ExternalFromBytes(b []byte) ExternalHash {
	if len(b) == 8 {
		return ExternalHash(binary.BigEndian.Uint64(b))
	}
	return ExternalHash(xxh3.Hash(b))
}

// Seed returns the hash seed for what makes equal tokens distinct cache entries:
// a LoRA adapter name and extra keys (multimodal content hashes, cache salts).
// It is 0 when there is neither, and never 0 otherwise.
func Seed(loraName string, extraKeys ...string) uint64 {
	if loraName == "" && len(extraKeys) == 0 {
		return 0
	}
	h := xxh3.New()
	_, _ = h.WriteString(loraName)
	for _, k := range extraKeys {
		var n [binary.MaxVarintLen64]byte
		_, _ = h.Write(n[:binary.PutUvarint(n[:], uint64(len(k)))])
		_, _ = h.WriteString(k)
	}
	s := h.Sum64()
	if s == 0 {
		s = 1
	}
	return s
}

// littleEndian reports whether the machine stores a uint32 little-endian; the
// hash is defined over the little-endian encoding of the token ids.
var littleEndian = func() bool {
	x := uint32(1)
	return *(*byte)(unsafe.Pointer(&x)) == 1
}()

// HashBlock hashes one block's token ids (their little-endian uint32 encoding)
// with xxh3 under seed.
func HashBlock(seed uint64, tokens []uint32) BlockHash {
	if len(tokens) == 0 {
		return BlockHash(xxh3.HashSeed(nil, seed))
	}
	if littleEndian {
		b := unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(tokens))), len(tokens)*4)
		return BlockHash(xxh3.HashSeed(b, seed))
	}
	b := make([]byte, len(tokens)*4)
	for i, t := range tokens {
		binary.LittleEndian.PutUint32(b[i*4:], t)
	}
	return BlockHash(xxh3.HashSeed(b, seed))
}

// HashBlocks appends to dst one BlockHash per full block of blockSize tokens
// (a trailing partial block is not hashed: engines cache full blocks only) and
// returns the extended slice. It does not allocate when dst has room.
// A blockSize below 1 appends nothing.
func HashBlocks(dst []BlockHash, seed uint64, tokens []uint32, blockSize int) []BlockHash {
	if blockSize < 1 {
		return dst
	}
	for i := 0; i+blockSize <= len(tokens); i += blockSize {
		dst = append(dst, HashBlock(seed, tokens[i:i+blockSize]))
	}
	return dst
}
