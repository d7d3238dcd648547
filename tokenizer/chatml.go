package tokenizer

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"slices"
	"strings"
	"unicode/utf16"
	"unicode/utf8"
	"unsafe"
)

// qwen3TemplateSHA256 is the digest of the Qwen3 chat template (Qwen3-8B's
// tokenizer_config.json, the embedded default).
const qwen3TemplateSHA256 = "87a2728cb8dc9fe424d624542f6060ec05a1d285ebbec578bb078900e33396b5"

func isQwen3Template(src string) bool {
	sum := sha256.Sum256([]byte(src))
	return hex.EncodeToString(sum[:]) == qwen3TemplateSHA256
}

type chatMsg struct{ role, content string }

// qwen3Vars reads the variables for the native Qwen3 render: add_generation_prompt and
// enable_thinking (a bool, or JSON true/false). ok is false for any other variable.
func qwen3Vars(extra map[string]any) (thinkingOff, ok bool) {
	for k, v := range extra {
		if k != "enable_thinking" {
			return false, false
		}
		switch v := v.(type) {
		case bool:
			thinkingOff = !v
		case json.RawMessage:
			switch string(bytes.TrimSpace(v)) {
			case "true":
			case "false":
				thinkingOff = true
			default:
				return false, false
			}
		default:
			return false, false
		}
	}
	return thinkingOff, true
}

// plainMessages reads a messages array of objects that hold exactly a string "role" and a
// string "content" (and optionally a string "name"), the shape of almost every chat, with
// the same string decoding as encoding/json. ok is false for any other shape or any doubt;
// the caller then takes the general path, which also reports errors. The strings share
// data's bytes (or a buffer of their own where they hold escapes): data must stay as it is
// while they are used.
func plainMessages(data []byte) (ms []chatMsg, ok bool) {
	s := jsonScanner{data: data}
	if s.ws(); s.peek() != '[' {
		return nil, false
	}
	s.pos++
	ms = make([]chatMsg, 0, 16)
	for first := true; ; first = false {
		s.ws()
		if s.peek() == ']' && first {
			s.pos++
			break
		}
		if s.peek() != '{' {
			return nil, false
		}
		s.pos++
		var m chatMsg
		var hasRole, hasContent, hasName bool
		for {
			key, ok := plainString(&s)
			if !ok {
				return nil, false
			}
			if s.ws(); s.peek() != ':' {
				return nil, false
			}
			s.pos++
			s.ws()
			val, ok := plainString(&s)
			if !ok {
				return nil, false
			}
			switch {
			case key == "role" && !hasRole:
				m.role, hasRole = val, true
			case key == "content" && !hasContent:
				m.content, hasContent = val, true
			case key == "name" && !hasName:
				hasName = true
			default:
				return nil, false
			}
			if s.ws(); s.peek() == ',' {
				s.pos++
				s.ws()
				continue
			}
			if s.peek() != '}' {
				return nil, false
			}
			s.pos++ // a '}' ends the object; after a ',' only a key may come
			break
		}
		if !hasRole || !hasContent {
			return nil, false
		}
		ms = append(ms, m)
		s.ws()
		if s.peek() == ',' {
			s.pos++
			continue
		}
		if s.peek() != ']' {
			return nil, false
		}
		s.pos++
		break
	}
	if s.ws(); s.pos != len(data) {
		return nil, false
	}
	return ms, true
}

// plainString reads a JSON string at s.pos and decodes it as encoding/json does: escapes
// decoded, an unpaired surrogate escape and each byte of invalid UTF-8 become U+FFFD, a raw
// control character is an error (ok false).
func plainString(s *jsonScanner) (string, bool) {
	if s.peek() != '"' {
		return "", false
	}
	start := s.pos + 1
	i := skipPlain(s.data, start)
	if i < len(s.data) && s.data[i] == '"' {
		s.pos = i + 1
		// No escape: the string is the bytes of the input, not a copy of them. The messages
		// plainMessages returns live no longer than the render, which copies them.
		return unsafe.String(unsafe.SliceData(s.data[start:i]), i-start), true
	}
	end := closingQuote(s.data, i)
	if end < 0 {
		return "", false
	}
	// Escapes only shrink the text (an invalid byte, 1 -> 3, may grow it: append copes).
	b := make([]byte, 0, end-start)
	b = append(b, s.data[start:i]...)
	for i < len(s.data) {
		// A run of plain ASCII in one copy.
		j := skipPlain(s.data, i)
		b = append(b, s.data[i:j]...)
		if i = j; i >= len(s.data) {
			break
		}
		c := s.data[i]
		switch {
		case c == '"':
			s.pos = i + 1
			// b is never written again: the string shares its bytes instead of copying
			// them (a chat message can be most of a large body).
			return unsafe.String(unsafe.SliceData(b), len(b)), true
		case c < 0x20:
			return "", false
		case c == '\\':
			if i+1 >= len(s.data) {
				return "", false
			}
			switch e := s.data[i+1]; e {
			case '"', '\\', '/':
				b = append(b, e)
			case 'b':
				b = append(b, '\b')
			case 'f':
				b = append(b, '\f')
			case 'n':
				b = append(b, '\n')
			case 'r':
				b = append(b, '\r')
			case 't':
				b = append(b, '\t')
			case 'u':
				r := hex4(s.data[i+2:])
				if r < 0 {
					return "", false
				}
				i += 6
				if utf16.IsSurrogate(r) {
					if len(s.data) > i+1 && s.data[i] == '\\' && s.data[i+1] == 'u' {
						if r2 := hex4(s.data[i+2:]); r2 >= 0 {
							if d := utf16.DecodeRune(r, r2); d != utf8.RuneError {
								b = utf8.AppendRune(b, d)
								i += 6
								continue
							}
						}
					}
					r = utf8.RuneError
				}
				b = utf8.AppendRune(b, r)
				continue
			default:
				return "", false
			}
			i += 2
		case c < utf8.RuneSelf:
			b = append(b, c)
			i++
		default:
			r, n := utf8.DecodeRune(s.data[i:])
			if r == utf8.RuneError && n == 1 {
				b = utf8.AppendRune(b, utf8.RuneError)
			} else {
				b = append(b, s.data[i:i+n]...)
			}
			i += n
		}
	}
	return "", false
}

// skipPlain returns the index of the first byte of data at or after i that a JSON string
// decoder must look at ('"', '\\', a control byte or a non-ASCII byte), or len(data); it
// tests 8 bytes at a time.
func skipPlain(data []byte, i int) int {
	const ones, highs = 0x0101010101010101, 0x8080808080808080
	for ; i+8 <= len(data); i += 8 {
		w := binary.LittleEndian.Uint64(data[i:])
		quote, bslash := w^(ones*'"'), w^(ones*'\\')
		// A zero byte of quote or bslash, a byte below 0x20 (borrowing into its high bit) or
		// a byte at or above 0x80 sets a high bit; false positives only end the fast loop.
		if ((quote-ones)&^quote|(bslash-ones)&^bslash|(w-ones*0x20)|w)&highs != 0 {
			break
		}
	}
	for ; i < len(data); i++ {
		if c := data[i]; c == '"' || c == '\\' || c < 0x20 || c >= utf8.RuneSelf {
			return i
		}
	}
	return i
}

// closingQuote returns the index of the quote that ends the JSON string whose body continues
// at from (a quote not escaped by an odd run of backslashes), or -1.
func closingQuote(data []byte, from int) int {
	for {
		k := bytes.IndexByte(data[from:], '"')
		if k < 0 {
			return -1
		}
		q := from + k
		n := 0
		for p := q - 1; p >= 0 && data[p] == '\\'; p-- {
			n++
		}
		if n%2 == 0 {
			return q
		}
		from = q + 1
	}
}

// hex4 decodes the 4 hex digits at the start of b, or returns -1.
func hex4(b []byte) rune {
	if len(b) < 4 {
		return -1
	}
	var r rune
	for _, c := range b[:4] {
		switch {
		case '0' <= c && c <= '9':
			c -= '0'
		case 'a' <= c && c <= 'f':
			c = c - 'a' + 10
		case 'A' <= c && c <= 'F':
			c = c - 'A' + 10
		default:
			return -1
		}
		r = r<<4 | rune(c)
	}
	return r
}

// appendQwen3 appends what the Qwen3 template renders for plain chats (system, user and
// assistant messages of string content, no tools) to dst, without the template engine, and
// reports false (dst unchanged) for anything else (tool messages or calls, reasoning
// content, "</think>" in an assistant message), which the caller renders through the
// template. A long chat renders in microseconds here against hundreds through the engine;
// tests hold the two equal.
func appendQwen3(dst []byte, ms []chatMsg, addGen, thinkingOff bool) ([]byte, bool) {
	if len(ms) == 0 {
		return dst, false
	}
	n := 0
	for _, m := range ms {
		switch m.role {
		case "system", "user":
		case "assistant":
			if strings.Contains(m.content, "</think>") {
				return dst, false
			}
		default:
			return dst, false
		}
		n += len(m.content) + 32
	}
	// The last user message that is not a tool response.
	lastQuery := len(ms) - 1
	for i := len(ms) - 1; i >= 0; i-- {
		c := ms[i].content
		if ms[i].role == "user" && !(strings.HasPrefix(c, "<tool_response>") && strings.HasSuffix(c, "</tool_response>")) {
			lastQuery = i
			break
		}
	}
	b := slices.Grow(dst, n+64)
	if ms[0].role == "system" {
		b = append(b, "<|im_start|>system\n"...)
		b = append(b, ms[0].content...)
		b = append(b, "<|im_end|>\n"...)
	}
	for i, m := range ms {
		switch {
		case m.role == "user" || m.role == "system" && i > 0:
			b = append(b, "<|im_start|>"...)
			b = append(b, m.role...)
			b = append(b, '\n')
			b = append(b, m.content...)
			b = append(b, "<|im_end|>\n"...)
		case m.role == "assistant":
			if i > lastQuery && i == len(ms)-1 {
				// Empty reasoning: "<think>\n" + "" + "\n</think>\n\n", content lstripped of "\n".
				b = append(b, "<|im_start|>assistant\n<think>\n\n</think>\n\n"...)
				b = append(b, strings.TrimLeft(m.content, "\n")...)
			} else {
				b = append(b, "<|im_start|>assistant\n"...)
				b = append(b, m.content...)
			}
			b = append(b, "<|im_end|>\n"...)
		}
	}
	if addGen {
		b = append(b, "<|im_start|>assistant\n"...)
		if thinkingOff {
			b = append(b, "<think>\n\n</think>\n\n"...)
		}
	}
	return b, true
}
