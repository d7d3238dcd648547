package openai

// The request parser as it was before the one-pass scanner (encoding/json decoding the body into
// a map, then the messages again), kept as the reference model that the differential tests and
// fuzz targets compare ParseChatRequest and ParseCompletionRequest with.

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"reflect"
	"slices"
	"testing"
	"unicode/utf8"
)

// refDecodeObject is decodeObject as it was. The old one visited the keys in Go's map order,
// which is random, so with two bad fields it reported either; this one visits them in the
// order the new parser does (the order of each key's last occurrence), one of the orders the
// old one could take.
func refDecodeObject(body []byte, dst any, spec special) (map[string]json.RawMessage, error) {
	body = bytes.TrimSpace(body)
	if len(body) == 0 {
		return nil, BadRequest("", "The request body is empty; expected a JSON object.")
	}
	if !utf8.Valid(body) {
		return nil, BadRequest("", "The request body is not valid UTF-8.")
	}
	if body[0] != '{' {
		if !json.Valid(body) {
			return nil, BadRequest("", "The request body is not valid JSON.")
		}
		return nil, BadRequest("", "The request body must be a JSON object.")
	}
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(body, &fields); err != nil {
		return nil, BadRequest("", "The request body is not valid JSON: %s", jsonErrText(err))
	}
	v := reflect.ValueOf(dst).Elem()
	ft := tableOf(v.Type())
	var extra map[string]json.RawMessage
	for _, key := range keyOrder(body) {
		raw := fields[key]
		if spec != nil {
			done, err := spec(key, raw)
			if err != nil {
				return nil, err
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
		if err := json.Unmarshal(raw, f.Addr().Interface()); err != nil {
			return nil, typeError(key, err)
		}
	}
	return extra, nil
}

// keyOrder lists the distinct top-level keys of a valid JSON object in the order of their last
// occurrence.
func keyOrder(body []byte) []string {
	dec := json.NewDecoder(bytes.NewReader(body))
	var keys []string
	if _, err := dec.Token(); err != nil {
		panic(err)
	}
	for dec.More() {
		kt, err := dec.Token()
		if err != nil {
			panic(err)
		}
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			panic(err)
		}
		k := kt.(string)
		keys = slices.DeleteFunc(keys, func(s string) bool { return s == k })
		keys = append(keys, k)
	}
	if _, err := dec.Token(); err != nil {
		panic(err)
	}
	if _, err := dec.Token(); err != io.EOF {
		panic(fmt.Sprint("trailing data: ", err))
	}
	return keys
}

// refParseChat is ParseChatRequest as it was.
func refParseChat(body []byte) (*ChatRequest, error) {
	r := &ChatRequest{}
	extra, err := refDecodeObject(body, r, func(key string, raw json.RawMessage) (bool, error) {
		if key != "stop" {
			return false, nil
		}
		s, err := decodeStop(raw)
		r.Stop = s
		return true, err
	})
	if err != nil {
		return nil, err
	}
	r.Extra = extra
	if err := refValidateMessages(r.Messages); err != nil {
		return nil, err
	}
	if err := r.validate(nil); err != nil { // the checks after the messages' are unchanged
		return nil, err
	}
	return r, nil
}

// refParseCompletion is ParseCompletionRequest as it was.
func refParseCompletion(body []byte) (*CompletionRequest, error) {
	r := &CompletionRequest{}
	extra, err := refDecodeObject(body, r, func(key string, raw json.RawMessage) (bool, error) {
		switch key {
		case "stop":
			s, err := decodeStop(raw)
			r.Stop = s
			return true, err
		case "prompt":
			if isNull(raw) {
				return true, nil
			}
			p, err := refDecodePrompt(raw)
			r.Prompt = p
			return true, err
		}
		return false, nil
	})
	if err != nil {
		return nil, err
	}
	r.Extra = extra
	if err := r.validate(); err != nil {
		return nil, err
	}
	return r, nil
}

// sameOutcome fails t unless the two parses agree: both accept with equal requests, or both
// refuse with the same *Error.
func sameOutcome(t *testing.T, body []byte, got, want any, gotErr, wantErr error) {
	t.Helper()
	if len(body) > 300 {
		body = append(body[:300:300], "..."...)
	}
	if (gotErr == nil) != (wantErr == nil) {
		t.Fatalf("body %q: error %v, reference %v", body, gotErr, wantErr)
	}
	if wantErr != nil {
		var g, w *Error
		if !errors.As(gotErr, &g) || !errors.As(wantErr, &w) {
			t.Fatalf("body %q: errors %T %T", body, gotErr, wantErr)
		}
		if !reflect.DeepEqual(*g, *w) {
			t.Fatalf("body %q:\n error     %+v\n reference %+v", body, *g, *w)
		}
		return
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("body %q:\n parsed    %+v\n reference %+v", body, got, want)
	}
}

// refValidateMessages checks messages: a non-empty array of objects, each with a string role and a
// content that is a string, an array of objects or null.
func refValidateMessages(raw json.RawMessage) error {
	if raw == nil {
		return BadRequest("messages", "Missing required parameter: 'messages'.")
	}
	if jsonKind(raw) != "an array" {
		return BadRequest("messages", "Invalid type for 'messages': expected an array of objects, but got %s instead.", jsonKind(raw))
	}
	// One decoding pass: an element that is not an object fails it, and is then found below.
	var objs []map[string]json.RawMessage
	if err := json.Unmarshal(raw, &objs); err != nil {
		var msgs []json.RawMessage
		if json.Unmarshal(raw, &msgs) != nil {
			return BadRequest("messages", "Invalid value for 'messages': %s", jsonErrText(err))
		}
		for i, m := range msgs {
			if jsonKind(m) != "an object" {
				p := fmt.Sprintf("messages[%d]", i)
				return BadRequest(p, "Invalid type for '%s': expected an object, but got %s instead.", p, jsonKind(m))
			}
		}
		return BadRequest("messages", "Invalid value for 'messages': %s", jsonErrText(err))
	}
	if len(objs) == 0 {
		return BadRequest("messages", "Invalid 'messages': empty array. Expected an array with minimum length 1, but got an empty array instead.")
	}
	for i, obj := range objs {
		p := fmt.Sprintf("messages[%d]", i)
		if obj == nil { // null element
			return BadRequest(p, "Invalid type for '%s': expected an object, but got null instead.", p)
		}
		role, ok := obj["role"]
		if !ok {
			return BadRequest(p+".role", "Missing required parameter: '%s.role'.", p)
		}
		var rs string
		if jsonKind(role) != "a string" || json.Unmarshal(role, &rs) != nil {
			return BadRequest(p+".role", "Invalid type for '%s.role': expected a string, but got %s instead.", p, jsonKind(role))
		}
		if rs == "" {
			return BadRequest(p+".role", "Invalid value for '%s.role': must not be empty.", p)
		}
		if !slices.Contains(roles[:], rs) {
			return BadRequest(p+".role", "Invalid value for '%s.role': '%s' is not one of %s.", p, rs, rolesText)
		}
		if c, ok := obj["content"]; ok {
			switch jsonKind(c) {
			case "a string", "null":
			case "an array":
				var parts []json.RawMessage
				if err := json.Unmarshal(c, &parts); err != nil {
					return BadRequest(p+".content", "Invalid value for '%s.content': %s", p, jsonErrText(err))
				}
				for j, part := range parts {
					if jsonKind(part) != "an object" {
						pp := fmt.Sprintf("%s.content[%d]", p, j)
						return BadRequest(pp, "Invalid type for '%s': expected an object, but got %s instead.", pp, jsonKind(part))
					}
				}
			default:
				return BadRequest(p+".content", "Invalid type for '%s.content': expected a string or an array of content parts, but got %s instead.", p, jsonKind(c))
			}
		}
		if tc, ok := obj["tool_calls"]; ok {
			if k := jsonKind(tc); k != "an array" && k != "null" {
				return BadRequest(p+".tool_calls", "Invalid type for '%s.tool_calls': expected an array, but got %s instead.", p, k)
			}
		}
	}
	return nil
}

func refDecodePrompt(raw json.RawMessage) (Prompt, error) {
	badType := func(param, got string) error {
		return BadRequest(param, "Invalid type for '%s': expected a string, an array of strings, an array of token ids or an array of token id arrays, but got %s instead.", param, got)
	}
	switch jsonKind(raw) {
	case "a string":
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return Prompt{}, BadRequest("prompt", "Invalid value for 'prompt': %s", jsonErrText(err))
		}
		return Prompt{Texts: []string{s}, Single: true}, nil
	case "an array":
	default:
		return Prompt{}, badType("prompt", jsonKind(raw))
	}
	var elems []json.RawMessage
	if err := json.Unmarshal(raw, &elems); err != nil {
		return Prompt{}, BadRequest("prompt", "Invalid value for 'prompt': %s", jsonErrText(err))
	}
	if len(elems) == 0 {
		return Prompt{}, BadRequest("prompt", "Invalid value for 'prompt': the prompt must not be empty.")
	}
	switch jsonKind(elems[0]) {
	case "a string":
		out := make([]string, len(elems))
		for i, e := range elems {
			if jsonKind(e) != "a string" || json.Unmarshal(e, &out[i]) != nil {
				return Prompt{}, badType(fmt.Sprintf("prompt[%d]", i), jsonKind(e))
			}
		}
		return Prompt{Texts: out}, nil
	case "a number":
		ids, err := decodeIDs("prompt", raw)
		if err != nil {
			return Prompt{}, err
		}
		return Prompt{Tokens: [][]uint32{ids}, Single: true}, nil
	case "an array":
		out := make([][]uint32, len(elems))
		for i, e := range elems {
			p := fmt.Sprintf("prompt[%d]", i)
			if jsonKind(e) != "an array" {
				return Prompt{}, badType(p, jsonKind(e))
			}
			ids, err := decodeIDs(p, e)
			if err != nil {
				return Prompt{}, err
			}
			if len(ids) == 0 {
				return Prompt{}, BadRequest(p, "Invalid value for '%s': the prompt must not be empty.", p)
			}
			out[i] = ids
		}
		return Prompt{Tokens: out}, nil
	}
	return Prompt{}, badType("prompt[0]", jsonKind(elems[0]))
}
