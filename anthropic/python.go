package anthropic

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"strconv"
	"strings"
	"unicode"
)

// vLLM builds its chat messages in Python: a tool_use block's input becomes the tool call's
// arguments with json.dumps, and a tool_result's content becomes the tool message's text
// with str(). The functions here write the same bytes from the raw JSON, keeping its key
// order (Python dicts keep insertion order), so that the rendered prompt is the engine's.

// pyDumps writes raw JSON as Python's json.dumps writes the decoded value: ", " and ": "
// separators, non-ASCII escaped, floats in Python's repr.
func pyDumps(raw json.RawMessage) (string, error) {
	var b strings.Builder
	err := pyWalk(raw, &b, true)
	return b.String(), err
}

// pyStr writes raw JSON as Python's str() writes the decoded value: dicts and lists in repr
// form ({'k': 'v'}), True/False/None.
func pyStr(raw json.RawMessage) (string, error) {
	var b strings.Builder
	err := pyWalk(raw, &b, false)
	return b.String(), err
}

func pyWalk(raw json.RawMessage, b *strings.Builder, dumps bool) error {
	d := json.NewDecoder(bytes.NewReader(raw))
	d.UseNumber()
	if err := pyValue(d, b, dumps); err != nil {
		return err
	}
	if _, err := d.Token(); err == nil {
		return fmt.Errorf("anthropic: trailing data after a JSON value")
	}
	return nil
}

func pyValue(d *json.Decoder, b *strings.Builder, dumps bool) error {
	tok, err := d.Token()
	if err != nil {
		return err
	}
	switch v := tok.(type) {
	case json.Delim:
		open, close := byte('{'), byte('}')
		if v == '[' {
			open, close = '[', ']'
		}
		b.WriteByte(open)
		for i := 0; d.More(); i++ {
			if i > 0 {
				b.WriteString(", ")
			}
			if open == '{' {
				k, err := d.Token()
				if err != nil {
					return err
				}
				ks, _ := k.(string)
				if dumps {
					pyJSONString(b, ks)
				} else {
					pyReprString(b, ks)
				}
				b.WriteString(": ")
			}
			if err := pyValue(d, b, dumps); err != nil {
				return err
			}
		}
		if _, err := d.Token(); err != nil {
			return err
		}
		b.WriteByte(close)
	case string:
		if dumps {
			pyJSONString(b, v)
		} else {
			pyReprString(b, v)
		}
	case json.Number:
		b.WriteString(pyNumber(string(v), dumps))
	case bool:
		switch {
		case dumps && v:
			b.WriteString("true")
		case dumps:
			b.WriteString("false")
		case v:
			b.WriteString("True")
		default:
			b.WriteString("False")
		}
	case nil:
		if dumps {
			b.WriteString("null")
		} else {
			b.WriteString("None")
		}
	}
	return nil
}

// pyNumber writes a JSON number as Python prints what json.loads made of it: an int as
// written, a float in repr form.
func pyNumber(s string, dumps bool) string {
	if !strings.ContainsAny(s, ".eE") {
		if s == "-0" {
			return "0"
		}
		return s
	}
	f, _ := strconv.ParseFloat(s, 64) // overflow: ±Inf, as Python's float()
	switch {
	case math.IsInf(f, 1) && dumps:
		return "Infinity"
	case math.IsInf(f, -1) && dumps:
		return "-Infinity"
	case math.IsInf(f, 1):
		return "inf"
	case math.IsInf(f, -1):
		return "-inf"
	}
	return pyFloat(f)
}

// pyFloat is Python's repr(float): the shortest round-tripping digits, positional for
// exponents in [-4, 16), with ".0" on whole numbers.
func pyFloat(f float64) string {
	e := strconv.FormatFloat(f, 'e', -1, 64)
	mant, exp, _ := strings.Cut(e, "e")
	x, _ := strconv.Atoi(exp)
	if x < -4 || x >= 16 {
		return mant + "e" + exp[:1] + fmt.Sprintf("%02d", abs(x))
	}
	s := strconv.FormatFloat(f, 'f', -1, 64)
	if !strings.Contains(s, ".") {
		s += ".0"
	}
	return s
}

func abs(x int) int {
	if x < 0 {
		return -x
	}
	return x
}

// pyJSONString is json.dumps of a str with ensure_ascii.
func pyJSONString(b *strings.Builder, s string) {
	b.WriteByte('"')
	for _, r := range s {
		switch {
		case r == '"':
			b.WriteString(`\"`)
		case r == '\\':
			b.WriteString(`\\`)
		case r == '\n':
			b.WriteString(`\n`)
		case r == '\r':
			b.WriteString(`\r`)
		case r == '\t':
			b.WriteString(`\t`)
		case r == '\b':
			b.WriteString(`\b`)
		case r == '\f':
			b.WriteString(`\f`)
		case r >= 0x20 && r < 0x7f:
			b.WriteRune(r)
		case r > 0xffff:
			r -= 0x10000
			fmt.Fprintf(b, `\u%04x\u%04x`, 0xd800+(r>>10), 0xdc00+(r&0x3ff))
		default:
			fmt.Fprintf(b, `\u%04x`, r)
		}
	}
	b.WriteByte('"')
}

// pyReprString is repr() of a str: single quotes unless the text has one and no double
// quote; control and unprintable characters escaped.
func pyReprString(b *strings.Builder, s string) {
	q := byte('\'')
	if strings.IndexByte(s, '\'') >= 0 && strings.IndexByte(s, '"') < 0 {
		q = '"'
	}
	b.WriteByte(q)
	for _, r := range s {
		switch {
		case r == rune(q) || r == '\\':
			b.WriteByte('\\')
			b.WriteRune(r)
		case r == '\n':
			b.WriteString(`\n`)
		case r == '\r':
			b.WriteString(`\r`)
		case r == '\t':
			b.WriteString(`\t`)
		case r < 0x20 || r == 0x7f:
			fmt.Fprintf(b, `\x%02x`, r)
		case r < 0x7f:
			b.WriteRune(r)
		case unicode.IsPrint(r):
			b.WriteRune(r)
		case r <= 0xff:
			fmt.Fprintf(b, `\x%02x`, r)
		case r <= 0xffff:
			fmt.Fprintf(b, `\u%04x`, r)
		default:
			fmt.Fprintf(b, `\U%08x`, r)
		}
	}
	b.WriteByte(q)
}
