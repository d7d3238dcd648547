package tokenizer

import (
	"bytes"
	"encoding/json"
	"fmt"
)

// fileJSON is the part of tokenizer.json that kvgate reads.
type fileJSON struct {
	AddedTokens  []addedTokenJSON `json:"added_tokens"`
	Normalizer   json.RawMessage  `json:"normalizer"`
	PreTokenizer json.RawMessage  `json:"pre_tokenizer"`
	Decoder      json.RawMessage  `json:"decoder"`
	Model        modelJSON        `json:"model"`
}

type addedTokenJSON struct {
	ID         uint32 `json:"id"`
	Content    string `json:"content"`
	SingleWord bool   `json:"single_word"`
	LStrip     bool   `json:"lstrip"`
	RStrip     bool   `json:"rstrip"`
	Normalized bool   `json:"normalized"`
	Special    bool   `json:"special"`
}

type modelJSON struct {
	Type                    string      `json:"type"`
	Dropout                 *float64    `json:"dropout"`
	UnkToken                *string     `json:"unk_token"`
	ContinuingSubwordPrefix *string     `json:"continuing_subword_prefix"`
	EndOfWordSuffix         *string     `json:"end_of_word_suffix"`
	FuseUnk                 bool        `json:"fuse_unk"`
	ByteFallback            bool        `json:"byte_fallback"`
	IgnoreMerges            bool        `json:"ignore_merges"`
	Vocab                   *vocabTable `json:"-"` // parsed by parseVocabFrom
	Merges                  []byte      `json:"-"` // parsed by parseMergesInto
	hasMerges               bool
}

// splitTokenizerJSON scans tokenizer.json's top level and its model object, parsing vocab with
// the fast scanner and everything else with encoding/json.
func splitTokenizerJSON(data []byte) (*fileJSON, error) {
	f := &fileJSON{}
	s := &jsonScanner{data: data}
	hasModel := false
	err := s.object(func(k []byte) error {
		if string(k) == "model" {
			hasModel = true
			if err := parseModel(s, &f.Model); err != nil {
				return fmt.Errorf("model: %w", err)
			}
			return nil
		}
		v, err := s.skip()
		if err != nil {
			return err
		}
		switch string(k) {
		case "added_tokens":
			if err := json.Unmarshal(v, &f.AddedTokens); err != nil {
				return fmt.Errorf("added_tokens: %w", err)
			}
		case "normalizer":
			f.Normalizer = v
		case "pre_tokenizer":
			f.PreTokenizer = v
		case "decoder":
			f.Decoder = v
		}
		return nil
	})
	if err == nil && s.peek() != 0 {
		err = fmt.Errorf("%w: trailing data", errJSON)
	}
	if err != nil {
		return nil, fmt.Errorf("tokenizer: tokenizer.json: %w", err)
	}
	if !hasModel {
		return nil, fmt.Errorf("tokenizer: tokenizer.json has no model")
	}
	if f.Model.Vocab == nil {
		return nil, fmt.Errorf("tokenizer: tokenizer.json model has no vocab")
	}
	return f, nil
}

// parseModel reads the model object at s in one pass: vocab through the scanner, merges kept
// raw for newBPE, the small fields through encoding/json.
func parseModel(s *jsonScanner, m *modelJSON) error {
	small := []byte{'{'}
	err := s.object(func(k []byte) error {
		if string(k) == "vocab" {
			v, err := parseVocabFrom(s)
			if err != nil {
				return fmt.Errorf("vocab: %w", err)
			}
			m.Vocab = v
			return nil
		}
		v, err := s.skip()
		if err != nil {
			return err
		}
		if string(k) == "merges" {
			m.Merges, m.hasMerges = v, true
			return nil
		}
		if len(small) > 1 {
			small = append(small, ',')
		}
		kq, _ := json.Marshal(string(k))
		small = append(append(append(small, kq...), ':'), v...)
		return nil
	})
	if err != nil {
		return err
	}
	vocab, merges, hasMerges := m.Vocab, m.Merges, m.hasMerges
	if err := json.Unmarshal(append(small, '}'), m); err != nil {
		return err
	}
	m.Vocab, m.Merges, m.hasMerges = vocab, merges, hasMerges
	return nil
}

// build parses tokenizer.json and assembles the pipeline.
func build(data []byte) (*Tokenizer, error) {
	f, err := splitTokenizerJSON(data)
	if err != nil {
		return nil, err
	}
	m := &f.Model
	switch m.Type {
	case "BPE":
	case "":
		if !m.hasMerges {
			return nil, fmt.Errorf("tokenizer: model without type or merges is not supported (only BPE)")
		}
	default:
		return nil, fmt.Errorf("tokenizer: model type %q is not supported (only BPE)", m.Type)
	}
	if m.Dropout != nil && *m.Dropout > 0 {
		return nil, fmt.Errorf("tokenizer: BPE dropout %v is not supported (non-deterministic)", *m.Dropout)
	}
	if m.ContinuingSubwordPrefix != nil && *m.ContinuingSubwordPrefix != "" {
		return nil, fmt.Errorf("tokenizer: BPE continuing_subword_prefix %q is not supported", *m.ContinuingSubwordPrefix)
	}
	if m.EndOfWordSuffix != nil && *m.EndOfWordSuffix != "" {
		return nil, fmt.Errorf("tokenizer: BPE end_of_word_suffix %q is not supported", *m.EndOfWordSuffix)
	}
	if m.Vocab.len() == 0 {
		return nil, fmt.Errorf("tokenizer: BPE model has an empty vocab")
	}
	t := &Tokenizer{vocab: m.Vocab, cache: newWordCache(1 << 16), segs: newSegmentCache(segCacheBytes)}
	m.Vocab.each(func(_ tokSpan, id uint32) { t.maxID = max(t.maxID, id) })
	for _, a := range f.AddedTokens {
		if a.ID > t.maxID {
			t.maxID = a.ID
		}
	}
	if limit := 2*(m.Vocab.len()+len(f.AddedTokens)) + 1024; int(t.maxID) > limit {
		return nil, fmt.Errorf("tokenizer: token id %d is too large for %d tokens", t.maxID, m.Vocab.len()+len(f.AddedTokens))
	}
	t.names = newTokenNames(m.Vocab, t.maxID)
	t.special = make([]bool, t.maxID+1)
	if t.norm, err = parseNormalizer(f.Normalizer); err != nil {
		return nil, err
	}
	byteLevel := false
	if t.pre, byteLevel, err = parsePreTokenizer(f.PreTokenizer); err != nil {
		return nil, err
	}
	if t.dec, err = parseDecoder(f.Decoder); err != nil {
		return nil, err
	}
	if t.bpe, err = newBPE(m, byteLevel); err != nil {
		return nil, err
	}
	t.added = newAddedVocab()
	var ids []uint32
	var contents []string
	for _, a := range f.AddedTokens {
		if a.Content == "" {
			continue
		}
		ids, contents = append(ids, a.ID), append(contents, a.Content)
		t.special[a.ID] = true
		t.added.add(a, t.norm)
	}
	t.names.set(ids, contents)
	t.added.finish()
	return t, nil
}

// typeOf reads the "type" field of a component.
func typeOf(raw json.RawMessage) (string, error) {
	var h struct {
		Type string `json:"type"`
	}
	if err := json.Unmarshal(raw, &h); err != nil {
		return "", err
	}
	return h.Type, nil
}

func isNull(raw json.RawMessage) bool {
	raw = bytes.TrimSpace(raw)
	return len(raw) == 0 || string(raw) == "null"
}

// patternJSON is the {"String": "..."} or {"Regex": "..."} form of Split and Replace.
type patternJSON struct {
	String *string `json:"String"`
	Regex  *string `json:"Regex"`
}
