package openai_test

import (
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"testing"

	"github.com/kvgate/kvgate/openai"
)

func TestParseChatRequestErrors(t *testing.T) {
	const msgs = `"messages":[{"role":"user","content":"hi"}]`
	tests := []struct {
		name  string
		body  string
		param string
	}{
		{"empty body", ``, ""},
		{"malformed", `{"model":`, ""},
		{"not an object", `[1,2]`, ""},
		{"trailing garbage", `{"messages":[]} x`, ""},
		{"missing messages", `{"model":"m"}`, "messages"},
		{"messages null", `{"messages":null}`, "messages"},
		{"messages string", `{"messages":"hi"}`, "messages"},
		{"messages empty", `{"messages":[]}`, "messages"},
		{"message not object", `{"messages":["hi"]}`, "messages[0]"},
		{"missing role", `{"messages":[{"content":"hi"}]}`, "messages[0].role"},
		{"role number", `{"messages":[{"role":1}]}`, "messages[0].role"},
		{"role empty", `{"messages":[{"role":""}]}`, "messages[0].role"},
		{"role unknown", `{"messages":[{"role":"wizard","content":"hi"}]}`, "messages[0].role"},
		{"role wrong case", `{"messages":[{"role":"user","content":"a"},{"role":"User","content":"b"}]}`, "messages[1].role"},
		{"invalid utf-8 in content", "{\"messages\":[{\"role\":\"user\",\"content\":\"\xff\"}]}", ""},
		{"invalid utf-8 in a key", "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"\xc3\":1}", ""},
		{"content number", `{"messages":[{"role":"user","content":3}]}`, "messages[0].content"},
		{"content part not object", `{"messages":[{"role":"user","content":["x"]}]}`, "messages[0].content[0]"},
		{"second message bad", `{"messages":[{"role":"user","content":"a"},{"role":"assistant","tool_calls":{}}]}`, "messages[1].tool_calls"},
		{"max_tokens zero", `{` + msgs + `,"max_tokens":0}`, "max_tokens"},
		{"max_tokens string", `{` + msgs + `,"max_tokens":"5"}`, "max_tokens"},
		{"max_tokens fraction", `{` + msgs + `,"max_tokens":1.5}`, "max_tokens"},
		{"max_completion_tokens zero", `{` + msgs + `,"max_completion_tokens":0}`, "max_completion_tokens"},
		{"n zero", `{` + msgs + `,"n":0}`, "n"},
		{"best_of below n", `{` + msgs + `,"n":3,"best_of":2}`, "best_of"},
		{"temperature negative", `{` + msgs + `,"temperature":-0.1}`, "temperature"},
		{"top_p zero", `{` + msgs + `,"top_p":0}`, "top_p"},
		{"top_p above one", `{` + msgs + `,"top_p":1.01}`, "top_p"},
		{"top_k -2", `{` + msgs + `,"top_k":-2}`, "top_k"},
		{"min_p above one", `{` + msgs + `,"min_p":2}`, "min_p"},
		{"presence_penalty", `{` + msgs + `,"presence_penalty":2.5}`, "presence_penalty"},
		{"frequency_penalty", `{` + msgs + `,"frequency_penalty":-3}`, "frequency_penalty"},
		{"repetition_penalty", `{` + msgs + `,"repetition_penalty":0}`, "repetition_penalty"},
		{"min_tokens over max", `{` + msgs + `,"max_tokens":4,"min_tokens":5}`, "min_tokens"},
		{"stop number", `{` + msgs + `,"stop":3}`, "stop"},
		{"stop array element", `{` + msgs + `,"stop":["a",1]}`, "stop[1]"},
		{"stream type", `{` + msgs + `,"stream":"yes"}`, "stream"},
		{"stream_options without stream", `{` + msgs + `,"stream_options":{"include_usage":true}}`, "stream_options"},
		{"stream_options field type", `{` + msgs + `,"stream":true,"stream_options":{"include_usage":"x"}}`, "stream_options.include_usage"},
		{"continue_final_message with generation prompt", `{` + msgs + `,"continue_final_message":true}`, "continue_final_message"},
		{"top_logprobs without logprobs", `{` + msgs + `,"top_logprobs":2}`, "top_logprobs"},
		{"top_logprobs negative", `{` + msgs + `,"logprobs":true,"top_logprobs":-1}`, "top_logprobs"},
		{"prompt_logprobs with stream", `{` + msgs + `,"stream":true,"prompt_logprobs":1}`, "prompt_logprobs"},
		{"tool_choice without tools", `{` + msgs + `,"tool_choice":"required"}`, "tool_choice"},
		{"tool_choice bad string", `{` + msgs + `,"tool_choice":"sometimes","tools":[{"type":"function","function":{"name":"f"}}]}`, "tool_choice"},
		{"tools not array", `{` + msgs + `,"tools":{}}`, "tools"},
		{"tool without function", `{` + msgs + `,"tools":[{"type":"function"}]}`, "tools[0].function"},
		{"tool without name", `{` + msgs + `,"tools":[{"type":"function","function":{"parameters":{}}}]}`, "tools[0].function.name"},
		{"tool wrong type", `{` + msgs + `,"tools":[{"type":"retrieval","function":{"name":"f"}}]}`, "tools[0].type"},
		{"model number", `{` + msgs + `,"model":7}`, "model"},
		{"chat_template_kwargs array", `{` + msgs + `,"chat_template_kwargs":[]}`, "chat_template_kwargs"},
		{"cache_salt empty", `{` + msgs + `,"cache_salt":""}`, "cache_salt"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := openai.ParseChatRequest([]byte(tt.body))
			if err == nil {
				t.Fatalf("accepted %s: %+v", tt.body, r)
			}
			var e *openai.Error
			if !errors.As(err, &e) {
				t.Fatalf("error %T %v is not *openai.Error", err, err)
			}
			if e.Status != http.StatusBadRequest || e.Type != openai.TypeInvalidRequest {
				t.Errorf("status %d type %q, want 400 invalid_request_error", e.Status, e.Type)
			}
			if e.Param != tt.param {
				t.Errorf("param %q, want %q (message %q)", e.Param, tt.param, e.Message)
			}
			if e.Message == "" {
				t.Error("empty message")
			}
		})
	}
}

func TestParseChatRequestAccepts(t *testing.T) {
	body := `{
	  "model": "Qwen/Qwen3-0.6B",
	  "messages": [
	    {"role": "system", "content": "be brief"},
	    {"role": "user", "content": [{"type": "text", "text": "hi"}]},
	    {"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
	    {"role": "tool", "tool_call_id": "c1", "content": "42"},
	    {"role": "developer", "content": "x"}
	  ],
	  "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
	  "tool_choice": {"type": "function", "function": {"name": "f"}},
	  "stream": true, "stream_options": {"include_usage": true},
	  "max_tokens": 7, "max_completion_tokens": 9, "n": 2, "best_of": 2,
	  "temperature": 0, "top_p": 1, "top_k": -1, "min_p": 0, "seed": -5,
	  "stop": "END", "ignore_eos": true, "logprobs": true, "top_logprobs": 3,
	  "chat_template_kwargs": {"enable_thinking": false},
	  "kv_transfer_params": {"do_remote_decode": true},
	  "add_generation_prompt": true,
	  "metadata": {"k": "v"}, "service_tier": "auto",
	  "frequency_penalty": null
	}`
	r, err := openai.ParseChatRequest([]byte(body))
	if err != nil {
		t.Fatal(err)
	}
	if r.Model != "Qwen/Qwen3-0.6B" || !r.Stream || !r.IncludeUsage() || !r.IgnoreEOS {
		t.Errorf("fields: %+v", r)
	}
	if got, ok := r.MaxOutputTokens(); !ok || got != 9 {
		t.Errorf("MaxOutputTokens = %d %v, want max_completion_tokens 9", got, ok)
	}
	if *r.MaxTokens != 7 || *r.N != 2 || *r.TopK != -1 || *r.Seed != -5 || *r.TopLogprobs != 3 {
		t.Errorf("numbers: %+v", r)
	}
	if len(r.Stop) != 1 || r.Stop[0] != "END" {
		t.Errorf("stop = %q", r.Stop)
	}
	if r.ChatTemplateKwargs["enable_thinking"] != false {
		t.Errorf("chat_template_kwargs = %v", r.ChatTemplateKwargs)
	}
	if string(r.KVTransferParams) != `{"do_remote_decode": true}` {
		t.Errorf("kv_transfer_params = %s", r.KVTransferParams)
	}
	if r.FrequencyPenalty != nil {
		t.Error("null frequency_penalty should stay unset")
	}
	if !r.GenerationPrompt() {
		t.Error("GenerationPrompt false")
	}
	if len(r.Extra) != 2 || string(r.Extra["metadata"]) != `{"k": "v"}` || string(r.Extra["service_tier"]) != `"auto"` {
		t.Errorf("extra = %v", r.Extra)
	}
	var msgs []map[string]any
	if err := json.Unmarshal(r.Messages, &msgs); err != nil || len(msgs) != 5 {
		t.Fatalf("messages kept raw: %v %v", err, msgs)
	}

	// Marshal keeps unknown fields and known ones, and parses back to the same request.
	out, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	back, err := openai.ParseChatRequest(out)
	if err != nil {
		t.Fatalf("re-parse %s: %v", out, err)
	}
	if len(back.Extra) != 2 || string(back.Extra["service_tier"]) != `"auto"` || *back.MaxTokens != 7 || back.Stop[0] != "END" {
		t.Errorf("round trip lost fields: %s", out)
	}
	var generic map[string]any
	if err := json.Unmarshal(out, &generic); err != nil {
		t.Fatal(err)
	}
	if _, ok := generic["frequency_penalty"]; ok {
		t.Error("unset field written")
	}

	// continue_final_message is fine with add_generation_prompt false.
	if _, err := openai.ParseChatRequest([]byte(`{"messages":[{"role":"user","content":"a"},{"role":"assistant","content":"b"}],"continue_final_message":true,"add_generation_prompt":false}`)); err != nil {
		t.Errorf("continue_final_message: %v", err)
	}
	// Keys are case-sensitive, as in vLLM: MAX_TOKENS is an unknown field, not max_tokens.
	r, err = openai.ParseChatRequest([]byte(`{"messages":[{"role":"user","content":"a"}],"MAX_TOKENS":0}`))
	if err != nil || r.MaxTokens != nil || string(r.Extra["MAX_TOKENS"]) != "0" {
		t.Errorf("case-sensitive keys: %v %+v", err, r)
	}
}

func TestUnmarshalChatRequestNoValidation(t *testing.T) {
	var r openai.ChatRequest
	if err := json.Unmarshal([]byte(`{"messages":[],"max_tokens":0,"stop":["x"],"foo":1}`), &r); err != nil {
		t.Fatal(err)
	}
	if *r.MaxTokens != 0 || r.Stop[0] != "x" || string(r.Extra["foo"]) != "1" {
		t.Errorf("%+v", r)
	}
	if err := json.Unmarshal([]byte(`{"max_tokens":"x"}`), &r); err == nil || !strings.Contains(err.Error(), "max_tokens") {
		t.Errorf("type error = %v", err)
	}
}
