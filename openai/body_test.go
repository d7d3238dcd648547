package openai_test

import (
	"encoding/json"
	"testing"

	"github.com/kvgate/kvgate/openai"
)

func TestSetField(t *testing.T) {
	tests := []struct {
		name, body, key, value, want string
	}{
		{"replace", `{"a":1, "b" : [1,2] ,"c":3}`, "b", `true`, `{"a":1, "b" : true ,"c":3}`},
		{"append", `{"a":1}`, "b", `{"x":1}`, `{"a":1,"b":{"x":1}}`},
		{"append to empty", `{ }`, "b", `2`, `{"b":2}`},
		{"append keeps trailing space", "{\"a\":\"}\"}\n", "b", `2`, "{\"a\":\"}\",\"b\":2}\n"},
		{"nested key untouched", `{"o":{"b":1}}`, "b", `2`, `{"o":{"b":1},"b":2}`},
		{"last duplicate", `{"b":1,"b":2}`, "b", `3`, `{"b":1,"b":3}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := openai.SetField([]byte(tt.body), tt.key, json.RawMessage(tt.value))
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != tt.want {
				t.Errorf("got %s, want %s", got, tt.want)
			}
		})
	}
	for _, bad := range []string{``, `[]`, `{"a":`, `{"a":1}}`} {
		if _, err := openai.SetField([]byte(bad), "a", json.RawMessage("1")); err == nil {
			t.Errorf("SetField(%q) accepted", bad)
		}
	}
}

func TestWithIncludeUsage(t *testing.T) {
	tests := []struct {
		name, body, want string
		changed          bool
	}{
		{"absent", `{"stream":true,"x":[1]}`, `{"stream":true,"x":[1],"stream_options":{"include_usage":true}}`, true},
		{"false kept others", `{"stream_options":{"include_usage":false,"continuous_usage_stats":true},"stream":true}`,
			`{"stream_options":{"continuous_usage_stats":true,"include_usage":true},"stream":true}`, true},
		{"null", `{"stream":true,"stream_options":null}`, `{"stream":true,"stream_options":{"include_usage":true}}`, true},
		{"already", `{"stream":true,"stream_options":{"include_usage":true}}`, `{"stream":true,"stream_options":{"include_usage":true}}`, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, changed, err := openai.WithIncludeUsage([]byte(tt.body))
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != tt.want || changed != tt.changed {
				t.Errorf("got %s %v, want %s %v", got, changed, tt.want, tt.changed)
			}
			if _, err := openai.ParseChatRequest(withMessages(got)); err != nil {
				t.Errorf("rewritten body does not parse: %v", err)
			}
		})
	}
}

func withMessages(body []byte) []byte {
	b, err := openai.SetField(body, "messages", json.RawMessage(`[{"role":"user","content":"x"}]`))
	if err != nil {
		panic(err)
	}
	return b
}

func TestAppendField(t *testing.T) {
	tests := []struct{ body, want string }{
		{`{"a":1}`, `{"a":1,"k":true}`},
		{"{ }\n", "{\"k\":true}\n"},
		{`{"s":"}"} `, `{"s":"}","k":true} `},
	}
	for _, tt := range tests {
		got, err := openai.AppendField([]byte(tt.body), "k", json.RawMessage("true"))
		if err != nil || string(got) != tt.want {
			t.Errorf("AppendField(%q) = %q %v, want %q", tt.body, got, err, tt.want)
		}
	}
	for _, bad := range []string{``, `[1]`, `}{`} {
		if _, err := openai.AppendField([]byte(bad), "k", json.RawMessage("1")); err == nil {
			t.Errorf("AppendField(%q) accepted", bad)
		}
	}
}
