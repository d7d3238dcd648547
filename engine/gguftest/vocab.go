package gguftest

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
)

// Token types of tokenizer.ggml.token_type (llama.cpp's llama_token_type).
const (
	TokenNormal      = 1
	TokenControl     = 3 // special added tokens: <|im_start|>
	TokenUserDefined = 4 // added tokens that are not special: <think>
)

// maxVocab bounds the ids a tokenizer.json may use (the largest real vocabularies hold
// about 260,000 tokens), so a stray id cannot make the table huge.
const maxVocab = 1 << 22

// Vocab is a byte-level BPE vocabulary as GGUF stores it (tokenizer.ggml.model "gpt2").
type Vocab struct {
	Tokens   []string // by id
	Types    []int32  // by id: TokenNormal, TokenControl or TokenUserDefined
	Merges   []string // "left right", by rank
	Pre      string   // tokenizer.ggml.pre, the pre-tokenizer's name ("qwen2")
	BOS, EOS uint32
}

// Model is tokenizer.ggml.model: "gpt2", llama.cpp's name for byte-level BPE.
func (Vocab) Model() string { return "gpt2" }

// tokenizerJSON is the part of a Hugging Face tokenizer.json a GGUF vocabulary needs.
type tokenizerJSON struct {
	Model struct {
		Type   string            `json:"type"`
		Vocab  map[string]int    `json:"vocab"`
		Merges []json.RawMessage `json:"merges"`
	} `json:"model"`
	AddedTokens []struct {
		ID      int    `json:"id"`
		Content string `json:"content"`
		Special bool   `json:"special"`
	} `json:"added_tokens"`
}

// Qwen3Vocab reads a Qwen2/Qwen3 tokenizer.json (gzipped when the name ends in .gz): its
// vocabulary, merges and added tokens, the pre-tokenizer "qwen2", BOS <|endoftext|> and EOS
// <|im_end|>.
func Qwen3Vocab(path string) (Vocab, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return Vocab{}, err
	}
	if strings.HasSuffix(path, ".gz") {
		zr, err := gzip.NewReader(bytes.NewReader(b))
		if err != nil {
			return Vocab{}, fmt.Errorf("%s: %w", path, err)
		}
		if b, err = io.ReadAll(zr); err != nil {
			return Vocab{}, fmt.Errorf("%s: %w", path, err)
		}
	}
	v, err := parseVocab(b)
	if err != nil {
		return Vocab{}, fmt.Errorf("%s: %w", path, err)
	}
	v.Pre = "qwen2"
	ids := map[string]uint32{}
	for i, t := range v.Tokens {
		ids[t] = uint32(i)
	}
	var okB, okE bool
	v.BOS, okB = ids["<|endoftext|>"]
	v.EOS, okE = ids["<|im_end|>"]
	if !okB || !okE {
		return Vocab{}, fmt.Errorf("%s: no <|endoftext|> or <|im_end|>: not a Qwen tokenizer", path)
	}
	return v, nil
}

func parseVocab(b []byte) (Vocab, error) {
	var tj tokenizerJSON
	if err := json.Unmarshal(b, &tj); err != nil {
		return Vocab{}, err
	}
	if tj.Model.Type != "BPE" {
		return Vocab{}, fmt.Errorf("model type %q, want BPE", tj.Model.Type)
	}
	n := 0
	for _, id := range tj.Model.Vocab {
		n = max(n, id+1)
	}
	for _, a := range tj.AddedTokens {
		n = max(n, a.ID+1)
	}
	if n > maxVocab {
		return Vocab{}, fmt.Errorf("token ids up to %d: more than %d tokens", n-1, maxVocab)
	}
	v := Vocab{Tokens: make([]string, n), Types: make([]int32, n)}
	for t, id := range tj.Model.Vocab {
		if id < 0 {
			return Vocab{}, fmt.Errorf("token %q has id %d", t, id)
		}
		v.Tokens[id], v.Types[id] = t, TokenNormal
	}
	for _, a := range tj.AddedTokens {
		if a.ID < 0 {
			return Vocab{}, fmt.Errorf("added token %q has id %d", a.Content, a.ID)
		}
		v.Tokens[a.ID], v.Types[a.ID] = a.Content, TokenUserDefined
		if a.Special {
			v.Types[a.ID] = TokenControl
		}
	}
	for i := range v.Tokens {
		if v.Types[i] == 0 { // a hole in the ids: an unused control token, as converters pad
			v.Tokens[i], v.Types[i] = fmt.Sprintf("[PAD%d]", i), TokenControl
		}
	}
	v.Merges = make([]string, 0, len(tj.Model.Merges))
	for _, raw := range tj.Model.Merges {
		var s string
		if err := json.Unmarshal(raw, &s); err == nil {
			v.Merges = append(v.Merges, s)
			continue
		}
		var pair [2]string
		if err := json.Unmarshal(raw, &pair); err != nil {
			return Vocab{}, fmt.Errorf("merge %s: neither \"a b\" nor [a, b]", raw)
		}
		v.Merges = append(v.Merges, pair[0]+" "+pair[1])
	}
	return v, nil
}
