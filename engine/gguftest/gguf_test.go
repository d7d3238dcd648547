package gguftest

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"math"
	"testing"
)

const qwen3Tokenizer = "../../tokenizer/models/qwen3/tokenizer.json.gz"

// reader is an independent GGUF v3 reader: enough to check what WriteTo wrote.
type reader struct {
	r   *bytes.Reader
	err error
}

func (d *reader) u32() uint32 {
	var v uint32
	if d.err == nil {
		d.err = binary.Read(d.r, binary.LittleEndian, &v)
	}
	return v
}

func (d *reader) u64() uint64 {
	var v uint64
	if d.err == nil {
		d.err = binary.Read(d.r, binary.LittleEndian, &v)
	}
	return v
}

func (d *reader) str() string {
	n := d.u64()
	if d.err != nil || n > uint64(d.r.Len()) {
		d.err = fmt.Errorf("string of %d bytes", n)
		return ""
	}
	b := make([]byte, n)
	_, d.err = io.ReadFull(d.r, b)
	return string(b)
}

func (d *reader) value(typ uint32) any {
	switch typ {
	case typeUint32:
		return d.u32()
	case typeInt32:
		return int32(d.u32())
	case typeFloat32:
		return math.Float32frombits(d.u32())
	case typeBool:
		b, err := d.r.ReadByte()
		if err != nil {
			d.err = err
		}
		return b == 1
	case typeString:
		return d.str()
	case typeArray:
		et, n := d.u32(), d.u64()
		out := make([]any, 0, min(n, 1<<20))
		for range n {
			out = append(out, d.value(et))
		}
		return out
	}
	d.err = fmt.Errorf("value type %d", typ)
	return nil
}

type readTensor struct {
	dims   []uint64
	typ    uint32
	offset uint64
}

func read(t *testing.T, b []byte) (map[string]any, map[string]readTensor, int) {
	t.Helper()
	d := &reader{r: bytes.NewReader(b)}
	magic := make([]byte, 4)
	io.ReadFull(d.r, magic)
	if string(magic) != "GGUF" || d.u32() != 3 {
		t.Fatalf("not a GGUF v3 file: %q", magic)
	}
	nt, nkv := d.u64(), d.u64()
	meta := map[string]any{}
	for range nkv {
		k := d.str()
		meta[k] = d.value(d.u32())
	}
	tensors := map[string]readTensor{}
	for range nt {
		name := d.str()
		rt := readTensor{dims: make([]uint64, d.u32())}
		for i := range rt.dims {
			rt.dims[i] = d.u64()
		}
		rt.typ, rt.offset = d.u32(), d.u64()
		tensors[name] = rt
	}
	if d.err != nil {
		t.Fatal(d.err)
	}
	return meta, tensors, len(b) - d.r.Len()
}

func TestWriteToLayout(t *testing.T) {
	v := Vocab{
		Tokens: []string{"a", "b", "ab", "<|endoftext|>", "<|im_end|>"},
		Types:  []int32{TokenNormal, TokenNormal, TokenNormal, TokenControl, TokenControl},
		Merges: []string{"a b"}, Pre: "qwen2", BOS: 3, EOS: 4,
	}
	var buf bytes.Buffer
	n, err := Llama{Vocab: v, Seed: 1}.WriteTo(&buf)
	if err != nil {
		t.Fatal(err)
	}
	if n != int64(buf.Len()) {
		t.Fatalf("WriteTo says %d bytes, wrote %d", n, buf.Len())
	}
	meta, tensors, header := read(t, buf.Bytes())
	for k, want := range map[string]any{
		"general.architecture": "llama", "llama.block_count": uint32(2), "llama.embedding_length": uint32(64),
		"llama.attention.head_count_kv": uint32(2), "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "qwen2",
		"tokenizer.ggml.eos_token_id": uint32(4), "tokenizer.ggml.add_bos_token": false, "llama.vocab_size": uint32(5),
	} {
		if meta[k] != want {
			t.Errorf("%s = %v, want %v", k, meta[k], want)
		}
	}
	if toks := meta["tokenizer.ggml.tokens"].([]any); len(toks) != 5 || toks[2] != "ab" {
		t.Errorf("tokens %v", toks)
	}
	if len(tensors) != 2+2*9 {
		t.Fatalf("%d tensors, want 20", len(tensors))
	}
	emb := tensors["token_embd.weight"]
	if emb.typ != tensorF16 || emb.dims[0] != 64 || emb.dims[1] != 5 {
		t.Fatalf("token_embd %+v", emb)
	}
	if k := tensors["blk.1.attn_k.weight"]; k.dims[0] != 64 || k.dims[1] != 32 {
		t.Fatalf("attn_k %+v (2 kv heads of 16)", k)
	}
	// Data starts at the aligned end of the header; every tensor is aligned and within the file.
	data := align(uint64(header))
	for name, rt := range tensors {
		end := data + rt.offset + tensor{dims: rt.dims, typ: rt.typ}.bytes()
		if rt.offset%alignment != 0 || end > uint64(buf.Len()) {
			t.Errorf("%s at %d..%d of %d", name, data+rt.offset, end, buf.Len())
		}
	}
	norm := tensors["output_norm.weight"]
	if got := math.Float32frombits(binary.LittleEndian.Uint32(buf.Bytes()[data+norm.offset:])); got != 1 {
		t.Errorf("output_norm[0] = %v, want 1", got)
	}
	var again bytes.Buffer
	Llama{Vocab: v, Seed: 1}.WriteTo(&again)
	if !bytes.Equal(buf.Bytes(), again.Bytes()) {
		t.Error("the same seed wrote different files")
	}
}

func TestQwen3Vocab(t *testing.T) {
	v, err := Qwen3Vocab(qwen3Tokenizer)
	if err != nil {
		t.Fatal(err)
	}
	if len(v.Tokens) != 151669 || len(v.Merges) < 150000 {
		t.Fatalf("%d tokens, %d merges", len(v.Tokens), len(v.Merges))
	}
	for id, want := range map[int]struct {
		tok string
		typ int32
	}{
		151644: {"<|im_start|>", TokenControl}, 151645: {"<|im_end|>", TokenControl},
		151667: {"<think>", TokenUserDefined}, 9707: {"Hello", TokenNormal},
	} {
		if v.Tokens[id] != want.tok || v.Types[id] != want.typ {
			t.Errorf("token %d = %q type %d, want %q type %d", id, v.Tokens[id], v.Types[id], want.tok, want.typ)
		}
	}
	if v.BOS != 151643 || v.EOS != 151645 {
		t.Errorf("BOS %d EOS %d", v.BOS, v.EOS)
	}
	var buf bytes.Buffer
	if _, err := (Llama{Vocab: v}).WriteTo(&buf); err != nil {
		t.Fatal(err)
	}
	if mib := float64(buf.Len()) / (1 << 20); mib < 20 || mib > 30 {
		t.Errorf("model is %.1f MiB, want about 24", mib)
	}
}

func TestVocabRefuses(t *testing.T) {
	for name, js := range map[string]string{
		"not BPE":      `{"model":{"type":"Unigram","vocab":{}}}`,
		"bad merge":    `{"model":{"type":"BPE","vocab":{"a":0},"merges":[7]}}`,
		"negative id":  `{"model":{"type":"BPE","vocab":{"a":-1}}}`,
		"not JSON":     `{`,
		"huge id":      `{"model":{"type":"BPE","vocab":{"a":2000000000}}}`,
		"added bad id": `{"model":{"type":"BPE","vocab":{"a":0}},"added_tokens":[{"id":-3,"content":"x"}]}`,
	} {
		if _, err := parseVocab([]byte(js)); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if _, err := (Llama{}).WriteTo(io.Discard); err == nil {
		t.Error("a model without a vocabulary was written")
	}
}

func TestF16(t *testing.T) {
	for _, tc := range []struct {
		f    float32
		want uint16
	}{
		{0, 0}, {1, 0x3c00}, {-2, 0xc000}, {0.5, 0x3800}, {65504, 0x7bff}, {1e6, 0x7c00},
		{float32(math.Ldexp(1, -14)), 0x0400}, {float32(math.Ldexp(1, -24)), 0x0001}, {1e-9, 0},
		{1 + float32(math.Ldexp(1, -11)), 0x3c00}, // halfway: ties to even
		{1 + 3*float32(math.Ldexp(1, -11)), 0x3c02},
		{0.1, 0x2e66},
	} {
		if got := f16(tc.f); got != tc.want {
			t.Errorf("f16(%v) = %#04x, want %#04x", tc.f, got, tc.want)
		}
	}
}

// FuzzParseVocab: any tokenizer.json is refused or read into a whole vocabulary (a token and a
// type for every id), never a panic or an unbounded table.
func FuzzParseVocab(f *testing.F) {
	f.Add([]byte(`{"model":{"type":"BPE","vocab":{"a":0,"b":1,"ab":2},"merges":["a b"]},"added_tokens":[{"id":3,"content":"<s>","special":true}]}`))
	f.Add([]byte(`{"model":{"type":"BPE","vocab":{"a":0,"b":5},"merges":[["a","b"]]}}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		v, err := parseVocab(b)
		if err != nil {
			return
		}
		if len(v.Tokens) != len(v.Types) || len(v.Tokens) > maxVocab {
			t.Fatalf("%d tokens, %d types", len(v.Tokens), len(v.Types))
		}
		for i, typ := range v.Types {
			if typ == 0 {
				t.Fatalf("token %d (%q) has no type", i, v.Tokens[i])
			}
		}
	})
}
