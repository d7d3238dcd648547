// Package tokenizer loads Hugging Face tokenizer.json files (BPE) and chat templates, and turns
// text and chat conversations into the exact token ids an engine computes.
// In a request's path it owns R3 (chat template and token ids); it owns no step of a KV event.
package tokenizer

import (
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"unicode/utf8"
)

// Tokenizer encodes text to token ids and back, and renders chat templates. It is immutable
// after Load and safe for concurrent use; its only mutable parts are internal, bounded,
// concurrency-safe caches: BPE results per pre-tokenized word, and ids per stretch of text
// between added tokens (so a chat turn costs its new text).
type Tokenizer struct {
	vocab   *vocabTable // model vocabulary, token -> id
	names   tokenNames  // id -> token text (model vocab and added tokens); "" where unused
	special []bool      // id -> is an added token

	norm     normalizer   // nil: none
	pre      preTokenizer // nil: the whole segment is one word
	bpe      *bpe
	added    *addedVocab
	dec      decoder // nil: tokens are concatenated
	byteDec  bool    // the decoder maps byte-level characters back to bytes
	maxID    uint32
	cache    *wordCache
	segs     *segmentCache
	scratch  sync.Pool // *encodeState
	tmpl     *chatTemplates
	bosToken string
	eosToken string
}

// encodeState is the per-call scratch space, reused through a sync.Pool.
type encodeState struct {
	pieces []piece
	buf    []byte
	sym    []symbol
}

// Load reads dir/tokenizer.json (or dir/tokenizer.json.gz) and, when present,
// dir/tokenizer_config.json for the chat template, bos/eos tokens and added tokens.
func Load(dir string) (*Tokenizer, error) {
	data, err := readMaybeGzip(filepath.Join(dir, "tokenizer.json"))
	if err != nil {
		return nil, err
	}
	cfg, err := os.ReadFile(filepath.Join(dir, "tokenizer_config.json"))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("tokenizer: %w", err)
	}
	return FromBytes(data, cfg)
}

// readMaybeGzip reads path, or path+".gz" gunzipped when path does not exist.
func readMaybeGzip(path string) ([]byte, error) {
	data, err := os.ReadFile(path)
	if err == nil {
		return data, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("tokenizer: %w", err)
	}
	f, gzErr := os.Open(path + ".gz")
	if gzErr != nil {
		return nil, fmt.Errorf("tokenizer: no tokenizer.json or tokenizer.json.gz: %w", err)
	}
	defer f.Close()
	return gunzip(f)
}

func gunzip(r io.Reader) ([]byte, error) {
	zr, err := gzip.NewReader(r)
	if err != nil {
		return nil, fmt.Errorf("tokenizer: tokenizer.json.gz: %w", err)
	}
	data, err := io.ReadAll(zr)
	if err != nil {
		return nil, fmt.Errorf("tokenizer: tokenizer.json.gz: %w", err)
	}
	return data, nil
}

// FromBytes builds a Tokenizer from the contents of tokenizer.json and (optional, may be nil)
// tokenizer_config.json.
func FromBytes(tokenizerJSON, configJSON []byte) (*Tokenizer, error) {
	t, err := build(tokenizerJSON)
	if err != nil {
		return nil, err
	}
	if len(configJSON) > 0 {
		if err := t.applyConfig(configJSON); err != nil {
			return nil, err
		}
	}
	return t, nil
}

// VocabSize is the number of ids the tokenizer can produce: the largest id plus one, added
// tokens included.
func (t *Tokenizer) VocabSize() int { return int(t.maxID) + 1 }

// IDToken returns the token text of id (byte-level characters as stored in tokenizer.json) and
// whether id exists.
func (t *Tokenizer) IDToken(id uint32) (string, bool) {
	s := t.names.get(id)
	return s, s != ""
}

// IsAdded reports whether id is an added token (special tokens such as <|im_end|> and the
// other entries of added_tokens).
func (t *Tokenizer) IsAdded(id uint32) bool { return int(id) < len(t.special) && t.special[id] }

// BOSToken returns tokenizer_config.json's bos_token ("" if unset).
func (t *Tokenizer) BOSToken() string { return t.bosToken }

// EOSToken returns tokenizer_config.json's eos_token ("" if unset).
func (t *Tokenizer) EOSToken() string { return t.eosToken }

// TokenID returns the id of a token (added token content or vocabulary entry).
func (t *Tokenizer) TokenID(tok string) (uint32, bool) {
	if id, ok := t.added.byContent[tok]; ok {
		return id, true
	}
	return t.vocab.get(tok)
}

// Encode returns the ids of text without adding special tokens; added and special tokens
// written in text (such as <|im_start|>) are recognised. Invalid UTF-8 bytes are treated as
// U+FFFD.
func (t *Tokenizer) Encode(text string) []uint32 {
	return t.AppendEncode(nil, text)
}

// AppendEncode appends the ids of text (see Encode) to dst and returns the extended slice.
func (t *Tokenizer) AppendEncode(dst []uint32, text string) []uint32 {
	return t.appendEncode(dst, text, t.segs)
}

// appendEncode is AppendEncode through segs, or without a segment cache when segs is nil.
func (t *Tokenizer) appendEncode(dst []uint32, text string, segs *segmentCache) []uint32 {
	if text == "" {
		return dst
	}
	if !utf8.ValidString(text) {
		text = sanitizeUTF8(text)
	}
	if dst == nil {
		dst = make([]uint32, 0, len(text)/3+8) // about 4 bytes a token in English prose
	}
	st, _ := t.scratch.Get().(*encodeState)
	if st == nil {
		st = &encodeState{}
	}
	defer t.scratch.Put(st)
	t.added.split(text, t.norm, func(seg string, id uint32, isToken bool, first bool) {
		if isToken {
			dst = append(dst, id)
			return
		}
		if segs == nil || !segs.cacheable(seg) {
			dst = t.encodeSegment(dst, seg, first, st)
			return
		}
		k := segs.hash(seg, first)
		if d, ok := segs.appendTo(dst, k); ok {
			dst = d
			return
		}
		start := len(dst)
		dst = t.encodeSegment(dst, seg, first, st)
		segs.put(k, dst[start:])
	})
	return dst
}

// encodeSegment normalizes (already done by the caller when the tokenizer has normalized added
// tokens), pre-tokenizes and BPE-encodes one stretch of text that holds no added token.
func (t *Tokenizer) encodeSegment(dst []uint32, seg string, first bool, st *encodeState) []uint32 {
	st.pieces = append(st.pieces[:0], piece{text: seg, first: first})
	lo := 0
	if t.pre != nil {
		st.pieces, lo = t.pre.split(st.pieces, 0)
	}
	for _, p := range st.pieces[lo:] {
		if p.text == "" {
			continue
		}
		dst = t.encodeWord(dst, p.text, st)
	}
	clear(st.pieces) // drop references to the caller's text
	return dst
}

// encodeWord BPE-encodes one pre-tokenized word, through the cache.
func (t *Tokenizer) encodeWord(dst []uint32, w string, st *encodeState) []uint32 {
	if ids, ok := t.cache.get(w); ok {
		return append(dst, ids...)
	}
	start := len(dst)
	dst = t.bpe.encode(dst, w, st)
	t.cache.put(w, dst[start:])
	return dst
}

// sanitizeUTF8 replaces every invalid byte of s with U+FFFD.
func sanitizeUTF8(s string) string {
	b := make([]byte, 0, len(s)+8)
	for i := 0; i < len(s); {
		r, n := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && n == 1 {
			b = utf8.AppendRune(b, utf8.RuneError)
		} else {
			b = append(b, s[i:i+n]...)
		}
		i += n
	}
	return string(b)
}

// Decode returns the text of ids as Hugging Face's decode(skip_special_tokens=False) does:
// every token, added tokens included, goes through the tokenizer's decoder. Unknown ids are
// skipped.
func (t *Tokenizer) Decode(ids []uint32) string {
	toks := make([]string, 0, len(ids))
	for _, id := range ids {
		if s := t.names.get(id); s != "" {
			toks = append(toks, s)
		}
	}
	return t.decodeTokens(toks)
}

func (t *Tokenizer) decodeTokens(toks []string) string {
	if t.dec == nil {
		n := 0
		for _, s := range toks {
			n += len(s)
		}
		b := make([]byte, 0, n)
		for _, s := range toks {
			b = append(b, s...)
		}
		return string(b)
	}
	out := t.dec.decode(toks)
	n := 0
	for _, s := range out {
		n += len(s)
	}
	b := make([]byte, 0, n)
	for _, s := range out {
		b = append(b, s...)
	}
	return string(b)
}
