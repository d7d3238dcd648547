package sim

import (
	"crypto/sha256"
	"encoding/binary"
)

// BlockHash is a block's identity in the prefix cache: sha256 over the parent block's hash,
// the block's token ids and its extra keys (LoRA name, cache salt on the first block), chained
// as vLLM chains its block hashes.
type BlockHash [32]byte

// Uint64 is the 64-bit form vLLM publishes when it emits integer block hashes: the digest's
// last 8 bytes, big-endian.
func (h BlockHash) Uint64() uint64 { return binary.BigEndian.Uint64(h[24:]) }

// hashBlock chains one full block onto parent (the zero hash for the first block).
func hashBlock(parent BlockHash, tokens []uint32, extra string) BlockHash {
	var buf []byte
	return hashBlockBuf(&buf, parent, tokens, extra)
}

// hashBlockBuf is hashBlock with a reusable input buffer: parent, tokens little-endian, then
// a zero byte and the extra keys when there are any.
func hashBlockBuf(buf *[]byte, parent BlockHash, tokens []uint32, extra string) BlockHash {
	b := append((*buf)[:0], parent[:]...)
	for _, t := range tokens {
		b = binary.LittleEndian.AppendUint32(b, t)
	}
	if extra != "" {
		b = append(b, 0)
		b = append(b, extra...)
	}
	*buf = b
	return sha256.Sum256(b)
}
