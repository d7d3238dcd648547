package tokenserver

import (
	"testing"

	tokenizationv1 "github.com/kvgate/kvgate/api/tokenization/v1"
	"github.com/kvgate/kvgate/tokenizer"
)

// FuzzRenderChat: whatever arrives in a render request's free-form fields (message text, tool
// calls, tools, template arguments) gets ids or a reason, never a panic.
func FuzzRenderChat(f *testing.F) {
	f.Add("user", "hello", "", "", `{"enable_thinking":false}`)
	f.Add("assistant", "", `[{"id":"1","type":"function","function":{"name":"f","arguments":"{\\"a\\":1}"}}]`, `[{"type":"function","function":{"name":"f"}}]`, "")
	f.Add("tool", "\xff\xfe", "[", "{", "[]")
	s, err := New(Config{}, nil)
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, role, content, toolCalls, tools, kwargs string) {
		req := &tokenizationv1.RenderChatCompletionRequest{
			ModelName: tokenizer.DefaultModel,
			Messages:  []*tokenizationv1.ChatMessage{{Role: role, Content: &content, ToolCallsJson: &toolCalls}},
			ToolsJson: &tools, ChatTemplateKwargs: &kwargs,
		}
		resp, err := s.RenderChatCompletion(t.Context(), req)
		if err != nil {
			t.Fatal(err)
		}
		if !resp.GetSuccess() && resp.GetErrorMessage() == "" {
			t.Fatal("a refusal without a reason")
		}
		tr, _ := s.Tokenize(t.Context(), &tokenizationv1.TokenizeRequest{Input: content})
		if len(tr.GetOffsetPairs()) != 2*len(tr.GetInputIds()) {
			t.Fatal("offsets do not match ids")
		}
	})
}
