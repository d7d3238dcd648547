package openai_test

import (
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/kvgate/kvgate/openai"
)

func TestParseCompletionPromptForms(t *testing.T) {
	tests := []struct {
		name   string
		prompt string
		want   openai.Prompt
	}{
		{"string", `"hello"`, openai.Prompt{Texts: []string{"hello"}, Single: true}},
		{"empty string", `""`, openai.Prompt{Texts: []string{""}, Single: true}},
		{"strings", `["a","b"]`, openai.Prompt{Texts: []string{"a", "b"}}},
		{"token ids", `[1,2,3]`, openai.Prompt{Tokens: [][]uint32{{1, 2, 3}}, Single: true}},
		{"token id lists", `[[1,2],[3]]`, openai.Prompt{Tokens: [][]uint32{{1, 2}, {3}}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := openai.ParseCompletionRequest([]byte(`{"model":"m","prompt":` + tt.prompt + `,"max_tokens":3,"echo":true,"foo":"bar"}`))
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(r.Prompt, tt.want) {
				t.Errorf("prompt = %+v, want %+v", r.Prompt, tt.want)
			}
			if r.MaxOutputTokens() != 3 || !r.Echo || string(r.Extra["foo"]) != `"bar"` {
				t.Errorf("fields %+v", r)
			}
			// The prompt is written back in the form it came in.
			out, err := json.Marshal(r)
			if err != nil {
				t.Fatal(err)
			}
			var back struct {
				Prompt json.RawMessage `json:"prompt"`
				Foo    string          `json:"foo"`
			}
			if err := json.Unmarshal(out, &back); err != nil || string(back.Prompt) != tt.prompt || back.Foo != "bar" {
				t.Errorf("marshal = %s", out)
			}
		})
	}
}

func TestParseCompletionErrors(t *testing.T) {
	tests := []struct {
		name, body, param string
	}{
		{"malformed", `{"prompt"`, ""},
		{"missing prompt", `{"model":"m"}`, "prompt"},
		{"null prompt", `{"prompt":null}`, "prompt"},
		{"empty array", `{"prompt":[]}`, "prompt"},
		{"number", `{"prompt":5}`, "prompt"},
		{"mixed strings", `{"prompt":["a",1]}`, "prompt[1]"},
		{"negative id", `{"prompt":[1,-2]}`, "prompt"},
		{"fractional id", `{"prompt":[1,2.5]}`, "prompt"},
		{"mixed id lists", `{"prompt":[[1],2]}`, "prompt[1]"},
		{"empty id list", `{"prompt":[[1],[]]}`, "prompt[1]"},
		{"object element", `{"prompt":[{}]}`, "prompt[0]"},
		{"max_tokens zero", `{"prompt":"a","max_tokens":0}`, "max_tokens"},
		{"logprobs negative", `{"prompt":"a","logprobs":-1}`, "logprobs"},
		{"n zero", `{"prompt":"a","n":0}`, "n"},
		{"stop", `{"prompt":"a","stop":{}}`, "stop"},
		{"temperature", `{"prompt":"a","temperature":-2}`, "temperature"},
		{"stream_options", `{"prompt":"a","stream_options":{}}`, "stream_options"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := openai.ParseCompletionRequest([]byte(tt.body))
			var e *openai.Error
			if !errors.As(err, &e) {
				t.Fatalf("error %v, want *openai.Error", err)
			}
			if e.Status != 400 || e.Param != tt.param {
				t.Errorf("status %d param %q, want 400 %q (%s)", e.Status, e.Param, tt.param, e.Message)
			}
		})
	}
	// prompt_embeds stands in for the prompt.
	if _, err := openai.ParseCompletionRequest([]byte(`{"prompt_embeds":"AAAA"}`)); err != nil {
		t.Errorf("prompt_embeds: %v", err)
	}
}

// TestParseCompletionInvalidUTF8 checks that a prompt with bytes that are not UTF-8 is a 400,
// not silently replaced by U+FFFD.
func TestParseCompletionInvalidUTF8(t *testing.T) {
	_, err := openai.ParseCompletionRequest([]byte("{\"model\":\"m\",\"prompt\":\"caf\xe9\"}"))
	var e *openai.Error
	if !errors.As(err, &e) || e.Status != 400 || !strings.Contains(e.Message, "UTF-8") {
		t.Fatalf("got %v, want a 400 naming UTF-8", err)
	}
}
