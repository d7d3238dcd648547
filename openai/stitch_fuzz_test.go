package openai

import (
	"encoding/json"
	"testing"
)

// FuzzStitch feeds a client body and an engine's stream chunks to the stitching state:
// no input panics, every chunk sent on is an SSE event of a JSON object, and the
// continuation of an accepted request is a JSON object.
func FuzzStitch(f *testing.F) {
	f.Add(true, []byte(`{"model":"m","stream":true,"max_tokens":5,"messages":[{"role":"user","content":"hi"}]}`),
		[]byte(`{"id":"x","choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}`),
		[]byte(`{"id":"x","choices":[{"index":0,"delta":{"content":" the"}}],"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}`))
	f.Add(false, []byte(`{"model":"m","stream":true,"prompt":"a","min_tokens":2,"stream_options":{"include_usage":true,"continuous_usage_stats":true}}`),
		[]byte(`{"id":"y","choices":[{"index":0,"text":" of","finish_reason":"length"}]}`),
		[]byte(`{"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}`))
	f.Add(true, []byte(`{"stream":true,"messages":[]}`), []byte(`{"error":{"message":"x"}}`), []byte(`[1]`))
	f.Fuzz(func(t *testing.T, chat bool, body, c1, c2 []byte) {
		path := "/v1/completions"
		if chat {
			path = "/v1/chat/completions"
		}
		m := NewStitch(path, body)
		if m == nil {
			return
		}
		for i, c := range [][]byte{c1, c2} {
			out, _, _, err := m.Rewrite(c)
			if err != nil || out == nil {
				continue
			}
			if len(out) < 8 || string(out[:6]) != "data: " || string(out[len(out)-2:]) != "\n\n" || !json.Valid(out[6:len(out)-2]) {
				t.Fatalf("chunk %d sent on as %q", i, out)
			}
			if i == 0 {
				m.Next() // the second chunk comes from a continuation
			}
		}
		b, err := m.Continuation()
		if err != nil {
			return
		}
		var v map[string]json.RawMessage
		if json.Unmarshal(b, &v) != nil {
			t.Fatalf("continuation is not a JSON object: %q", b)
		}
	})
}
