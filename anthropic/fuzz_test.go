package anthropic_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"testing"

	"github.com/kvgate/kvgate/anthropic"
	"github.com/kvgate/kvgate/openai"
)

// FuzzParse: any body is parsed or refused with a 400 *openai.Error, never a panic; what is
// parsed converts to a chat body that OpenAI's validation reads.
func FuzzParse(f *testing.F) {
	for _, s := range []string{
		`{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}`,
		`{"model":"m","max_tokens":5,"system":[{"type":"text","text":"s"}],"messages":[{"role":"user","content":[{"type":"text","text":"a"},{"type":"image","source":{"data":"x"}}]}]}`,
		`{"model":"m","max_tokens":5,"tools":[{"name":"f","input_schema":{}}],"tool_choice":{"type":"tool","name":"f"},"messages":[{"role":"assistant","content":[{"type":"tool_use","id":"1","name":"f","input":{"a":[1.5e300,"é",null,true]}}]},{"role":"user","content":[{"type":"tool_result","tool_use_id":"1","content":[{"type":"text","text":"it's \"x\""}]}]}]}`,
		`{"model":"m","max_tokens":1e3,"temperature":0.5,"top_k":-1,"stop_sequences":["x"],"stream":true,"messages":[{"role":"ctx","content":"q"}]}`,
		`[]`, `{`, `{"model":1}`, ``,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		r, err := anthropic.Parse(body)
		if err != nil {
			var e *openai.Error
			if !errors.As(err, &e) || e.Status != 400 {
				t.Fatalf("error %v is not a 400 *openai.Error", err)
			}
			return
		}
		c, err := r.ToChat()
		if err != nil {
			return
		}
		if !json.Valid(c.Messages) || (c.Tools != nil && !json.Valid(c.Tools)) {
			t.Fatalf("invalid JSON: %s / %s", c.Messages, c.Tools)
		}
		if _, err := openai.ParseChatRequest(c.Body); err != nil {
			t.Fatalf("chat body %s refused: %v", c.Body, err)
		}
	})
}

// FuzzEventReader: any byte stream reads as events or an error, never a panic; the events of
// a stream written with AppendEvent read back as written.
func FuzzEventReader(f *testing.F) {
	f.Add([]byte("event: message_start\ndata: {\"type\":\"message_start\"}\n\n"), "ping", []byte(`{"type":"ping"}`))
	f.Add([]byte("data: a\r\ndata: b\r\r: c\nevent: x\n"), "error", []byte(`{}`))
	f.Add([]byte("\r\n\n\revent\ndata\n\n"), "", []byte(``))
	f.Fuzz(func(t *testing.T, stream []byte, name string, data []byte) {
		er := anthropic.NewEventReader(bytes.NewReader(stream))
		for range 10000 {
			if _, err := er.Next(); err != nil {
				break
			}
		}
		if bytes.ContainsAny(data, "\r\n") || bytes.ContainsAny([]byte(name), "\r\n") || name == "" {
			return
		}
		if len(data) > 0 && data[0] == ' ' || len(name) > 0 && name[0] == ' ' {
			return // one leading space is the field's separator
		}
		w := anthropic.AppendEvent(anthropic.AppendEvent(nil, name, data), anthropic.EventPing, []byte("{}"))
		er = anthropic.NewEventReader(bytes.NewReader(w))
		ev, err := er.Next()
		if err != nil || ev.Name != name || !bytes.Equal(ev.Data, data) {
			t.Fatalf("read back %q %q %v, wrote %q %q", ev.Name, ev.Data, err, name, data)
		}
		if ev, err := er.Next(); err != nil || ev.Name != anthropic.EventPing {
			t.Fatalf("second event %q %v", ev.Name, err)
		}
		if _, err := er.Next(); err != io.EOF {
			t.Fatalf("after the last event: %v", err)
		}
	})
}

// FuzzStreamConverter: any chat chunk data converts or is refused, never panics, and the
// stream always ends with message_delta and message_stop.
func FuzzStreamConverter(f *testing.F) {
	f.Add([]byte(`{"id":"x","model":"m","choices":[{"index":0,"delta":{"content":"hi"},"finish_reason":null}],"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}`))
	f.Add([]byte(`{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"c","function":{"name":"f","arguments":"{"}}]}}]}`))
	f.Add([]byte(`{"choices":[{"index":0,"delta":{},"finish_reason":"stop","stop_reason":"END"}]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		var c anthropic.StreamConverter
		out, _ := c.Chunk(nil, data)
		out = c.End(out)
		if !bytes.HasSuffix(out, []byte("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n")) {
			t.Fatalf("stream ends %q", out)
		}
	})
}
