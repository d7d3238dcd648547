package anthropic_test

import (
	"encoding/json"
	"testing"

	"github.com/kvgate/kvgate/anthropic"
	"github.com/kvgate/kvgate/openai"
)

// TestToChat checks the conversion against what vLLM's AnthropicServingMessages builds for
// the same request (worked out by hand from its _convert_anthropic_to_openai_request).
func TestToChat(t *testing.T) {
	for _, tc := range []struct {
		name, body, messages, tools string
	}{
		{"plain", `{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}`,
			`[{"role":"user","content":"hi"}]`, ``},
		{"system string", `{"model":"m","max_tokens":5,"system":"Be brief.","messages":[{"role":"user","content":"hi"}]}`,
			`[{"role":"system","content":"Be brief."},{"role":"user","content":"hi"}]`, ``},
		{"system blocks joined, empty system skipped", `{"model":"m","max_tokens":5,"system":[{"type":"text","text":"A"},{"type":"text","text":"B"}],"messages":[{"role":"user","content":[{"type":"text","text":"x"},{"type":"text","text":""}]}]}`,
			`[{"role":"system","content":"AB"},{"role":"user","content":"x"}]`, ``},
		{"several text blocks stay parts", `{"model":"m","max_tokens":5,"system":"","messages":[{"role":"user","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]}]}`,
			`[{"role":"user","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]}]`, ``},
		{"image", `{"model":"m","max_tokens":5,"messages":[{"role":"user","content":[{"type":"image","source":{"type":"base64","media_type":"image/png","data":"AAAA"}},{"type":"text","text":"what?"}]}]}`,
			`[{"role":"user","content":[{"type":"image_url","image_url":{"url":"AAAA"}},{"type":"text","text":"what?"}]}]`, ``},
		{"tool round trip", `{"model":"m","max_tokens":5,
			"messages":[{"role":"user","content":"weather?"},
			{"role":"assistant","content":[{"type":"text","text":"Checking."},{"type":"tool_use","id":"toolu_1","name":"get_weather","input":{"city":"Zürich","days":2,"x":1.0,"ok":true,"n":null}}]},
			{"role":"user","content":[{"type":"tool_result","tool_use_id":"toolu_1","content":[{"type":"text","text":"It's sunny"}]},{"type":"text","text":"thanks"}]}],
			"tools":[{"name":"get_weather","description":"Weather.","input_schema":{"properties":{"city":{"type":"string"}}}}]}`,
			`[{"role":"user","content":"weather?"},` +
				`{"role":"assistant","tool_calls":[{"id":"toolu_1","type":"function","function":{"name":"get_weather","arguments":"{\"city\": \"Z\\u00fcrich\", \"days\": 2, \"x\": 1.0, \"ok\": true, \"n\": null}"}}],"content":"Checking."},` +
				`{"role":"tool","tool_call_id":"toolu_1","content":"[{'type': 'text', 'text': \"It's sunny\"}]"},` +
				`{"role":"user","content":"thanks"}]`,
			`[{"type":"function","function":{"name":"get_weather","description":"Weather.","parameters":{"properties":{"city":{"type":"string"}},"type":"object"}}}]`},
		{"tool results only leave an empty user turn", `{"model":"m","max_tokens":5,"messages":[{"role":"user","content":[{"type":"tool_result","tool_use_id":"a","content":"1"},{"type":"tool_result","tool_use_id":"b"}]}]}`,
			`[{"role":"tool","tool_call_id":"a","content":"1"},{"role":"tool","tool_call_id":"b","content":""},{"role":"user","content":""}]`, ``},
		{"assistant tool_use only, empty input", `{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"x"},{"role":"assistant","content":[{"type":"tool_use","id":"t","name":"f","input":{}}]}]}`,
			`[{"role":"user","content":"x"},{"role":"assistant","tool_calls":[{"id":"t","type":"function","function":{"name":"f","arguments":"{}"}}]}]`, ``},
		{"assistant tool_result is text", `{"model":"m","max_tokens":5,"messages":[{"role":"assistant","content":[{"type":"tool_result","tool_use_id":"t","content":"ok"}]}]}`,
			`[{"role":"assistant","content":"Tool result: ok"}]`, ``},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, err := anthropic.Parse([]byte(tc.body))
			if err != nil {
				t.Fatal(err)
			}
			c, err := r.ToChat()
			if err != nil {
				t.Fatal(err)
			}
			if string(c.Messages) != tc.messages {
				t.Errorf("messages\n got %s\nwant %s", c.Messages, tc.messages)
			}
			if string(c.Tools) != tc.tools {
				t.Errorf("tools\n got %s\nwant %s", c.Tools, tc.tools)
			}
			// The chat body is one OpenAI validation accepts.
			if _, err := openai.ParseChatRequest(c.Body); err != nil {
				t.Fatalf("chat body %s: %v", c.Body, err)
			}
		})
	}
}

func TestToChatSampling(t *testing.T) {
	r, err := anthropic.Parse([]byte(`{"model":"m","max_tokens":7,"stream":true,"temperature":0.2,"top_p":0.5,"top_k":3,"stop_sequences":["X"],
		"tools":[{"name":"f","input_schema":{"type":"object"}}],"tool_choice":{"type":"tool","name":"f"},"messages":[{"role":"user","content":"hi"}]}`))
	if err != nil {
		t.Fatal(err)
	}
	c, err := r.ToChat()
	if err != nil {
		t.Fatal(err)
	}
	cr, err := openai.ParseChatRequest(c.Body)
	if err != nil {
		t.Fatal(err)
	}
	if *cr.MaxTokens != 7 || *cr.MaxCompletionTokens != 7 || !cr.Stream || !cr.IncludeUsage() || !cr.StreamOptions.ContinuousUsageStats ||
		*cr.Temperature != 0.2 || *cr.TopP != 0.5 || *cr.TopK != 3 || cr.Stop[0] != "X" ||
		string(cr.ToolChoice) != `{"type":"function","function":{"name":"f"}}` {
		t.Fatalf("chat request %s", c.Body)
	}
	for choice, want := range map[string]string{`{"type":"any"}`: `"required"`, `{"type":"none"}`: `"none"`, `null`: `"auto"`} {
		r, err := anthropic.Parse([]byte(`{"model":"m","max_tokens":7,"tools":[{"name":"f","input_schema":{}}],"tool_choice":` + choice + `,"messages":[{"role":"user","content":"hi"}]}`))
		if err != nil {
			t.Fatal(err)
		}
		c, _ := r.ToChat()
		var v struct {
			ToolChoice json.RawMessage `json:"tool_choice"`
		}
		_ = json.Unmarshal(c.Body, &v)
		if string(v.ToolChoice) != want {
			t.Errorf("tool_choice %s -> %s, want %s", choice, v.ToolChoice, want)
		}
	}
}
