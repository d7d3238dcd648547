package tokenizer

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
)

// A small JSON scanner for the large parts of tokenizer.json (vocab and merges, over 300,000
// strings for current models): encoding/json with reflection takes over a second for them,
// this takes a few tens of milliseconds. Small components still go through encoding/json.

var errJSON = errors.New("malformed JSON")

// jsonScanner walks a JSON document by byte offset.
type jsonScanner struct {
	data []byte
	pos  int
}

func (s *jsonScanner) ws() {
	for s.pos < len(s.data) {
		switch s.data[s.pos] {
		case ' ', '\t', '\n', '\r':
			s.pos++
		default:
			return
		}
	}
}

// peek returns the next non-space byte (0 at the end).
func (s *jsonScanner) peek() byte {
	s.ws()
	if s.pos >= len(s.data) {
		return 0
	}
	return s.data[s.pos]
}

func (s *jsonScanner) expect(c byte) error {
	if s.peek() != c {
		return fmt.Errorf("%w: want %q at offset %d", errJSON, c, s.pos)
	}
	s.pos++
	return nil
}

// rawString returns the raw bytes of the string at pos (between the quotes, escapes
// untouched) and whether it holds escapes.
func (s *jsonScanner) rawString() ([]byte, bool, error) {
	if s.peek() != '"' {
		return nil, false, fmt.Errorf("%w: want a string at offset %d", errJSON, s.pos)
	}
	start := s.pos + 1
	for i := start; ; {
		j := bytes.IndexByte(s.data[i:], '"')
		if j < 0 {
			return nil, false, fmt.Errorf("%w: unterminated string", errJSON)
		}
		q := i + j
		n := 0 // backslashes right before the quote: an odd count escapes it
		for k := q - 1; k >= start && s.data[k] == '\\'; k-- {
			n++
		}
		if n%2 == 0 {
			s.pos = q + 1
			return s.data[start:q], bytes.IndexByte(s.data[start:q], '\\') >= 0, nil
		}
		i = q + 1
	}
}

// str reads a string, decoding escapes into buf's storage when needed; the result is only
// valid until the next call when it aliases buf.
func (s *jsonScanner) str(buf *[]byte) ([]byte, error) {
	start := s.pos
	raw, esc, err := s.rawString()
	if err != nil || !esc {
		return raw, err
	}
	var v string
	if err := json.Unmarshal(s.data[start:s.pos], &v); err != nil {
		return nil, fmt.Errorf("%w: %v", errJSON, err)
	}
	*buf = append((*buf)[:0], v...)
	return *buf, nil
}

// skip moves past one JSON value without decoding it and returns its raw bytes.
func (s *jsonScanner) skip() ([]byte, error) {
	s.ws()
	start := s.pos
	depth := 0
	for s.pos < len(s.data) {
		switch c := s.data[s.pos]; c {
		case '"':
			if _, _, err := s.rawString(); err != nil {
				return nil, err
			}
		case '{', '[':
			depth++
			s.pos++
		case '}', ']':
			if depth == 0 { // the end of the enclosing container ends a literal
				if s.pos == start {
					return nil, fmt.Errorf("%w: unbalanced %q at offset %d", errJSON, c, s.pos)
				}
				return s.data[start:s.pos], nil
			}
			depth--
			s.pos++
		case ',', ':', ' ', '\t', '\n', '\r':
			if depth == 0 {
				if s.pos == start {
					return nil, fmt.Errorf("%w: missing value at offset %d", errJSON, s.pos)
				}
				return s.data[start:s.pos], nil
			}
			s.pos++
		default:
			s.pos++
		}
		if depth == 0 && s.pos > start && (s.data[s.pos-1] == '"' || s.data[s.pos-1] == '}' || s.data[s.pos-1] == ']') {
			return s.data[start:s.pos], nil
		}
	}
	if depth != 0 || s.pos == start {
		return nil, fmt.Errorf("%w: unexpected end", errJSON)
	}
	return s.data[start:s.pos], nil
}

// object calls fn for each key of the object at pos; fn must consume the value.
func (s *jsonScanner) object(fn func(key []byte) error) error {
	if err := s.expect('{'); err != nil {
		return err
	}
	if s.peek() == '}' {
		s.pos++
		return nil
	}
	var kb []byte
	for {
		k, err := s.str(&kb)
		if err != nil {
			return err
		}
		if err := s.expect(':'); err != nil {
			return err
		}
		if err := fn(k); err != nil {
			return err
		}
		switch s.peek() {
		case ',':
			s.pos++
		case '}':
			s.pos++
			return nil
		default:
			return fmt.Errorf("%w: want ',' or '}' at offset %d", errJSON, s.pos)
		}
	}
}

// array calls fn for each element of the array at pos; fn must consume the element.
func (s *jsonScanner) array(fn func() error) error {
	if err := s.expect('['); err != nil {
		return err
	}
	if s.peek() == ']' {
		s.pos++
		return nil
	}
	for {
		if err := fn(); err != nil {
			return err
		}
		switch s.peek() {
		case ',':
			s.pos++
		case ']':
			s.pos++
			return nil
		default:
			return fmt.Errorf("%w: want ',' or ']' at offset %d", errJSON, s.pos)
		}
	}
}

// uint reads a non-negative integer.
func (s *jsonScanner) uint() (uint64, error) {
	s.ws()
	start := s.pos
	for s.pos < len(s.data) && s.data[s.pos] >= '0' && s.data[s.pos] <= '9' {
		s.pos++
	}
	v, err := strconv.ParseUint(string(s.data[start:s.pos]), 10, 32)
	if err != nil {
		return 0, fmt.Errorf("%w: want a token id at offset %d", errJSON, start)
	}
	return v, nil
}

// parseVocabFrom reads the vocab object {"token": id, ...} at s. All keys share one backing
// string, which saves an allocation per token.
func parseVocabFrom(s *jsonScanner) (*vocabTable, error) {
	var entries []vocabEntry
	var arena []byte
	err := s.object(func(k []byte) error {
		id, err := s.uint()
		if err != nil {
			return err
		}
		if entries == nil { // size guess from the bytes left (vocab and merges dominate the file)
			rest := len(s.data) - s.pos
			entries, arena = make([]vocabEntry, 0, rest/64+16), make([]byte, 0, rest/8+64)
		}
		entries = append(entries, vocabEntry{off: len(arena), n: len(k), id: uint32(id)})
		arena = append(arena, k...)
		return nil
	})
	if err != nil {
		return nil, err
	}
	return newVocabTable(string(arena), entries), nil
}

// parseMergesInto reads merges in either form, ["a b", ...] or [["a", "b"], ...], and calls
// add(a, b) for each in rank order. a and b are only valid during the call.
func parseMergesInto(raw []byte, add func(rank int, a, b []byte) error) error {
	s := &jsonScanner{data: raw}
	if s.peek() == 'n' { // null
		return nil
	}
	rank := 0
	var ab, bb []byte
	err := s.array(func() error {
		var a, b []byte
		switch s.peek() {
		case '"':
			str, err := s.str(&ab)
			if err != nil {
				return err
			}
			sp := -1
			for i, c := range str {
				if c == ' ' {
					if sp >= 0 {
						return fmt.Errorf("merge %d %q is not two tokens separated by a space", rank, str)
					}
					sp = i
				}
			}
			if sp < 0 {
				return fmt.Errorf("merge %d %q is not two tokens separated by a space", rank, str)
			}
			a, b = str[:sp], str[sp+1:]
		case '[':
			n := 0
			err := s.array(func() error {
				var err error
				switch n {
				case 0:
					a, err = s.str(&ab)
				case 1:
					b, err = s.str(&bb)
				default:
					return fmt.Errorf("merge %d has more than 2 parts", rank)
				}
				n++
				return err
			})
			if err != nil {
				return err
			}
			if n != 2 {
				return fmt.Errorf("merge %d has %d parts, want 2", rank, n)
			}
		default:
			return fmt.Errorf("%w: merge %d is neither \"a b\" nor [\"a\", \"b\"]", errJSON, rank)
		}
		if err := add(rank, a, b); err != nil {
			return err
		}
		rank++
		return nil
	})
	if err != nil {
		return fmt.Errorf("tokenizer: model merges: %w", err)
	}
	return nil
}
