package openai_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"testing"
	"unicode/utf8"

	"github.com/kvgate/kvgate/openai"
)

var knownRole = map[string]bool{"system": true, "developer": true, "user": true, "assistant": true, "tool": true, "function": true}

func FuzzParseChatRequest(f *testing.F) {
	for _, s := range []string{
		`{"model":"m","messages":[{"role":"user","content":"hi"}]}`,
		`{"messages":[{"role":"user","content":[{"type":"text","text":"x"}]}],"stream":true,"stream_options":{"include_usage":true},"stop":["a"],"tools":[{"type":"function","function":{"name":"f"}}],"tool_choice":"auto"}`,
		`{"messages":[{"role":"assistant","content":null,"tool_calls":[]}],"max_tokens":1,"n":2,"temperature":0.5,"extra":{"a":[1,2]}}`,
		`{"messages":[],"stop":3}`, `[]`, `null`, ``, `{"messages":`,
		`{"messages":[{"role":"wizard","content":"hi"}]}`, "{\"messages\":[{\"role\":\"user\",\"content\":\"\xff\"}]}",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		r, err := openai.ParseChatRequest(body)
		if err != nil {
			var e *openai.Error
			if !errors.As(err, &e) || e.Status != 400 {
				t.Fatalf("error %v is not a 400 *Error", err)
			}
			return
		}
		if !utf8.Valid(body) {
			t.Fatalf("accepted a body that is not UTF-8: %q", body)
		}
		var msgs []struct{ Role string }
		if err := json.Unmarshal(r.Messages, &msgs); err != nil {
			t.Fatalf("accepted messages that do not decode: %v", err)
		}
		for _, m := range msgs {
			if !knownRole[m.Role] {
				t.Fatalf("accepted role %q", m.Role)
			}
		}
		// An accepted request marshals, and what it marshals to is accepted again.
		out, err := json.Marshal(r)
		if err != nil {
			t.Fatalf("marshal: %v", err)
		}
		if _, err := openai.ParseChatRequest(out); err != nil {
			t.Fatalf("re-parse of %s: %v", out, err)
		}
		if r.Stream {
			if _, _, err := openai.WithIncludeUsage(body); err != nil {
				t.Fatalf("WithIncludeUsage: %v", err)
			}
		}
	})
}

func FuzzParseCompletionRequest(f *testing.F) {
	for _, s := range []string{
		`{"model":"m","prompt":"hello"}`, `{"prompt":["a","b"],"max_tokens":3}`,
		`{"prompt":[1,2,3],"stream":true}`, `{"prompt":[[1],[2,3]],"stop":"x"}`,
		`{"prompt":[]}`, `{"prompt":[-1]}`, `{}`, `"x"`, "{\"prompt\":\"\xc3(\"}",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		r, err := openai.ParseCompletionRequest(body)
		if err != nil {
			var e *openai.Error
			if !errors.As(err, &e) || e.Status != 400 {
				t.Fatalf("error %v is not a 400 *Error", err)
			}
			return
		}
		if !utf8.Valid(body) {
			t.Fatalf("accepted a body that is not UTF-8: %q", body)
		}
		out, err := json.Marshal(r)
		if err != nil {
			t.Fatalf("marshal: %v", err)
		}
		if _, err := openai.ParseCompletionRequest(out); err != nil {
			t.Fatalf("re-parse of %s: %v", out, err)
		}
	})
}

func FuzzSSEReader(f *testing.F) {
	for _, s := range []string{
		"data: {\"a\":1}\n\ndata: [DONE]\n\n", "data: x\r\n\r\n", "data:a\rdata:b\r\r", ": c\nevent: e\ndata\n\n", "data: tail",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		r := openai.NewSSEReader(bytes.NewReader(in))
		var events [][]byte
		for i := 0; ; i++ {
			d, err := r.Next()
			if err != nil {
				if !errors.Is(err, io.EOF) {
					t.Fatalf("error %v", err)
				}
				break
			}
			if i > len(in) {
				t.Fatal("more events than input bytes")
			}
			events = append(events, bytes.Clone(d))
			_, _ = openai.UsageFromChunk(d)
		}
		// What WriteSSE writes reads back as the same events (data without '\r').
		var buf bytes.Buffer
		for _, e := range events {
			if bytes.IndexByte(e, '\r') >= 0 {
				return
			}
			if err := openai.WriteSSE(&buf, e); err != nil {
				t.Fatal(err)
			}
		}
		r = openai.NewSSEReader(&buf)
		for i, want := range events {
			got, err := r.Next()
			if err != nil || !bytes.Equal(got, want) {
				t.Fatalf("event %d: %q %v, want %q", i, got, err, want)
			}
		}
	})
}
