// Package gguftest writes tiny random-weight llama models as GGUF v3 files, for tests that run
// a real engine (Ollama, llama.cpp's llama-server) without downloading weights.
package gguftest

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"os"
)

// GGUF value types (the GGUF v3 specification's gguf_metadata_value_type).
const (
	typeUint32  = 4
	typeInt32   = 5
	typeFloat32 = 6
	typeBool    = 7
	typeString  = 8
	typeArray   = 9
)

// ggml tensor types.
const (
	tensorF32 = 0
	tensorF16 = 1
)

// fileTypeMostlyF16 is general.file_type for a model whose matrices are F16.
const fileTypeMostlyF16 = 1

const alignment = 32

// Llama is a llama-architecture model with random weights. Zero fields take the defaults
// noted; Vocab is required.
type Llama struct {
	Name    string // general.name ("kvgate-tiny")
	Layers  int    // 2
	Hidden  int    // embedding width (64)
	FFN     int    // feed-forward width (128)
	Heads   int    // attention heads (4)
	KVHeads int    // key/value heads (2)
	Context int    // training context length (8192)
	Seed    uint64 // the weights are a function of the seed
	Vocab   Vocab
}

func (m *Llama) defaults() error {
	if m.Name == "" {
		m.Name = "kvgate-tiny"
	}
	if m.Layers == 0 {
		m.Layers = 2
	}
	if m.Hidden == 0 {
		m.Hidden = 64
	}
	if m.FFN == 0 {
		m.FFN = 128
	}
	if m.Heads == 0 {
		m.Heads = 4
	}
	if m.KVHeads == 0 {
		m.KVHeads = 2
	}
	if m.Context == 0 {
		m.Context = 8192
	}
	switch {
	case len(m.Vocab.Tokens) == 0:
		return errors.New("gguftest: empty vocabulary")
	case len(m.Vocab.Types) != len(m.Vocab.Tokens):
		return fmt.Errorf("gguftest: %d token types for %d tokens", len(m.Vocab.Types), len(m.Vocab.Tokens))
	case m.Hidden%m.Heads != 0 || m.Heads%m.KVHeads != 0:
		return fmt.Errorf("gguftest: hidden %d, heads %d, kv heads %d do not divide", m.Hidden, m.Heads, m.KVHeads)
	}
	return nil
}

// WriteFile writes the model to path.
func (m Llama) WriteFile(path string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := m.WriteTo(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// WriteTo writes the model as a GGUF v3 file: the metadata llama.cpp's and Ollama's llama
// loaders read, F16 matrices drawn from N(0, 0.02²), F32 norms of ones, the output layer tied
// to the token embedding.
func (m Llama) WriteTo(w io.Writer) (int64, error) {
	if err := m.defaults(); err != nil {
		return 0, err
	}
	headDim := m.Hidden / m.Heads
	vocab := len(m.Vocab.Tokens)
	meta := []kv{
		{"general.architecture", str("llama")},
		{"general.name", str(m.Name)},
		{"general.file_type", u32(fileTypeMostlyF16)},
		{"general.alignment", u32(alignment)},
		{"llama.vocab_size", u32(uint32(vocab))},
		{"llama.context_length", u32(uint32(m.Context))},
		{"llama.embedding_length", u32(uint32(m.Hidden))},
		{"llama.block_count", u32(uint32(m.Layers))},
		{"llama.feed_forward_length", u32(uint32(m.FFN))},
		{"llama.attention.head_count", u32(uint32(m.Heads))},
		{"llama.attention.head_count_kv", u32(uint32(m.KVHeads))},
		{"llama.attention.layer_norm_rms_epsilon", f32(1e-6)},
		{"llama.rope.dimension_count", u32(uint32(headDim))},
		{"llama.rope.freq_base", f32(1e6)},
		{"tokenizer.ggml.model", str(m.Vocab.Model())},
		{"tokenizer.ggml.pre", str(m.Vocab.Pre)},
		{"tokenizer.ggml.tokens", strs(m.Vocab.Tokens)},
		{"tokenizer.ggml.token_type", i32s(m.Vocab.Types)},
		{"tokenizer.ggml.merges", strs(m.Vocab.Merges)},
		{"tokenizer.ggml.bos_token_id", u32(m.Vocab.BOS)},
		{"tokenizer.ggml.eos_token_id", u32(m.Vocab.EOS)},
		{"tokenizer.ggml.padding_token_id", u32(m.Vocab.BOS)},
		{"tokenizer.ggml.add_bos_token", boolean(false)},
	}
	// Tensor shapes are ggml's: the first dimension is the innermost (a [out, in] matrix of
	// PyTorch is ne = {in, out}).
	tensors := []tensor{{name: "token_embd.weight", dims: []uint64{uint64(m.Hidden), uint64(vocab)}, typ: tensorF16}}
	for l := range m.Layers {
		p := fmt.Sprintf("blk.%d.", l)
		h, f, kvw := uint64(m.Hidden), uint64(m.FFN), uint64(m.KVHeads*headDim)
		tensors = append(tensors,
			tensor{name: p + "attn_norm.weight", dims: []uint64{h}, typ: tensorF32},
			tensor{name: p + "attn_q.weight", dims: []uint64{h, h}, typ: tensorF16},
			tensor{name: p + "attn_k.weight", dims: []uint64{h, kvw}, typ: tensorF16},
			tensor{name: p + "attn_v.weight", dims: []uint64{h, kvw}, typ: tensorF16},
			tensor{name: p + "attn_output.weight", dims: []uint64{h, h}, typ: tensorF16},
			tensor{name: p + "ffn_norm.weight", dims: []uint64{h}, typ: tensorF32},
			tensor{name: p + "ffn_gate.weight", dims: []uint64{h, f}, typ: tensorF16},
			tensor{name: p + "ffn_up.weight", dims: []uint64{h, f}, typ: tensorF16},
			tensor{name: p + "ffn_down.weight", dims: []uint64{f, h}, typ: tensorF16},
		)
	}
	tensors = append(tensors, tensor{name: "output_norm.weight", dims: []uint64{uint64(m.Hidden)}, typ: tensorF32})

	cw := &countWriter{w: bufio.NewWriterSize(w, 1<<20)}
	e := &enc{w: cw}
	e.raw([]byte("GGUF"))
	e.u32(3)
	e.u64(uint64(len(tensors)))
	e.u64(uint64(len(meta)))
	for _, m := range meta {
		e.str(m.key)
		m.val(e)
	}
	var off uint64
	for i := range tensors {
		t := &tensors[i]
		t.offset = off
		off = align(off + t.bytes())
		e.str(t.name)
		e.u32(uint32(len(t.dims)))
		for _, d := range t.dims {
			e.u64(d)
		}
		e.u32(t.typ)
		e.u64(t.offset)
	}
	e.pad()
	rng := rand.New(rand.NewPCG(m.Seed, 0x6b766761746521))
	for _, t := range tensors {
		n := t.elements()
		switch t.typ {
		case tensorF32: // norms: ones
			for range n {
				e.u32(math.Float32bits(1))
			}
		case tensorF16:
			for range n {
				e.u16(f16(float32(rng.NormFloat64() * 0.02)))
			}
		}
		e.pad()
	}
	if e.err == nil {
		e.err = cw.w.(*bufio.Writer).Flush()
	}
	return cw.n, e.err
}

type kv struct {
	key string
	val func(*enc)
}

func str(s string) func(*enc) { return func(e *enc) { e.u32(typeString); e.str(s) } }
func u32(v uint32) func(*enc) { return func(e *enc) { e.u32(typeUint32); e.u32(v) } }
func f32(v float32) func(*enc) {
	return func(e *enc) { e.u32(typeFloat32); e.u32(math.Float32bits(v)) }
}
func boolean(v bool) func(*enc) {
	return func(e *enc) {
		e.u32(typeBool)
		if v {
			e.raw([]byte{1})
		} else {
			e.raw([]byte{0})
		}
	}
}
func strs(v []string) func(*enc) {
	return func(e *enc) {
		e.u32(typeArray)
		e.u32(typeString)
		e.u64(uint64(len(v)))
		for _, s := range v {
			e.str(s)
		}
	}
}
func i32s(v []int32) func(*enc) {
	return func(e *enc) {
		e.u32(typeArray)
		e.u32(typeInt32)
		e.u64(uint64(len(v)))
		for _, x := range v {
			e.u32(uint32(x))
		}
	}
}

type tensor struct {
	name   string
	dims   []uint64
	typ    uint32
	offset uint64
}

func (t tensor) elements() uint64 {
	n := uint64(1)
	for _, d := range t.dims {
		n *= d
	}
	return n
}

func (t tensor) bytes() uint64 {
	if t.typ == tensorF16 {
		return 2 * t.elements()
	}
	return 4 * t.elements()
}

func align(n uint64) uint64 { return (n + alignment - 1) / alignment * alignment }

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// enc writes little-endian GGUF values, keeping the first error.
type enc struct {
	w   *countWriter
	err error
	buf [8]byte
}

func (e *enc) raw(b []byte) {
	if e.err == nil {
		_, e.err = e.w.Write(b)
	}
}
func (e *enc) u16(v uint16) { binary.LittleEndian.PutUint16(e.buf[:2], v); e.raw(e.buf[:2]) }
func (e *enc) u32(v uint32) { binary.LittleEndian.PutUint32(e.buf[:4], v); e.raw(e.buf[:4]) }
func (e *enc) u64(v uint64) { binary.LittleEndian.PutUint64(e.buf[:8], v); e.raw(e.buf[:8]) }
func (e *enc) str(s string) { e.u64(uint64(len(s))); e.raw([]byte(s)) }

// pad writes zeros up to the next alignment boundary.
func (e *enc) pad() {
	var zeros [alignment]byte
	e.raw(zeros[:align(uint64(e.w.n))-uint64(e.w.n)])
}

// f16 converts to IEEE 754 half precision, rounding to nearest even; magnitudes below the
// smallest subnormal become zero and above the largest finite value infinity.
func f16(f float32) uint16 {
	b := math.Float32bits(f)
	sign := uint16(b>>16) & 0x8000
	exp := int(b>>23&0xff) - 127 + 15
	mant := b & 0x7fffff
	switch {
	case b&0x7fffffff == 0:
		return sign
	case exp >= 31:
		return sign | 0x7c00
	case exp <= 0: // subnormal half
		if exp < -10 {
			return sign
		}
		mant |= 0x800000
		shift := uint(14 - exp)
		h := uint16(mant >> shift)
		rem, half := mant&(1<<shift-1), uint32(1)<<(shift-1)
		if rem > half || rem == half && h&1 == 1 {
			h++
		}
		return sign | h
	}
	h := sign | uint16(exp)<<10 | uint16(mant>>13)
	if rem := mant & 0x1fff; rem > 0x1000 || rem == 0x1000 && h&1 == 1 {
		h++ // may carry into the exponent, which is the right rounding
	}
	return h
}
