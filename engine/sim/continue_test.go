package sim

import (
	"net/http"
	"strings"
	"testing"
)

// TestChainedOutputContinues checks that with ChainOutput a request continued with what
// another engine generated (completions: prompt plus the text so far; chat: the partial
// assistant message with continue_final_message) gets exactly the rest of the answer.
func TestChainedOutputContinues(t *testing.T) {
	s := testServer(t, ServerConfig{ChainOutput: true})
	c := client(t)
	const total, cut = 24, 9

	whole := completion(t, c, s, map[string]any{"prompt": "Tell me a story.", "max_tokens": total, "ignore_eos": true}).Choices[0].Text
	words := strings.Fields(whole)
	if len(words) != total {
		t.Fatalf("got %d words, want %d: %q", len(words), total, whole)
	}
	for i := 1; i < len(words); i++ {
		if s.vocab.pos[s.tok.Encode(" " + words[i])[0]] != (s.vocab.pos[s.tok.Encode(" " + words[i-1])[0]]+1)%len(s.vocab.ids) {
			t.Fatalf("word %d %q does not follow %q in the chain", i, words[i], words[i-1])
		}
	}
	head := " " + strings.Join(words[:cut], " ")
	rest := completion(t, c, s, map[string]any{"prompt": "Tell me a story." + head, "max_tokens": total - cut, "ignore_eos": true}).Choices[0].Text
	if head+rest != whole {
		t.Errorf("completion continued as %q + %q, want %q", head, rest, whole)
	}

	msgs := []map[string]any{{"role": "user", "content": "Tell me a story."}}
	full := *chat(t, c, s, map[string]any{"messages": msgs, "max_tokens": total, "ignore_eos": true}).Choices[0].Message.Content
	cw := strings.Fields(full)
	chead := " " + strings.Join(cw[:cut], " ")
	cont := *chat(t, c, s, map[string]any{"messages": append(msgs, map[string]any{"role": "assistant", "content": chead}),
		"continue_final_message": true, "add_generation_prompt": false, "max_tokens": total - cut, "ignore_eos": true}).Choices[0].Message.Content
	if chead+cont != full {
		t.Errorf("chat continued as %q + %q, want %q", chead, cont, full)
	}

	empty := append(msgs, map[string]any{"role": "assistant", "content": ""})
	code, body := post(t, c, s, "/v1/chat/completions", map[string]any{"messages": empty, "continue_final_message": true, "add_generation_prompt": false, "max_tokens": 4})
	if code != http.StatusBadRequest || !strings.Contains(string(body), "final message") {
		t.Errorf("continuing an empty message: %d %s, want a 400", code, body)
	}
}
