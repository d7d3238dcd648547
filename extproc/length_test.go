package extproc_test

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/kvgate/kvgate/extproc"
	"github.com/kvgate/kvgate/extproc/extproctest"
	"github.com/kvgate/kvgate/router"
)

// errorBody is an OpenAI error body.
type errorBody struct {
	Error struct {
		Message string  `json:"message"`
		Type    string  `json:"type"`
		Param   *string `json:"param"`
	} `json:"error"`
}

// TestPromptLengthChecks checks prompts that cannot fit the model's context are refused
// with vLLM's 400 messages before any engine sees them: an overlong text from its bytes
// alone (before tokenizing: only that check says "at least"), a prompt just over from its tokens, and an output budget that
// does not fit. Before, all three were routed (and the 10 MB prompt tokenized first).
func TestPromptLengthChecks(t *testing.T) {
	const maxLen = 200
	f := startRouter(t, extproc.Config{}, func(c *router.Config) {
		c.MaxModelLen = map[string]int{model: maxLen}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	chat := func(content string, maxTokens int) []byte {
		req := map[string]any{"model": model, "messages": []map[string]string{{"role": "user", "content": content}}}
		if maxTokens > 0 {
			req["max_tokens"] = maxTokens
		}
		b, _ := json.Marshal(req)
		return b
	}
	words := func(n int) string { return strings.Repeat("apple ", n) }
	for _, c := range []struct {
		name, path string
		body       []byte
		param      string
		msg        string
	}{
		{"10 MB chat, refused from its bytes", "/v1/chat/completions", chat(strings.Repeat("x", 10<<20), 0), "input_tokens",
			"This model's maximum context length is 200 tokens. However, your request has at least "},
		{"10 MB completion, refused from its bytes", "/v1/completions", []byte(`{"model":"` + model + `","prompt":"` + strings.Repeat("y", 10<<20) + `"}`), "input_tokens",
			"This model's maximum context length is 200 tokens. However, your request has at least "},
		{"prompt just over", "/v1/chat/completions", chat(words(250), 0), "input_tokens",
			"This model's maximum context length is 200 tokens. However, your request has 2"},
		{"token prompt over", "/v1/completions", []byte(`{"model":"` + model + `","prompt":[` + strings.Repeat("1,", 200) + `1]}`), "input_tokens",
			"This model's maximum context length is 200 tokens. However, your request has 201 input tokens."},
		{"output does not fit", "/v1/chat/completions", chat(words(50), 180), "max_tokens",
			"'max_tokens' or 'max_completion_tokens' is too large: 180. This model's maximum context length is 200 tokens and your request has "},
	} {
		t.Run(c.name, func(t *testing.T) {
			mode := fullDuplex
			mode.RequestChunk = 1 << 20 // as Envoy splits a large body
			res, err := f.client.Do(ctx, mode, extproctest.Request{Method: "POST", Path: c.path, Body: c.body}, nil)
			if err != nil {
				t.Fatal(err)
			}
			if res.Immediate == nil {
				t.Fatalf("routed to %s, want a 400", res.Destination())
			}
			if got := res.Immediate.GetStatus().GetCode(); got != 400 {
				t.Fatalf("status %d, want 400: %s", got, res.Immediate.GetBody())
			}
			var eb errorBody
			if err := json.Unmarshal(res.Immediate.GetBody(), &eb); err != nil {
				t.Fatal(err)
			}
			if !strings.HasPrefix(eb.Error.Message, c.msg) || eb.Error.Type != "invalid_request_error" || eb.Error.Param == nil || *eb.Error.Param != c.param {
				t.Errorf("body %s, want message starting %q, param %q", res.Immediate.GetBody(), c.msg, c.param)
			}
		})
	}
	// A prompt that fits is routed.
	res, err := f.client.Do(ctx, fullDuplex, extproctest.Request{Method: "POST", Path: "/v1/chat/completions", Body: chat(words(20), 50)},
		func(*extproctest.Result) extproctest.Upstream {
			return extproctest.Upstream{Chunks: [][]byte{[]byte(`{}`)}}
		})
	if err != nil || res.Immediate != nil {
		t.Fatalf("a prompt that fits: %v %v", err, res)
	}
	waitReleased(t, f)
}

// TestUnavailableHidesAddresses checks a 503 names no internal address: before, the refusal
// of a subset no endpoint serves listed the subset's addresses.
func TestUnavailableHidesAddresses(t *testing.T) {
	f := start(t, extproc.Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	res, err := f.client.Do(ctx, fullDuplex, extproctest.Request{Method: "POST", Path: "/v1/chat/completions",
		Body: chatBody(t, "where", false), Subset: []string{"10.1.2.3:8000"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.Immediate == nil || res.Immediate.GetStatus().GetCode() != 503 {
		t.Fatalf("want a 503, got %v", res)
	}
	if b := res.Immediate.GetBody(); bytes.Contains(b, []byte("10.1.2.3")) || bytes.Contains(b, []byte("127.0.0.1")) {
		t.Errorf("503 body carries an internal address: %s", b)
	}
	waitReleased(t, f)
}
