package openai

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"unicode/utf8"
)

// scanner checks a request body against the JSON grammar (RFC 8259, as encoding/json reads it,
// and UTF-8 inside strings) in one pass, and on the way records the top-level fields and checks
// the shape of a chat request's messages, so that nothing is validated twice.
type scanner struct {
	data  []byte
	i     int
	depth int
}

// maxDepth is encoding/json's nesting limit: deeper bodies are invalid JSON there too.
const maxDepth = 10000

// field is one top-level key and its value, as bytes of the body.
type field struct {
	key, val []byte
	msgErr   error // for "messages" when checked: what validateMessages would say
}

func (s *scanner) ws() {
	for s.i < len(s.data) {
		switch s.data[s.i] {
		case ' ', '\t', '\n', '\r':
			s.i++
		default:
			return
		}
	}
}

// top scans the body, which starts with '{', as one object followed by nothing, appending its
// fields in order. With msgs, the value of "messages" is also checked as chat messages.
func (s *scanner) top(fields []field, msgs bool) ([]field, bool) {
	d := s.data
	s.depth = 1
	s.i = 1
	s.ws()
	if s.i < len(d) && d[s.i] == '}' {
		s.i++
		s.ws()
		return fields, s.i == len(d)
	}
	for {
		key, ok := s.key()
		if !ok {
			return nil, false
		}
		start := s.i
		var f field
		if msgs && string(key) == "messages" && d[s.i] == '[' {
			f.msgErr, ok = s.messages()
		} else {
			ok = s.value()
		}
		if !ok {
			return nil, false
		}
		f.key, f.val = key, d[start:s.i]
		fields = append(fields, f)
		s.ws()
		if s.i >= len(d) {
			return nil, false
		}
		switch d[s.i] {
		case ',':
			s.i++
			s.ws()
			continue
		case '}':
			s.i++
			s.ws()
			return fields, s.i == len(d)
		}
		return nil, false
	}
}

// key scans `"key" :` and the whitespace after it, returning the key decoded.
func (s *scanner) key() ([]byte, bool) {
	d := s.data
	if s.i >= len(d) || d[s.i] != '"' {
		return nil, false
	}
	start := s.i
	esc, ok := s.str()
	if !ok {
		return nil, false
	}
	key := d[start+1 : s.i-1]
	if esc {
		var k string
		if json.Unmarshal(d[start:s.i], &k) != nil {
			return nil, false
		}
		key = []byte(k)
	}
	s.ws()
	if s.i >= len(d) || d[s.i] != ':' {
		return nil, false
	}
	s.i++
	s.ws()
	return key, s.i < len(d)
}

// value scans any value at s.i.
func (s *scanner) value() bool {
	d := s.data
	if s.i >= len(d) {
		return false
	}
	switch c := d[s.i]; c {
	case '{':
		return s.object()
	case '[':
		return s.array(nil)
	case '"':
		_, ok := s.str()
		return ok
	case 't':
		return s.lit("true")
	case 'f':
		return s.lit("false")
	case 'n':
		return s.lit("null")
	default:
		if c == '-' || c >= '0' && c <= '9' {
			return s.number()
		}
	}
	return false
}

func (s *scanner) lit(l string) bool {
	if !bytes.HasPrefix(s.data[s.i:], []byte(l)) {
		return false
	}
	s.i += len(l)
	return true
}

func (s *scanner) enter() bool {
	s.depth++
	s.i++
	s.ws()
	return s.depth <= maxDepth && s.i < len(s.data)
}

func (s *scanner) object() bool {
	if !s.enter() {
		return false
	}
	d := s.data
	if d[s.i] == '}' {
		s.i++
		s.depth--
		return true
	}
	for {
		if _, ok := s.key(); !ok || !s.value() {
			return false
		}
		if !s.next('}') {
			return false
		}
		if d[s.i-1] == '}' {
			s.depth--
			return true
		}
	}
}

// next scans the whitespace and the ',' or closing byte after an element, and the whitespace
// after a ','.
func (s *scanner) next(closing byte) bool {
	s.ws()
	if s.i >= len(s.data) {
		return false
	}
	switch s.data[s.i] {
	case ',':
		s.i++
		s.ws()
		return s.i < len(s.data)
	case closing:
		s.i++
		return true
	}
	return false
}

// array scans an array; each calls it with the index and first byte of every element before
// that element is scanned (nil: none).
func (s *scanner) array(each func(i int, c byte)) bool {
	if !s.enter() {
		return false
	}
	d := s.data
	if d[s.i] == ']' {
		s.i++
		s.depth--
		return true
	}
	for n := 0; ; n++ {
		if each != nil {
			each(n, d[s.i])
		}
		if !s.value() || !s.next(']') {
			return false
		}
		if d[s.i-1] == ']' {
			s.depth--
			return true
		}
	}
}

func (s *scanner) number() bool {
	d, i := s.data, s.i
	if d[i] == '-' {
		i++
	}
	digits := func() bool {
		j := i
		for i < len(d) && d[i] >= '0' && d[i] <= '9' {
			i++
		}
		return i > j
	}
	switch {
	case i >= len(d):
		return false
	case d[i] == '0':
		i++
	case !digits():
		return false
	}
	if i < len(d) && d[i] == '.' {
		i++
		if !digits() {
			return false
		}
	}
	if i < len(d) && (d[i] == 'e' || d[i] == 'E') {
		i++
		if i < len(d) && (d[i] == '+' || d[i] == '-') {
			i++
		}
		if !digits() {
			return false
		}
	}
	s.i = i
	return true
}

const (
	ones  = 0x0101010101010101
	highs = 0x8080808080808080
)

// plain reports whether none of the 8 bytes in w needs a look: no '"', '\\', control byte or
// byte of a multi-byte UTF-8 sequence.
func plain(w uint64) bool {
	quote, bslash := w^(ones*'"'), w^(ones*'\\')
	special := (quote - ones) & ^quote
	special |= (bslash - ones) & ^bslash
	special |= w - ones*0x20 // a byte below 0x20 borrows into its high bit
	special |= w             // a byte at or above 0x80
	return special&highs == 0
}

// str scans a string at s.i (its opening quote), reporting whether it holds escapes.
func (s *scanner) str() (esc, ok bool) {
	d, i := s.data, s.i+1
	for {
		for i+8 <= len(d) && plain(binary.LittleEndian.Uint64(d[i:])) {
			i += 8
		}
		if i >= len(d) {
			return false, false
		}
		switch c := d[i]; {
		case c == '"':
			s.i = i + 1
			return esc, true
		case c == '\\':
			esc = true
			if i+1 >= len(d) {
				return false, false
			}
			switch d[i+1] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				i += 2
			case 'u':
				if i+6 > len(d) {
					return false, false
				}
				for _, h := range d[i+2 : i+6] {
					if !(h >= '0' && h <= '9' || h >= 'a' && h <= 'f' || h >= 'A' && h <= 'F') {
						return false, false
					}
				}
				i += 6
			default:
				return false, false
			}
		case c < 0x20:
			return false, false
		case c < utf8.RuneSelf:
			i++
		default:
			r, n := utf8.DecodeRune(d[i:])
			if r == utf8.RuneError && n == 1 {
				return false, false
			}
			i += n
		}
	}
}

// kindOf names the JSON type of a value from its first byte (jsonKind uses it too).
func kindOf(c byte) string {
	switch c {
	case '{':
		return "an object"
	case '[':
		return "an array"
	case '"':
		return "a string"
	case 't', 'f':
		return "a boolean"
	case 'n':
		return "null"
	}
	return "a number"
}

// messages scans the messages array at s.i and returns the error validateMessages gives for
// it: the first element that is neither an object nor null is reported before anything else;
// then an empty array; then, in order, a null element or the first message with a bad field.
func (s *scanner) messages() (error, bool) {
	if !s.enter() {
		return nil, false
	}
	d := s.data
	if d[s.i] == ']' {
		s.i++
		s.depth--
		return BadRequest("messages", "Invalid 'messages': empty array. Expected an array with minimum length 1, but got an empty array instead."), true
	}
	var err error
	notObj, notObjKind, other := -1, "", false
	for n := 0; ; n++ {
		c := d[s.i]
		if c == '{' {
			e, ok := s.message(n, err == nil)
			if !ok {
				return nil, false
			}
			if err == nil {
				err = e
			}
		} else {
			if !s.value() {
				return nil, false
			}
			if notObj < 0 {
				notObj, notObjKind = n, kindOf(c)
			}
			other = other || c != 'n'
			if err == nil {
				err = notObject(n, kindOf(c))
			}
		}
		if !s.next(']') {
			return nil, false
		}
		if d[s.i-1] == ']' {
			s.depth--
			break
		}
	}
	if other {
		// An element that does not decode as an object (null does) fails the whole array,
		// and then the first element that is not an object, null included, is reported.
		return notObject(notObj, notObjKind), true
	}
	return err, true
}

func notObject(n int, kind string) error {
	p := fmt.Sprintf("messages[%d]", n)
	return BadRequest(p, "Invalid type for '%s': expected an object, but got %s instead.", p, kind)
}

// message scans the object of message n; with check it returns the error the message's
// role, content and tool_calls give (the last of each key counts, as in a decoded map).
func (s *scanner) message(n int, check bool) (error, bool) {
	if !s.enter() {
		return nil, false
	}
	d := s.data
	var role, content, toolCalls []byte
	badPart, partKind := -1, ""
	if d[s.i] == '}' {
		s.i++
	} else {
		for {
			key, ok := s.key()
			if !ok {
				return nil, false
			}
			start := s.i
			switch string(key) {
			case "content":
				badPart = -1
				if d[s.i] == '[' {
					ok = s.array(func(j int, c byte) {
						if c != '{' && badPart < 0 {
							badPart, partKind = j, kindOf(c)
						}
					})
				} else {
					ok = s.value()
				}
				content = d[start:s.i]
			case "role":
				ok = s.value()
				role = d[start:s.i]
			case "tool_calls":
				ok = s.value()
				toolCalls = d[start:s.i]
			default:
				ok = s.value()
			}
			if !ok || !s.next('}') {
				return nil, false
			}
			if d[s.i-1] == '}' {
				break
			}
		}
	}
	s.depth--
	if !check {
		return nil, true
	}
	p := func() string { return fmt.Sprintf("messages[%d]", n) }
	if role == nil {
		return BadRequest(p()+".role", "Missing required parameter: '%s.role'.", p()), true
	}
	if role[0] != '"' {
		return BadRequest(p()+".role", "Invalid type for '%s.role': expected a string, but got %s instead.", p(), kindOf(role[0])), true
	}
	rs := role[1 : len(role)-1]
	if bytes.IndexByte(rs, '\\') >= 0 {
		var r string
		_ = json.Unmarshal(role, &r) // valid: scanned above
		rs = []byte(r)
	}
	if len(rs) == 0 {
		return BadRequest(p()+".role", "Invalid value for '%s.role': must not be empty.", p()), true
	}
	if !knownRole(rs) {
		return BadRequest(p()+".role", "Invalid value for '%s.role': '%s' is not one of %s.", p(), rs, rolesText), true
	}
	if content != nil {
		switch content[0] {
		case '"', 'n':
		case '[':
			if badPart >= 0 {
				pp := fmt.Sprintf("%s.content[%d]", p(), badPart)
				return BadRequest(pp, "Invalid type for '%s': expected an object, but got %s instead.", pp, partKind), true
			}
		default:
			return BadRequest(p()+".content", "Invalid type for '%s.content': expected a string or an array of content parts, but got %s instead.", p(), kindOf(content[0])), true
		}
	}
	if toolCalls != nil && toolCalls[0] != '[' && toolCalls[0] != 'n' {
		return BadRequest(p()+".tool_calls", "Invalid type for '%s.tool_calls': expected an array, but got %s instead.", p(), kindOf(toolCalls[0])), true
	}
	return nil, true
}

func knownRole(r []byte) bool {
	for _, k := range roles {
		if string(r) == k {
			return true
		}
	}
	return false
}
