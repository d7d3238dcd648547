package anthropic_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/kvgate/kvgate/anthropic"
	"github.com/kvgate/kvgate/openai"
)

func TestParseRefuses(t *testing.T) {
	const msgs = `"messages":[{"role":"user","content":"hi"}]`
	for _, tc := range []struct {
		name, body, param, want string
	}{
		{"empty", ``, "", "empty"},
		{"not object", `[1]`, "", "JSON object"},
		{"bad json", `{"model":`, "", "not valid JSON"},
		{"no model", `{"max_tokens":5,` + msgs + `}`, "model", "Field required"},
		{"model number", `{"model":3,"max_tokens":5,` + msgs + `}`, "model", "expected a string"},
		{"no max_tokens", `{"model":"m",` + msgs + `}`, "max_tokens", "Field required"},
		{"max_tokens zero", `{"model":"m","max_tokens":0,` + msgs + `}`, "max_tokens", "at least 1"},
		{"max_tokens fraction", `{"model":"m","max_tokens":1.5,` + msgs + `}`, "max_tokens", "integer"},
		{"no messages", `{"model":"m","max_tokens":5}`, "messages", "Field required"},
		{"empty messages", `{"model":"m","max_tokens":5,"messages":[]}`, "messages", "at least one"},
		{"bad role", `{"model":"m","max_tokens":5,"messages":[{"role":"tool","content":"x"}]}`, "messages.0.role", "'user' or 'assistant'"},
		{"empty content", `{"model":"m","max_tokens":5,"messages":[{"role":"user","content":[]}]}`, "messages.0.content", "must not be empty"},
		{"content number", `{"model":"m","max_tokens":5,"messages":[{"role":"user","content":1}]}`, "messages.0.content", "string or an array"},
		{"unknown block", `{"model":"m","max_tokens":5,"messages":[{"role":"user","content":[{"type":"video"}]}]}`, "messages.0.content.0.type", "unknown content block"},
		{"text without text", `{"model":"m","max_tokens":5,"messages":[{"role":"user","content":[{"type":"text"}]}]}`, "messages.0.content.0.text", "Field required"},
		{"image without source", `{"model":"m","max_tokens":5,"messages":[{"role":"user","content":[{"type":"image"}]}]}`, "messages.0.content.0.source", "object"},
		{"tool_use input array", `{"model":"m","max_tokens":5,"messages":[{"role":"assistant","content":[{"type":"tool_use","id":"a","name":"f","input":[]}]}]}`, "messages.0.content.0.input", "object"},
		{"system number", `{"model":"m","max_tokens":5,"system":1,` + msgs + `}`, "system", "string or an array"},
		{"system image", `{"model":"m","max_tokens":5,"system":[{"type":"image","source":{}}],` + msgs + `}`, "system.0.type", "'text'"},
		{"tool without schema", `{"model":"m","max_tokens":5,"tools":[{"name":"f"}],` + msgs + `}`, "tools.0.input_schema", "object"},
		{"server tool", `{"model":"m","max_tokens":5,"tools":[{"type":"web_search_20250305","name":"web_search"}],` + msgs + `}`, "tools.0.type", "not supported"},
		{"tool_choice tool without name", `{"model":"m","max_tokens":5,"tool_choice":{"type":"tool"},` + msgs + `}`, "tool_choice.name", "required"},
		{"tool_choice bad", `{"model":"m","max_tokens":5,"tool_choice":{"type":"some"},` + msgs + `}`, "tool_choice.type", "expected"},
		{"temperature", `{"model":"m","max_tokens":5,"temperature":3,` + msgs + `}`, "temperature", "within [0, 2]"},
		{"top_p", `{"model":"m","max_tokens":5,"top_p":0,` + msgs + `}`, "top_p", "(0, 1]"},
		{"top_k", `{"model":"m","max_tokens":5,"top_k":-2,` + msgs + `}`, "top_k", "-1"},
		{"stream", `{"model":"m","max_tokens":5,"stream":"yes",` + msgs + `}`, "stream", "boolean"},
		{"stop_sequences", `{"model":"m","max_tokens":5,"stop_sequences":"x",` + msgs + `}`, "stop_sequences", "array of strings"},
		{"metadata", `{"model":"m","max_tokens":5,"metadata":{"user_id":3},` + msgs + `}`, "metadata.user_id", "string"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := anthropic.Parse([]byte(tc.body))
			var e *openai.Error
			if !errors.As(err, &e) {
				t.Fatalf("err = %v, want an *openai.Error", err)
			}
			if e.Status != 400 || e.Param != tc.param || !strings.Contains(e.Message, tc.want) {
				t.Fatalf("got %d %q %q, want 400 %q containing %q", e.Status, e.Param, e.Message, tc.param, tc.want)
			}
		})
	}
}

func TestParseAccepts(t *testing.T) {
	body := `{"model":"m","max_tokens":64,"system":[{"type":"text","text":"Be "},{"type":"text","text":"brief."}],
	"messages":[{"role":"user","content":"What is 2+2?"},
	 {"role":"assistant","content":[{"type":"text","text":"Let me check."},{"type":"tool_use","id":"toolu_1","name":"calc","input":{"expr":"2+2"}}]},
	 {"role":"user","content":[{"type":"tool_result","tool_use_id":"toolu_1","content":"4"}]}],
	"tools":[{"name":"calc","description":"Evaluates.","input_schema":{"type":"object","properties":{"expr":{"type":"string"}}}}],
	"tool_choice":{"type":"auto"},"stream":true,"temperature":0.5,"top_p":0.9,"top_k":40,"stop_sequences":["END"],"metadata":{"user_id":"u1"},"unknown":1}`
	r, err := anthropic.Parse([]byte(body))
	if err != nil {
		t.Fatal(err)
	}
	if r.Model != "m" || r.MaxTokens != 64 || !r.Stream || len(r.Messages) != 3 || len(r.Tools) != 1 || r.ToolChoice.Type != "auto" ||
		*r.Temperature != 0.5 || *r.TopP != 0.9 || *r.TopK != 40 || r.StopSequences[0] != "END" {
		t.Fatalf("parsed %+v", r)
	}
	if b := r.Messages[1].Blocks[1]; b.Type != "tool_use" || b.ID != "toolu_1" || b.Name != "calc" || string(b.Input) != `{"expr":"2+2"}` {
		t.Fatalf("tool_use %+v", b)
	}
	if b := r.Messages[2].Blocks[0]; b.ToolUseID != "toolu_1" || string(b.Content) != `"4"` {
		t.Fatalf("tool_result %+v", b)
	}
}
