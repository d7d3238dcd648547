package sim

import (
	"bytes"
	"encoding/json"
	"net/http"
	"testing"

	"github.com/kvgate/kvgate/anthropic"
)

// TestMessages: the sim answers /v1/messages as the chat it converts to: the same text and
// token counts as the equivalent chat completion, the prefix cache shared with chat, the
// event stream in Anthropic's order, errors in Anthropic's shape.
func TestMessages(t *testing.T) {
	s := testServer(t, ServerConfig{})
	c := client(t)
	prompt := longText(7, 300)
	body := map[string]any{"model": s.cfg.Model, "max_tokens": 12, "system": "Be brief.", "messages": msgs(prompt)}

	// The chat first: the message then reads its prefix from the cache.
	cc := chat(t, c, s, map[string]any{"max_tokens": 12, "messages": []map[string]any{{"role": "system", "content": "Be brief."}, {"role": "user", "content": prompt}}})
	code, out := post(t, c, s, anthropic.Path, body)
	if code != http.StatusOK {
		t.Fatalf("status %d: %s", code, out)
	}
	var m anthropic.Response
	if err := json.Unmarshal(out, &m); err != nil {
		t.Fatal(err)
	}
	if m.Type != "message" || m.Role != "assistant" || len(m.Content) != 1 || m.Content[0].Type != "text" || *m.Content[0].Text != *cc.Choices[0].Message.Content {
		t.Fatalf("message %s; chat said %q", out, *cc.Choices[0].Message.Content)
	}
	u := m.Usage
	if u.InputTokens+u.CacheReadInputTokens != cc.Usage.PromptTokens || u.OutputTokens != cc.Usage.CompletionTokens || u.CacheReadInputTokens == 0 {
		t.Errorf("usage %+v; chat %+v", u, cc.Usage)
	}
	wantStop := map[string]string{"stop": "end_turn", "length": "max_tokens"}[*cc.Choices[0].FinishReason]
	if m.StopReason == nil || *m.StopReason != wantStop {
		t.Errorf("stop_reason %v, want %s", m.StopReason, wantStop)
	}

	// Streamed: the same text, in Anthropic's event order.
	body["stream"] = true
	b, _ := json.Marshal(body)
	resp, err := c.Post("http://"+s.Addr()+anthropic.Path, "application/json", bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Fatalf("content type %q", ct)
	}
	er := anthropic.NewEventReader(resp.Body)
	var names []string
	var text string
	var final anthropic.Usage
	for {
		ev, err := er.Next()
		if err != nil {
			break
		}
		names = append(names, ev.Name)
		var v struct {
			Type  string          `json:"type"`
			Delta json.RawMessage `json:"delta"`
			Usage anthropic.Usage `json:"usage"`
		}
		if err := json.Unmarshal(ev.Data, &v); err != nil || v.Type != ev.Name {
			t.Fatalf("event %q data %s", ev.Name, ev.Data)
		}
		switch ev.Name {
		case anthropic.EventContentBlockDelta:
			var d struct{ Text string }
			_ = json.Unmarshal(v.Delta, &d)
			text += d.Text
		case anthropic.EventMessageDelta:
			final = v.Usage
		}
	}
	n := len(names)
	if n < 5 || names[0] != anthropic.EventMessageStart || names[1] != anthropic.EventContentBlockStart || names[n-3] != anthropic.EventContentBlockStop ||
		names[n-2] != anthropic.EventMessageDelta || names[n-1] != anthropic.EventMessageStop {
		t.Errorf("events %v", names)
	}
	if text != *m.Content[0].Text || final.OutputTokens != u.OutputTokens || final.InputTokens+final.CacheReadInputTokens != cc.Usage.PromptTokens {
		t.Errorf("streamed %q usage %+v; whole %q usage %+v", text, final, *m.Content[0].Text, u)
	}

	// Errors.
	code, out = post(t, c, s, anthropic.Path, map[string]any{"model": s.cfg.Model, "messages": msgs("hi")})
	var eb struct {
		Type  string
		Error struct{ Type, Message string }
	}
	if code != 400 || json.Unmarshal(out, &eb) != nil || eb.Type != "error" || eb.Error.Type != anthropic.TypeInvalidRequest {
		t.Errorf("missing max_tokens: %d %s", code, out)
	}
	code, out = post(t, c, s, anthropic.Path, map[string]any{"model": s.cfg.Model, "max_tokens": 1 << 30, "messages": msgs("hi")})
	if code != 400 || json.Unmarshal(out, &eb) != nil || eb.Type != "error" || eb.Error.Type != anthropic.TypeInvalidRequest {
		t.Errorf("over the context: %d %s", code, out)
	}
}
