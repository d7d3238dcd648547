package tokenizer

import (
	"encoding/json"
	"fmt"
	"strings"
)

// piece is a stretch of text on its way through pre-tokenization. first is set on the piece
// that starts the input (Metaspace's prepend_scheme "first" needs it).
type piece struct {
	text  string
	first bool
}

// preTokenizer splits buf[lo:] into words, appending them to buf; the words are
// out[newLo:]. Implementations are immutable and safe for concurrent use.
type preTokenizer interface {
	split(buf []piece, lo int) (out []piece, newLo int)
}

// parsePreTokenizer returns the pre-tokenizer of raw and whether its words are byte-level
// (the BPE model then works on bytes mapped through the GPT-2 alphabet).
func parsePreTokenizer(raw json.RawMessage) (preTokenizer, bool, error) {
	if isNull(raw) {
		return nil, false, nil
	}
	typ, err := typeOf(raw)
	if err != nil {
		return nil, false, fmt.Errorf("tokenizer: pre_tokenizer: %w", err)
	}
	switch typ {
	case "Sequence":
		var s struct {
			Pretokenizers []json.RawMessage `json:"pretokenizers"`
		}
		if err := json.Unmarshal(raw, &s); err != nil {
			return nil, false, fmt.Errorf("tokenizer: pre_tokenizer Sequence: %w", err)
		}
		var seq sequencePre
		byteLevel := false
		for i, r := range s.Pretokenizers {
			if byteLevel {
				return nil, false, fmt.Errorf("tokenizer: pre_tokenizer Sequence: ByteLevel must be the last step (step %d follows it)", i)
			}
			p, bl, err := parsePreTokenizer(r)
			if err != nil {
				return nil, false, err
			}
			byteLevel = bl
			if p != nil {
				seq = append(seq, p)
			}
		}
		if len(seq) == 1 {
			return seq[0], byteLevel, nil
		}
		return seq, byteLevel, nil
	case "Split":
		var s struct {
			Pattern  patternJSON `json:"pattern"`
			Behavior string      `json:"behavior"`
			Invert   bool        `json:"invert"`
		}
		if err := json.Unmarshal(raw, &s); err != nil {
			return nil, false, fmt.Errorf("tokenizer: pre_tokenizer Split: %w", err)
		}
		m, err := newMatcher(s.Pattern)
		if err != nil {
			return nil, false, fmt.Errorf("tokenizer: pre_tokenizer Split: %w", err)
		}
		beh, err := parseBehavior(s.Behavior)
		if err != nil {
			return nil, false, fmt.Errorf("tokenizer: pre_tokenizer Split: %w", err)
		}
		return &splitPre{m: m, behavior: beh, invert: s.Invert}, false, nil
	case "ByteLevel":
		var s struct {
			AddPrefixSpace bool  `json:"add_prefix_space"`
			UseRegex       *bool `json:"use_regex"`
		}
		if err := json.Unmarshal(raw, &s); err != nil {
			return nil, false, fmt.Errorf("tokenizer: pre_tokenizer ByteLevel: %w", err)
		}
		useRegex := s.UseRegex == nil || *s.UseRegex
		if !s.AddPrefixSpace && !useRegex {
			return nil, true, nil // only the byte mapping, which the BPE model does
		}
		p := &byteLevelPre{addPrefixSpace: s.AddPrefixSpace}
		if useRegex {
			p.m = gpt2Matcher
		}
		return p, true, nil
	case "Metaspace":
		var s struct {
			Replacement    string `json:"replacement"`
			PrependScheme  string `json:"prepend_scheme"`
			AddPrefixSpace *bool  `json:"add_prefix_space"`
			Split          *bool  `json:"split"`
		}
		if err := json.Unmarshal(raw, &s); err != nil {
			return nil, false, fmt.Errorf("tokenizer: pre_tokenizer Metaspace: %w", err)
		}
		p, err := newMetaspace(s.Replacement, s.PrependScheme, s.AddPrefixSpace, s.Split == nil || *s.Split)
		if err != nil {
			return nil, false, fmt.Errorf("tokenizer: pre_tokenizer Metaspace: %w", err)
		}
		return p, false, nil
	}
	return nil, false, fmt.Errorf("tokenizer: pre_tokenizer %q is not supported (supported: Sequence, Split, ByteLevel, Metaspace)", typ)
}

type sequencePre []preTokenizer

func (s sequencePre) split(buf []piece, lo int) ([]piece, int) {
	for _, p := range s {
		buf, lo = p.split(buf, lo)
	}
	return buf, lo
}

// splitBehavior is what Split does with the matched parts.
type splitBehavior int

const (
	behaviorRemoved splitBehavior = iota
	behaviorIsolated
	behaviorMergedWithPrevious
	behaviorMergedWithNext
	behaviorContiguous
)

func parseBehavior(s string) (splitBehavior, error) {
	switch s {
	case "Removed":
		return behaviorRemoved, nil
	case "Isolated":
		return behaviorIsolated, nil
	case "MergedWithPrevious":
		return behaviorMergedWithPrevious, nil
	case "MergedWithNext":
		return behaviorMergedWithNext, nil
	case "Contiguous":
		return behaviorContiguous, nil
	}
	return 0, fmt.Errorf("split behavior %q is not supported", s)
}

// splitPre is the Split pre-tokenizer: a regex or literal pattern and what to do with matches.
type splitPre struct {
	m        matcher
	behavior splitBehavior
	invert   bool
}

func (p *splitPre) split(buf []piece, lo int) ([]piece, int) {
	hi := len(buf)
	for i := lo; i < hi; i++ {
		buf = splitOne(buf, buf[i], p.m, p.behavior, p.invert)
	}
	return buf, hi
}

// splitOne appends the parts of in, split at the matches of m with behavior beh.
func splitOne(buf []piece, in piece, m matcher, beh splitBehavior, invert bool) []piece {
	s := in.text
	emit := func(a, b int) {
		if a < b {
			buf = append(buf, piece{text: s[a:b], first: in.first && a == 0})
		}
	}
	if beh == behaviorIsolated && !invert {
		// The hot path (GPT-style regexes): matches and the gaps between them are words.
		prev := 0
		m.find(s, func(a, b int) {
			emit(prev, a)
			emit(a, b)
			prev = b
		})
		emit(prev, len(s))
		return buf
	}
	// General path: walk (start, end, isMatch) spans.
	type span struct {
		a, b  int
		match bool
	}
	var spans []span
	prev := 0
	m.find(s, func(a, b int) {
		if prev < a {
			spans = append(spans, span{prev, a, invert})
		}
		spans = append(spans, span{a, b, !invert})
		prev = b
	})
	if prev < len(s) {
		spans = append(spans, span{prev, len(s), invert})
	}
	switch beh {
	case behaviorRemoved:
		for _, sp := range spans {
			if !sp.match {
				emit(sp.a, sp.b)
			}
		}
	case behaviorIsolated:
		for _, sp := range spans {
			emit(sp.a, sp.b)
		}
	case behaviorMergedWithPrevious:
		start := 0
		for _, sp := range spans {
			if sp.match {
				emit(start, sp.b)
				start = sp.b
			}
		}
		emit(start, len(s))
	case behaviorMergedWithNext:
		start := 0
		for _, sp := range spans {
			if sp.match {
				emit(start, sp.a)
				start = sp.a
			}
		}
		emit(start, len(s))
	case behaviorContiguous:
		start, inMatch := 0, false
		for _, sp := range spans {
			if sp.match != inMatch {
				emit(start, sp.a)
				start, inMatch = sp.a, sp.match
			}
		}
		emit(start, len(s))
	}
	return buf
}

// byteLevelPre is the ByteLevel pre-tokenizer's splitting part: an optional prefix space and
// the GPT-2 regex. The byte mapping itself happens in the BPE model.
type byteLevelPre struct {
	addPrefixSpace bool
	m              matcher // nil: no regex
}

func (p *byteLevelPre) split(buf []piece, lo int) ([]piece, int) {
	hi := len(buf)
	for i := lo; i < hi; i++ {
		in := buf[i]
		if p.addPrefixSpace && !strings.HasPrefix(in.text, " ") {
			in.text = " " + in.text
		}
		if p.m == nil {
			buf = append(buf, in)
			continue
		}
		buf = splitOne(buf, in, p.m, behaviorIsolated, false)
	}
	return buf, hi
}

// metaspacePre replaces spaces with the replacement character (usually U+2581), prepends it
// as the prepend scheme says, and splits before each replacement character.
type metaspacePre struct {
	repl    string
	prepend string // "always", "first", "never"
	splitOn bool
	m       matcher
}

func newMetaspace(repl, scheme string, addPrefixSpace *bool, split bool) (*metaspacePre, error) {
	if repl == "" {
		repl = "\u2581"
	}
	switch scheme {
	case "always", "first", "never":
	case "":
		scheme = "always"
		if addPrefixSpace != nil && !*addPrefixSpace {
			scheme = "never"
		}
	default:
		return nil, fmt.Errorf("prepend_scheme %q is not supported", scheme)
	}
	return &metaspacePre{repl: repl, prepend: scheme, splitOn: split, m: literalMatcher(repl)}, nil
}

func (p *metaspacePre) transform(in piece) piece {
	s := strings.ReplaceAll(in.text, " ", p.repl)
	switch p.prepend {
	case "always":
		if !strings.HasPrefix(s, p.repl) {
			s = p.repl + s
		}
	case "first":
		if in.first && !strings.HasPrefix(s, p.repl) {
			s = p.repl + s
		}
	}
	return piece{text: s, first: in.first}
}

func (p *metaspacePre) split(buf []piece, lo int) ([]piece, int) {
	hi := len(buf)
	for i := lo; i < hi; i++ {
		in := p.transform(buf[i])
		if !p.splitOn {
			buf = append(buf, in)
			continue
		}
		buf = splitOne(buf, in, p.m, behaviorMergedWithNext, false)
	}
	return buf, hi
}
