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
	var buf [4 * 64]byte
	d := sha256.New()
	d.Write(parent[:])
	for len(tokens) > 0 {
		n := min(len(tokens), 64)
		for i, t := range tokens[:n] {
			binary.LittleEndian.PutUint32(buf[4*i:], t)
		}
		d.Write(buf[:4*n])
		tokens = tokens[n:]
	}
	if extra != "" {
		d.Write([]byte{0})
		d.Write([]byte(extra))
	}
	var h BlockHash
	d.Sum(h[:0])
	return h
}
