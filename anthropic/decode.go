package anthropic

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"unicode/utf8"
)

// Parse checks the body against the JSON grammar once (valid), then walks the checked bytes:
// objects are split into members and arrays into elements without decoding anything, and
// only the strings the request keeps are decoded, each once. This replaces decoding level by
// level with encoding/json, which rescanned a long prompt string at every level.

// maxDepth is encoding/json's nesting limit: deeper bodies are invalid JSON there too.
const maxDepth = 10000

// valid reports whether b is one JSON value as encoding/json accepts it (RFC 8259; bytes of
// strings are not checked as UTF-8, as encoding/json does not check them), with ASCII
// whitespace around it.
func valid(b []byte) bool {
	v := validator{b: b}
	v.ws()
	if !v.value(0) {
		return false
	}
	v.ws()
	return v.i == len(b)
}

type validator struct {
	b []byte
	i int
}

func (v *validator) ws() {
	for v.i < len(v.b) {
		switch v.b[v.i] {
		case ' ', '\t', '\n', '\r':
			v.i++
		default:
			return
		}
	}
}

func (v *validator) value(depth int) bool {
	if v.i >= len(v.b) {
		return false
	}
	switch c := v.b[v.i]; {
	case c == '"':
		return v.str()
	case c == '{':
		if depth++; depth > maxDepth {
			return false
		}
		v.i++
		v.ws()
		if v.i < len(v.b) && v.b[v.i] == '}' {
			v.i++
			return true
		}
		for {
			if v.i >= len(v.b) || v.b[v.i] != '"' || !v.str() {
				return false
			}
			v.ws()
			if v.i >= len(v.b) || v.b[v.i] != ':' {
				return false
			}
			v.i++
			v.ws()
			if !v.value(depth) {
				return false
			}
			if more, ok := v.next('}'); !more {
				return ok
			}
		}
	case c == '[':
		if depth++; depth > maxDepth {
			return false
		}
		v.i++
		v.ws()
		if v.i < len(v.b) && v.b[v.i] == ']' {
			v.i++
			return true
		}
		for {
			if !v.value(depth) {
				return false
			}
			if more, ok := v.next(']'); !more {
				return ok
			}
		}
	case c == 't':
		return v.lit("true")
	case c == 'f':
		return v.lit("false")
	case c == 'n':
		return v.lit("null")
	case c == '-' || (c >= '0' && c <= '9'):
		return v.number()
	}
	return false
}

// next scans the whitespace and the ',' or closing byte after an element, and the whitespace
// after a ','. more: another element follows; ok: the bytes were one of the two.
func (v *validator) next(closing byte) (more, ok bool) {
	v.ws()
	if v.i >= len(v.b) {
		return false, false
	}
	switch v.b[v.i] {
	case ',':
		v.i++
		v.ws()
		return true, true
	case closing:
		v.i++
		return false, true
	}
	return false, false
}

func (v *validator) lit(l string) bool {
	if !bytes.HasPrefix(v.b[v.i:], []byte(l)) {
		return false
	}
	v.i += len(l)
	return true
}

func (v *validator) number() bool {
	b, i := v.b, v.i
	if b[i] == '-' {
		i++
	}
	switch {
	case i < len(b) && b[i] == '0':
		i++
	case i < len(b) && b[i] >= '1' && b[i] <= '9':
		for i < len(b) && b[i] >= '0' && b[i] <= '9' {
			i++
		}
	default:
		return false
	}
	if i < len(b) && b[i] == '.' {
		i++
		if i >= len(b) || b[i] < '0' || b[i] > '9' {
			return false
		}
		for i < len(b) && b[i] >= '0' && b[i] <= '9' {
			i++
		}
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		if i >= len(b) || b[i] < '0' || b[i] > '9' {
			return false
		}
		for i < len(b) && b[i] >= '0' && b[i] <= '9' {
			i++
		}
	}
	v.i = i
	return true
}

// str scans a string at its opening quote.
func (v *validator) str() bool {
	b, i := v.b, v.i+1
	for {
		// eight bytes at a time while none is a quote, a backslash or a control byte
		for i+8 <= len(b) && plain8(b[i:i+8]) {
			i += 8
		}
		if i >= len(b) {
			return false
		}
		switch c := b[i]; {
		case c == '"':
			v.i = i + 1
			return true
		case c == '\\':
			if i+1 >= len(b) {
				return false
			}
			switch b[i+1] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				i += 2
			case 'u':
				if i+6 > len(b) {
					return false
				}
				for _, h := range b[i+2 : i+6] {
					if !(h >= '0' && h <= '9' || h >= 'a' && h <= 'f' || h >= 'A' && h <= 'F') {
						return false
					}
				}
				i += 6
			default:
				return false
			}
		case c < 0x20:
			return false
		default:
			i++
		}
	}
}

// Byte-wise tests on eight bytes at once (each is exact as a whole).
const (
	ones  = 0x0101010101010101
	highs = 0x8080808080808080
)

// plain8 reports whether none of the 8 bytes of w is '"', '\\' or below 0x20 (bytes from 0x80
// up are plain: a string's UTF-8 is not checked).
func plain8(w []byte) bool {
	x := binary.LittleEndian.Uint64(w)
	q, bs := x^(ones*'"'), x^(ones*'\\')
	return ((x-ones*0x20)&^x|(q-ones)&^q|(bs-ones)&^bs)&highs == 0
}

// ascii8 reports whether the 8 bytes of w are ASCII from 0x20 up and neither '"' nor '\\':
// bytes a JSON string holds as they are.
func ascii8(w []byte) bool {
	x := binary.LittleEndian.Uint64(w)
	q, bs := x^(ones*'"'), x^(ones*'\\')
	return (x|(x-ones*0x20)|(q-ones)|(bs-ones))&highs == 0
}

// member is one key and its value in an object, as bytes of the body (the key with its
// quotes).
type member struct {
	key []byte
	val json.RawMessage
}

// members splits a checked JSON object into its members, appended to dst in order; ok is
// false for anything but an object.
func members(raw json.RawMessage, dst []member) ([]member, bool) {
	if kind(raw) != "an object" {
		return nil, false
	}
	raw = bytes.TrimSpace(raw)
	i := skipWS(raw, 1)
	for i < len(raw) && raw[i] != '}' {
		ke := skipString(raw, i)
		k := raw[i:ke]
		i = skipWS(raw, ke)
		i = skipWS(raw, i+1) // ':'
		ve := skipValue(raw, i)
		dst = append(dst, member{key: k, val: raw[i:ve]})
		i = skipWS(raw, ve)
		if i < len(raw) && raw[i] == ',' {
			i = skipWS(raw, i+1)
		}
	}
	return dst, true
}

// get is the value of key in ms, the last one when it repeats (as in a decoded map), nil when
// absent. Keys match exactly; a key with escapes is decoded first.
func get(ms []member, key string) json.RawMessage {
	for i := len(ms) - 1; i >= 0; i-- {
		if keyIs(ms[i].key, key) {
			return ms[i].val
		}
	}
	return nil
}

// keyIs reports whether the quoted key k decodes to key.
func keyIs(k []byte, key string) bool {
	inner := k[1 : len(k)-1]
	if bytes.IndexByte(inner, '\\') < 0 && ascii(inner) {
		return string(inner) == key
	}
	var s string
	_ = json.Unmarshal(k, &s)
	return s == key
}

func ascii(b []byte) bool {
	for _, c := range b {
		if c >= utf8.RuneSelf {
			return false
		}
	}
	return true
}

// elems splits a checked JSON array into its elements (an empty, non-nil slice for []);
// ok is false for anything but an array.
func elems(raw json.RawMessage) ([]json.RawMessage, bool) {
	if kind(raw) != "an array" {
		return nil, false
	}
	raw = bytes.TrimSpace(raw)
	out := []json.RawMessage{}
	i := skipWS(raw, 1)
	for i < len(raw) && raw[i] != ']' {
		e := skipValue(raw, i)
		out = append(out, raw[i:e])
		i = skipWS(raw, e)
		if i < len(raw) && raw[i] == ',' {
			i = skipWS(raw, i+1)
		}
	}
	return out, true
}

func skipWS(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

// skipString returns the index after the checked string whose opening quote is at i.
func skipString(b []byte, i int) int {
	i++
	for {
		j := bytes.IndexByte(b[i:], '"')
		if j < 0 {
			return len(b)
		}
		i += j
		n := 0 // backslashes before the quote
		for k := i - 1; k >= 0 && b[k] == '\\'; k-- {
			n++
		}
		i++
		if n%2 == 0 {
			return i
		}
	}
}

// skipValue returns the index after the checked value that starts at i.
func skipValue(b []byte, i int) int {
	if i >= len(b) {
		return i
	}
	switch b[i] {
	case '"':
		return skipString(b, i)
	case '{', '[':
		depth := 0
		for i < len(b) {
			switch b[i] {
			case '"':
				i = skipString(b, i)
				continue
			case '{', '[':
				depth++
			case '}', ']':
				if depth--; depth == 0 {
					return i + 1
				}
			}
			i++
		}
		return i
	}
	for i < len(b) {
		switch b[i] {
		case ',', '}', ']', ' ', '\t', '\n', '\r':
			return i
		}
		i++
	}
	return i
}

// decodeString decodes a checked JSON string as encoding/json does (invalid UTF-8 becomes
// U+FFFD), copying it once when it has no escapes.
func decodeString(raw json.RawMessage) string {
	raw = bytes.TrimSpace(raw)
	inner := raw[1 : len(raw)-1]
	if bytes.IndexByte(inner, '\\') < 0 && utf8.Valid(inner) {
		return string(inner)
	}
	var s string
	_ = json.Unmarshal(raw, &s)
	return s
}
