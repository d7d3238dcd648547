package openai

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"unicode/utf8"
)

// fieldTable maps a JSON key (exactly as written, case-sensitive as in vLLM) to the index of
// the struct field that holds it.
type fieldTable map[string]int

var tables sync.Map // reflect.Type -> fieldTable; immutable once built

func tableOf(t reflect.Type) fieldTable {
	if v, ok := tables.Load(t); ok {
		return v.(fieldTable)
	}
	ft := fieldTable{}
	for i := 0; i < t.NumField(); i++ {
		tag := t.Field(i).Tag.Get("json")
		name, _, _ := strings.Cut(tag, ",")
		if name == "" || name == "-" {
			continue
		}
		ft[name] = i
	}
	tables.Store(t, ft)
	return ft
}

// special decodes a key that needs more than encoding/json (string-or-array forms). It
// reports whether it handled key.
type special func(key string, raw json.RawMessage) (bool, error)

// decodeObject parses body as one JSON object and fills the struct dst points to, field by
// field, so that a type error names its field. Keys that are not fields go to extra. The body
// is checked in one pass (see scanner); the raw values dst and extra keep are slices of body
// (of a copy with clone). When a key repeats, its last value counts, as in encoding/json. With
// msgs, msgErr is what the last "messages" array's shape is wrong about.
func decodeObject(body []byte, dst any, spec special, msgs, clone bool) (extra map[string]json.RawMessage, msgErr, err error) {
	body = bytes.TrimSpace(body)
	if len(body) == 0 {
		return nil, nil, BadRequest("", "The request body is empty; expected a JSON object.")
	}
	if body[0] != '{' {
		return nil, nil, notObjectBody(body)
	}
	if clone {
		body = bytes.Clone(body)
	}
	s := scanner{data: body}
	var buf [32]field
	fields, ok := s.top(buf[:0], msgs)
	if !ok {
		return nil, nil, syntaxError(body)
	}
	var lastOf map[string]int // key -> index of its last occurrence, for long bodies
	if len(fields) > len(buf) {
		lastOf = make(map[string]int, len(fields))
		for i, f := range fields {
			lastOf[string(f.key)] = i
		}
	}
	v := reflect.ValueOf(dst).Elem()
	ft := tableOf(v.Type())
	for i, f := range fields {
		if repeated(fields, i, lastOf) {
			continue
		}
		key, raw := string(f.key), json.RawMessage(f.val)
		if key == "messages" {
			msgErr = f.msgErr
		}
		if spec != nil {
			done, err := spec(key, raw)
			if err != nil {
				return nil, nil, err
			}
			if done {
				continue
			}
		}
		i, ok := ft[key]
		if !ok {
			if extra == nil {
				extra = map[string]json.RawMessage{}
			}
			extra[key] = raw
			continue
		}
		f := v.Field(i)
		if f.Type() == rawType {
			if !isNull(raw) {
				f.SetBytes(raw)
			}
			continue
		}
		if setScalar(f, raw) {
			continue
		}
		if err := json.Unmarshal(raw, f.Addr().Interface()); err != nil {
			return nil, nil, typeError(key, err)
		}
	}
	return extra, msgErr, nil
}

// repeated reports whether fields[i]'s key comes again later (lastOf, when set, maps each key
// to its last index).
func repeated(fields []field, i int, lastOf map[string]int) bool {
	if lastOf != nil {
		return lastOf[string(fields[i].key)] != i
	}
	for _, g := range fields[i+1:] {
		if bytes.Equal(g.key, fields[i].key) {
			return true
		}
	}
	return false
}

// setScalar stores a valid JSON value into a string, bool, or pointer to a string, bool, int
// or float field as encoding/json would, reporting false when it leaves that to encoding/json
// (other types, escapes, and every value encoding/json refuses, for its error).
func setScalar(f reflect.Value, raw []byte) bool {
	null := isNull(raw)
	t := f.Type()
	if t.Kind() == reflect.Pointer {
		if null {
			f.SetZero()
			return true
		}
		t = t.Elem()
	}
	if t.PkgPath() != "" {
		return false // a named type may decode itself
	}
	if null && f.Kind() != reflect.Pointer {
		switch t.Kind() {
		case reflect.String, reflect.Bool:
			return true // encoding/json leaves these as they are
		}
		return false
	}
	var x reflect.Value
	switch t.Kind() {
	case reflect.String:
		if raw[0] != '"' || bytes.IndexByte(raw, '\\') >= 0 {
			return false
		}
		x = reflect.ValueOf(string(raw[1 : len(raw)-1]))
	case reflect.Bool:
		if raw[0] != 't' && raw[0] != 'f' {
			return false
		}
		x = reflect.ValueOf(raw[0] == 't')
	case reflect.Int, reflect.Int64:
		n, err := strconv.ParseInt(string(raw), 10, 64)
		if err != nil || reflect.Zero(t).OverflowInt(n) {
			return false
		}
		x = reflect.ValueOf(n)
	case reflect.Float64:
		if raw[0] != '-' && (raw[0] < '0' || raw[0] > '9') {
			return false
		}
		n, err := strconv.ParseFloat(string(raw), 64)
		if err != nil {
			return false
		}
		x = reflect.ValueOf(n)
	default:
		return false
	}
	if x.Type() != t {
		x = x.Convert(t)
	}
	if f.Kind() == reflect.Pointer {
		p := reflect.New(t)
		p.Elem().Set(x)
		f.Set(p)
	} else {
		f.Set(x)
	}
	return true
}

// notObjectBody is the error for a body that does not start with '{'.
func notObjectBody(body []byte) error {
	if !utf8.Valid(body) {
		return errNotUTF8()
	}
	if !json.Valid(body) {
		return BadRequest("", "The request body is not valid JSON.")
	}
	return BadRequest("", "The request body must be a JSON object.")
}

// syntaxError is the error for a body starting with '{' that the scanner refused: not UTF-8,
// or encoding/json's account of what is wrong.
func syntaxError(body []byte) error {
	if !utf8.Valid(body) {
		return errNotUTF8()
	}
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(body, &fields); err != nil {
		return BadRequest("", "The request body is not valid JSON: %s", jsonErrText(err))
	}
	return BadRequest("", "The request body is not valid JSON.")
}

// errNotUTF8: encoding/json would turn each bad byte into U+FFFD and the engine would generate
// from a prompt the client never sent.
func errNotUTF8() error { return BadRequest("", "The request body is not valid UTF-8.") }

var rawType = reflect.TypeFor[json.RawMessage]()

func isNull(raw json.RawMessage) bool { return string(raw) == "null" }

// typeError turns a json decoding error for key into a 400 naming the field.
func typeError(key string, err error) *Error {
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) {
		param := key
		if te.Field != "" {
			param = key + "." + te.Field
		}
		return BadRequest(param, "Invalid type for '%s': expected %s, but got %s instead.", param, kindName(te.Type), te.Value)
	}
	return BadRequest(key, "Invalid value for '%s': %s", key, jsonErrText(err))
}

func jsonErrText(err error) string { return strings.TrimPrefix(err.Error(), "json: ") }

func kindName(t reflect.Type) string {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch t.Kind() {
	case reflect.Bool:
		return "a boolean"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "an integer"
	case reflect.Float32, reflect.Float64:
		return "a number"
	case reflect.String:
		return "a string"
	case reflect.Slice, reflect.Array:
		return "an array"
	case reflect.Map, reflect.Struct:
		return "an object"
	}
	return "a value of another type"
}

// jsonKind names the JSON type of raw for messages.
func jsonKind(raw json.RawMessage) string {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 {
		return "nothing"
	}
	return kindOf(raw[0])
}

// decodeStop reads stop as a string or an array of strings.
func decodeStop(raw json.RawMessage) ([]string, error) {
	switch jsonKind(raw) {
	case "null":
		return nil, nil
	case "a string":
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return nil, BadRequest("stop", "Invalid value for 'stop': %s", jsonErrText(err))
		}
		return []string{s}, nil
	case "an array":
		var elems []json.RawMessage
		if err := json.Unmarshal(raw, &elems); err != nil {
			return nil, BadRequest("stop", "Invalid value for 'stop': %s", jsonErrText(err))
		}
		out := make([]string, len(elems))
		for i, e := range elems {
			if jsonKind(e) != "a string" {
				return nil, BadRequest(fmt.Sprintf("stop[%d]", i), "Invalid type for 'stop[%d]': expected a string, but got %s instead.", i, jsonKind(e))
			}
			if err := json.Unmarshal(e, &out[i]); err != nil {
				return nil, BadRequest(fmt.Sprintf("stop[%d]", i), "Invalid value for 'stop[%d]': %s", i, jsonErrText(err))
			}
		}
		return out, nil
	}
	return nil, BadRequest("stop", "Invalid type for 'stop': expected a string or an array of strings, but got %s instead.", jsonKind(raw))
}

// encodeObject marshals the struct v points to (through its json tags, without its methods)
// and appends extra's keys that the struct does not already hold.
func encodeObject(v any, extra map[string]json.RawMessage) ([]byte, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	if len(extra) == 0 {
		return b, nil
	}
	ft := tableOf(reflect.TypeOf(v).Elem())
	var buf bytes.Buffer
	buf.Write(b[:len(b)-1])
	first := len(b) == 2
	for _, k := range slices.Sorted(maps.Keys(extra)) {
		if _, known := ft[k]; known {
			continue
		}
		raw := extra[k]
		if !first {
			buf.WriteByte(',')
		}
		first = false
		kb, _ := json.Marshal(k)
		buf.Write(kb)
		buf.WriteByte(':')
		buf.Write(raw)
	}
	buf.WriteByte('}')
	return buf.Bytes(), nil
}
