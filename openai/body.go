package openai

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
)

// DefaultMaxBodyBytes is the largest request body kvgate's servers accept unless configured
// otherwise: the gateway, ext_proc, the router and the P/D sidecar.
const DefaultMaxBodyBytes = 16 << 20

// ReadBody reads at most limit bytes of r; a longer body is a 413 *Error. A limit <= 0 means
// no limit.
func ReadBody(r io.Reader, limit int64) ([]byte, error) {
	if limit <= 0 {
		return io.ReadAll(r)
	}
	b, err := io.ReadAll(io.LimitReader(r, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > limit {
		return nil, TooLarge(limit)
	}
	return b, nil
}

// SetField returns body (a JSON object) with the top-level key set to value: replaced in place
// when present, appended otherwise. Every other byte of the body is kept as it came.
func SetField(body []byte, key string, value json.RawMessage) ([]byte, error) {
	start, end, found, err := findField(body, key)
	if err != nil {
		return nil, err
	}
	var out bytes.Buffer
	out.Grow(len(body) + len(key) + len(value) + 4)
	if found {
		out.Write(body[:start])
		out.Write(value)
		out.Write(body[end:])
		return out.Bytes(), nil
	}
	return AppendField(body, key, value)
}

// AppendField returns body (a JSON object) with "key": value added before its closing brace,
// without looking for an existing key: for callers that know the key is absent (a parsed
// request without the field). Every other byte is kept.
func AppendField(body []byte, key string, value json.RawMessage) ([]byte, error) {
	brace := bytes.LastIndexByte(body, '}')
	open := bytes.IndexByte(body, '{')
	if brace < 0 || open < 0 || open > brace {
		return nil, BadRequest("", "The request body must be a JSON object.")
	}
	head := bytes.TrimRight(body[:brace], " \t\r\n")
	var out bytes.Buffer
	out.Grow(len(body) + len(key) + len(value) + 4)
	out.Write(head)
	if head[len(head)-1] != '{' {
		out.WriteByte(',')
	}
	kb, _ := json.Marshal(key)
	out.Write(kb)
	out.WriteByte(':')
	out.Write(value)
	out.Write(body[brace:])
	return out.Bytes(), nil
}

// findField locates the value of the last top-level occurrence of key in the object body.
func findField(body []byte, key string) (start, end int, found bool, err error) {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	tok, err := dec.Token()
	if err != nil {
		return 0, 0, false, BadRequest("", "The request body is not valid JSON.")
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		return 0, 0, false, BadRequest("", "The request body must be a JSON object.")
	}
	for dec.More() {
		kt, err := dec.Token()
		if err != nil {
			return 0, 0, false, BadRequest("", "The request body is not valid JSON.")
		}
		k, _ := kt.(string)
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return 0, 0, false, BadRequest("", "The request body is not valid JSON.")
		}
		if k == key {
			e := int(dec.InputOffset())
			start, end, found = e-len(raw), e, true
		}
	}
	if _, err := dec.Token(); err != nil {
		return 0, 0, false, BadRequest("", "The request body is not valid JSON.")
	}
	if _, err := dec.Token(); err != io.EOF {
		return 0, 0, false, BadRequest("", "The request body is not valid JSON.")
	}
	return start, end, found, nil
}

// WithIncludeUsage returns a streaming body with stream_options.include_usage forced on (other
// stream_options kept), so that the stream ends with a usage chunk the gateway can account;
// changed is false when the body already asked for it.
func WithIncludeUsage(body []byte) (out []byte, changed bool, err error) {
	start, end, found, err := findField(body, "stream_options")
	if err != nil {
		return nil, false, err
	}
	opts := map[string]json.RawMessage{}
	if found && !isNull(body[start:end]) {
		if err := json.Unmarshal(body[start:end], &opts); err != nil {
			return nil, false, errors.Join(BadRequest("stream_options", "Invalid type for 'stream_options': expected an object."), err)
		}
		if string(opts["include_usage"]) == "true" {
			return body, false, nil
		}
	}
	opts["include_usage"] = json.RawMessage("true")
	v, err := json.Marshal(opts)
	if err != nil {
		return nil, false, err
	}
	if !found {
		out, err = AppendField(body, "stream_options", v)
		return out, err == nil, err
	}
	out = make([]byte, 0, len(body)+len(v))
	out = append(append(append(out, body[:start]...), v...), body[end:]...)
	return out, true, nil
}
