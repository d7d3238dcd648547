package openai_test

import (
	"encoding/json"
	"errors"
	"testing"

	"github.com/kvgate/kvgate/openai"
)

// TestResponsesChatMessages checks the conversion of Responses input to chat messages
// against what vLLM's Responses serving builds before applying the chat template.
func TestResponsesChatMessages(t *testing.T) {
	tests := []struct {
		name, body      string
		messages, tools string
	}{
		{"string input with instructions",
			`{"input":"hi","instructions":"be brief"}`,
			`[{"role":"system","content":"be brief"},{"role":"user","content":"hi"}]`, ``},
		{"empty instructions add nothing",
			`{"input":"hi","instructions":""}`,
			`[{"role":"user","content":"hi"}]`, ``},
		{"message items, input_text parts become text parts",
			`{"input":[{"type":"message","role":"developer","content":"rules"},{"role":"user","content":[{"type":"input_text","text":"a"},{"type":"input_text","text":"b"}]}]}`,
			`[{"role":"developer","content":"rules"},{"role":"user","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]}]`, ``},
		{"assistant output message is its first part's text",
			`{"input":[{"role":"user","content":"q"},{"type":"message","role":"assistant","content":[{"type":"output_text","text":"ans","annotations":[]}],"status":"completed","id":"msg_1"}]}`,
			`[{"role":"user","content":"q"},{"role":"assistant","content":"ans"}]`, ``},
		{"function calls join the assistant message, outputs become tool messages",
			`{"input":[{"role":"user","content":"weather?"},{"role":"assistant","content":"checking"},` +
				`{"type":"function_call","call_id":"c1","name":"get","arguments":"{\"city\":\"Oslo\"}"},` +
				`{"type":"function_call","call_id":"c2","name":"get","arguments":"{}"},` +
				`{"type":"function_call_output","call_id":"c1","output":"rain"}]}`,
			`[{"role":"user","content":"weather?"},{"role":"assistant","content":"checking","tool_calls":[` +
				`{"id":"c1","type":"function","function":{"name":"get","arguments":"{\"city\":\"Oslo\"}"}},` +
				`{"id":"c2","type":"function","function":{"name":"get","arguments":"{}"}}]},` +
				`{"role":"tool","content":"rain","tool_call_id":"c1"}]`, ``},
		{"a function call without an assistant message starts one; later text fills it",
			`{"input":[{"role":"user","content":"x"},{"type":"function_call","call_id":"c","name":"f","arguments":"{}"},{"role":"assistant","content":"done"}]}`,
			`[{"role":"user","content":"x"},{"role":"assistant","content":"done","tool_calls":[{"id":"c","type":"function","function":{"name":"f","arguments":"{}"}}]}]`, ``},
		{"function tools in chat form",
			`{"input":"x","tools":[{"type":"function","name":"get","description":"d","parameters":{"type":"object"},"strict":true}]}`,
			`[{"role":"user","content":"x"}]`,
			`[{"type":"function","function":{"name":"get","description":"d","parameters":{"type":"object"}}}]`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := openai.ParseResponsesRequest([]byte(tt.body))
			if err != nil {
				t.Fatal(err)
			}
			msgs, tools, err := r.ChatMessages()
			if err != nil {
				t.Fatal(err)
			}
			if string(msgs) != tt.messages {
				t.Errorf("messages\n got %s\nwant %s", msgs, tt.messages)
			}
			if string(tools) != tt.tools {
				t.Errorf("tools\n got %s\nwant %s", tools, tt.tools)
			}
		})
	}
}

func TestResponsesRequestErrors(t *testing.T) {
	tests := []struct{ name, body, param string }{
		{"not an object", `[1]`, ""},
		{"no input", `{"model":"m"}`, "input"},
		{"input a number", `{"input":1}`, "input"},
		{"previous_response_id", `{"input":"x","previous_response_id":"resp_1"}`, "previous_response_id"},
		{"conversation", `{"input":"x","conversation":"conv_1"}`, "conversation"},
		{"background", `{"input":"x","background":true}`, "background"},
		{"max_output_tokens", `{"input":"x","max_output_tokens":0}`, "max_output_tokens"},
		{"temperature", `{"input":"x","temperature":3}`, "temperature"},
		{"stream type", `{"input":"x","stream":"yes"}`, "stream"},
		{"item not an object", `{"input":["x"]}`, "input[0]"},
		{"unknown role", `{"input":[{"role":"tool","content":"x"}]}`, "input[0].role"},
		{"message without content", `{"input":[{"role":"user"}]}`, "input[0].content"},
		{"part without text", `{"input":[{"role":"user","content":[{"type":"input_text"}]}]}`, "input[0].content[0].text"},
		{"function_call without name", `{"input":[{"type":"function_call","call_id":"c","arguments":"{}"}]}`, "input[0].name"},
		{"function_call_output without call_id", `{"input":[{"type":"function_call_output","output":"x"}]}`, "input[0].call_id"},
		{"item_reference", `{"input":[{"type":"item_reference","id":"msg_1"}]}`, "input[0]"},
		{"tool without name", `{"input":"x","tools":[{"type":"function"}]}`, "tools[0].name"},
		{"tools not an array", `{"input":"x","tools":{}}`, "tools"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := openai.ParseResponsesRequest([]byte(tt.body))
			var e *openai.Error
			if !errors.As(err, &e) || e.Status != 400 || e.Param != tt.param {
				t.Fatalf("got %v (%+v), want a 400 naming %q", err, e, tt.param)
			}
		})
	}
}

// TestResponsesUnrenderable: valid input the router cannot render as text is not an error
// of the request; it is routed by load alone.
func TestResponsesUnrenderable(t *testing.T) {
	for _, body := range []string{
		`{"input":[{"role":"user","content":[{"type":"input_image","image_url":"http://x/y.png"}]}]}`,
		`{"input":"x","tools":[{"type":"web_search"}]}`,
		`{"input":[{"type":"web_search_call","id":"ws_1","status":"completed"}]}`,
	} {
		r, err := openai.ParseResponsesRequest([]byte(body))
		if err != nil {
			t.Fatalf("%s: %v", body, err)
		}
		if _, _, err := r.ChatMessages(); !errors.Is(err, openai.ErrUnrenderable) {
			t.Errorf("%s: %v, want ErrUnrenderable", body, err)
		}
	}
}

func TestEmbeddingRequest(t *testing.T) {
	good := []struct {
		body  string
		count int
	}{
		{`{"model":"m","input":"hello"}`, 1},
		{`{"input":["a","b","c"],"encoding_format":"base64"}`, 3},
		{`{"input":[1,2,3]}`, 1},
		{`{"input":[[1,2],[3]],"dimensions":8}`, 2},
	}
	for _, g := range good {
		r, err := openai.ParseEmbeddingRequest([]byte(g.body))
		if err != nil || r.Input.Count() != g.count {
			t.Errorf("%s: %v %+v", g.body, err, r)
		}
	}
	bad := []struct{ body, param string }{
		{`{"model":"m"}`, "input"},
		{`{"input":[]}`, "input"},
		{`{"input":[[]]}`, "input[0]"},
		{`{"input":["a",1]}`, "input[1]"},
		{`{"input":[-1]}`, "input"},
		{`{"input":"x","encoding_format":"int8"}`, "encoding_format"},
		{`{"input":"x","dimensions":0}`, "dimensions"},
	}
	for _, b := range bad {
		_, err := openai.ParseEmbeddingRequest([]byte(b.body))
		var e *openai.Error
		if !errors.As(err, &e) || e.Status != 400 || e.Param != b.param {
			t.Errorf("%s: got %v (%+v), want a 400 naming %q", b.body, err, e, b.param)
		}
	}
}

// TestBodyWatcherResponses: a Responses stream's first token is its first text delta, not
// the events that open it, and its usage is the one inside response.completed.
func TestBodyWatcherResponses(t *testing.T) {
	w := openai.NewBodyWatcher(true, 1<<20)
	events := []struct {
		ev    string
		first bool
	}{
		{"event: response.created\ndata: {\"type\":\"response.created\",\"sequence_number\":0,\"response\":{\"id\":\"r\",\"usage\":null}}\n\n", false},
		{"event: response.in_progress\ndata: {\"type\":\"response.in_progress\",\"sequence_number\":1,\"response\":{\"id\":\"r\"}}\n\n", false},
		{"event: response.output_item.added\ndata: {\"type\":\"response.output_item.added\",\"sequence_number\":2}\n\n", false},
		{"event: response.content_part.added\ndata: {\"type\":\"response.content_part.added\",\"sequence_number\":3}\n\n", false},
		{"event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"sequence_number\":4,\"delta\":\"Hi\"}\n\n", true},
		{"event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"sequence_number\":5,\"delta\":\" \\\"response.created\\\"\"}\n\n", false},
		{"event: response.completed\ndata: {\"type\":\"response.completed\",\"sequence_number\":6,\"response\":{\"id\":\"r\",\"usage\":{\"input_tokens\":40,\"input_tokens_details\":{\"cached_tokens\":32},\"output_tokens\":2,\"total_tokens\":42}}}\n\n", false},
	}
	for i, e := range events {
		if got := w.Write([]byte(e.ev)); got != e.first {
			t.Errorf("event %d: first token %v, want %v", i, got, e.first)
		}
	}
	u := w.Close()
	if u == nil || u.PromptTokens != 40 || u.CompletionTokens != 2 || u.CachedTokens() != 32 {
		t.Fatalf("usage %+v", u)
	}
	// A whole response object.
	body := `{"id":"r","object":"response","usage":{"input_tokens":7,"output_tokens":3,"total_tokens":10,"input_tokens_details":{"cached_tokens":0}}}`
	if u, ok := openai.UsageFromBody([]byte(body)); !ok || u.PromptTokens != 7 || u.CompletionTokens != 3 {
		t.Errorf("whole response usage %+v %v", u, ok)
	}
	// Chat usage reads as before.
	if u, ok := openai.UsageFromBody([]byte(`{"usage":{"prompt_tokens":5,"completion_tokens":1,"total_tokens":6,"prompt_tokens_details":{"cached_tokens":4}}}`)); !ok || u.PromptTokens != 5 || u.CachedTokens() != 4 {
		t.Errorf("chat usage %+v %v", u, ok)
	}
}

func FuzzResponsesRequest(f *testing.F) {
	for _, s := range []string{
		`{"input":"hi","instructions":"x"}`,
		`{"input":[{"role":"user","content":[{"type":"input_text","text":"a"}]},{"type":"function_call","call_id":"c","name":"f","arguments":"{}"},{"type":"function_call_output","call_id":"c","output":"o"}]}`,
		`{"input":"x","tools":[{"type":"function","name":"f","parameters":{}}]}`,
		`{"input":[{"type":"reasoning","summary":[{"type":"summary_text","text":"t"}]}]}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		r, err := openai.ParseResponsesRequest(body)
		if err != nil {
			var e *openai.Error
			if !errors.As(err, &e) || e.Status != 400 {
				t.Fatalf("error %v is not a 400 *Error", err)
			}
			return
		}
		msgs, tools, err := r.ChatMessages()
		if err != nil {
			if !errors.Is(err, openai.ErrUnrenderable) {
				t.Fatalf("validated request failed to convert: %v", err)
			}
			return
		}
		if !json.Valid(msgs) || (tools != nil && !json.Valid(tools)) {
			t.Fatalf("invalid JSON: %s %s", msgs, tools)
		}
	})
}

func FuzzEmbeddingRequest(f *testing.F) {
	for _, s := range []string{`{"input":"a"}`, `{"input":["a","b"]}`, `{"input":[1,2]}`, `{"input":[[1],[2,3]],"dimensions":4}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		r, err := openai.ParseEmbeddingRequest(body)
		if err != nil {
			var e *openai.Error
			if !errors.As(err, &e) || e.Status != 400 {
				t.Fatalf("error %v is not a 400 *Error", err)
			}
			return
		}
		if r.Input.Count() == 0 {
			t.Fatal("accepted an empty input")
		}
	})
}
