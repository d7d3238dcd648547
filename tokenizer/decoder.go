package tokenizer

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"
)

// decoder turns a run of tokens back into text pieces, as Hugging Face's decode_chain does.
// It may modify toks in place.
type decoder interface {
	decode(toks []string) []string
}

func parseDecoder(raw json.RawMessage) (decoder, error) {
	if isNull(raw) {
		return nil, nil
	}
	typ, err := typeOf(raw)
	if err != nil {
		return nil, fmt.Errorf("tokenizer: decoder: %w", err)
	}
	switch typ {
	case "ByteLevel":
		return byteLevelDec{}, nil
	case "Metaspace":
		var s struct {
			Replacement    string `json:"replacement"`
			PrependScheme  string `json:"prepend_scheme"`
			AddPrefixSpace *bool  `json:"add_prefix_space"`
		}
		if err := json.Unmarshal(raw, &s); err != nil {
			return nil, fmt.Errorf("tokenizer: decoder Metaspace: %w", err)
		}
		m, err := newMetaspace(s.Replacement, s.PrependScheme, s.AddPrefixSpace, true)
		if err != nil {
			return nil, fmt.Errorf("tokenizer: decoder Metaspace: %w", err)
		}
		return metaspaceDec{repl: m.repl, stripFirst: m.prepend != "never"}, nil
	case "ByteFallback":
		return byteFallbackDec{}, nil
	case "Fuse":
		return fuseDec{}, nil
	case "Strip":
		var s struct {
			Content string `json:"content"`
			Start   int    `json:"start"`
			Stop    int    `json:"stop"`
		}
		if err := json.Unmarshal(raw, &s); err != nil {
			return nil, fmt.Errorf("tokenizer: decoder Strip: %w", err)
		}
		c, n := utf8.DecodeRuneInString(s.Content)
		if n == 0 || n != len(s.Content) || s.Start < 0 || s.Stop < 0 {
			return nil, fmt.Errorf("tokenizer: decoder Strip: content must be one character and start/stop >= 0")
		}
		return stripDec{c: c, start: s.Start, stop: s.Stop}, nil
	case "Replace":
		var s struct {
			Pattern patternJSON `json:"pattern"`
			Content string      `json:"content"`
		}
		if err := json.Unmarshal(raw, &s); err != nil {
			return nil, fmt.Errorf("tokenizer: decoder Replace: %w", err)
		}
		m, err := newMatcher(s.Pattern)
		if err != nil {
			return nil, fmt.Errorf("tokenizer: decoder Replace: %w", err)
		}
		return replaceDec{m: m, content: s.Content}, nil
	case "Sequence":
		var s struct {
			Decoders []json.RawMessage `json:"decoders"`
		}
		if err := json.Unmarshal(raw, &s); err != nil {
			return nil, fmt.Errorf("tokenizer: decoder Sequence: %w", err)
		}
		var seq sequenceDec
		for _, r := range s.Decoders {
			d, err := parseDecoder(r)
			if err != nil {
				return nil, err
			}
			if d != nil {
				seq = append(seq, d)
			}
		}
		return seq, nil
	}
	return nil, fmt.Errorf("tokenizer: decoder %q is not supported (supported: ByteLevel, Metaspace, ByteFallback, Fuse, Strip, Replace, Sequence)", typ)
}

type sequenceDec []decoder

func (s sequenceDec) decode(toks []string) []string {
	for _, d := range s {
		toks = d.decode(toks)
	}
	return toks
}

// byteLevelDec maps GPT-2 byte characters back to bytes and joins the tokens; invalid UTF-8
// becomes U+FFFD.
type byteLevelDec struct{}

func (byteLevelDec) decode(toks []string) []string {
	var b []byte
	for _, t := range toks {
		// A token with a character outside the byte alphabet (an added token such as
		// "<｜end▁of▁sentence｜>") contributes its own UTF-8 bytes, as in Hugging Face.
		n := len(b)
		var ok bool
		if b, ok = fromByteLevel(b, t); !ok {
			b = append(b[:n], t...)
		}
	}
	return []string{strings.ToValidUTF8(string(b), "\uFFFD")}
}

type metaspaceDec struct {
	repl       string
	stripFirst bool
}

func (m metaspaceDec) decode(toks []string) []string {
	for i, t := range toks {
		t = strings.ReplaceAll(t, m.repl, " ")
		if i == 0 && m.stripFirst {
			t = strings.TrimPrefix(t, " ")
		}
		toks[i] = t
	}
	return toks
}

// byteFallbackDec turns runs of <0xXX> tokens into the bytes they stand for.
type byteFallbackDec struct{}

func (byteFallbackDec) decode(toks []string) []string {
	out := toks[:0:0]
	var pending []byte
	flush := func() {
		if len(pending) == 0 {
			return
		}
		if utf8.Valid(pending) {
			out = append(out, string(pending))
		} else {
			for range pending {
				out = append(out, "\uFFFD")
			}
		}
		pending = pending[:0]
	}
	for _, t := range toks {
		if len(t) == 6 && strings.HasPrefix(t, "<0x") && t[5] == '>' {
			if v, err := strconv.ParseUint(t[3:5], 16, 8); err == nil {
				pending = append(pending, byte(v))
				continue
			}
		}
		flush()
		out = append(out, t)
	}
	flush()
	return out
}

type fuseDec struct{}

func (fuseDec) decode(toks []string) []string { return []string{strings.Join(toks, "")} }

// stripDec removes up to start leading and stop trailing c characters from each token.
type stripDec struct {
	c           rune
	start, stop int
}

func (s stripDec) decode(toks []string) []string {
	for i, t := range toks {
		for k := 0; k < s.start; k++ {
			r, n := utf8.DecodeRuneInString(t)
			if n == 0 || r != s.c {
				break
			}
			t = t[n:]
		}
		for k := 0; k < s.stop; k++ {
			r, n := utf8.DecodeLastRuneInString(t)
			if n == 0 || r != s.c {
				break
			}
			t = t[:len(t)-n]
		}
		toks[i] = t
	}
	return toks
}

type replaceDec struct {
	m       matcher
	content string
}

func (r replaceDec) decode(toks []string) []string {
	for i, t := range toks {
		toks[i] = replaceAll(t, r.m, r.content)
	}
	return toks
}
