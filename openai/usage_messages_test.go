package openai

import "testing"

// TestBodyWatcherMessages: the usage of an Anthropic Messages answer, whole or streamed
// (prompt in message_start, output in message_delta), is read as OpenAI usage: prompt =
// input + cache creation + cache read, cached = cache read.
func TestBodyWatcherMessages(t *testing.T) {
	for _, c := range []struct {
		name                   string
		sse                    bool
		pieces                 []string
		prompt, cached, output int
	}{
		{"whole", false, []string{`{"id":"msg_1","type":"message","content":[{"type":"text","text":"hi"}],`, `"usage":{"input_tokens":4,"output_tokens":3,"cache_read_input_tokens":16,"cache_creation_input_tokens":2}}`}, 22, 16, 3},
		{"stream", true, []string{
			"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"usage\":{\"input_tokens\":4,\"output_tokens\":1,\"cache_read_input_tokens\":16}}}\n\n",
			"event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"x\"}}\n\nevent: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":7}}\n\nevent: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
		}, 20, 16, 7},
		{"vLLM's stream: input in message_delta too", true, []string{
			"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\"},\"usage\":{\"input_tokens\":9,\"output_tokens\":0}}\n\n",
			"event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"input_tokens\":9,\"output_tokens\":2}}\n\n",
		}, 9, 0, 2},
	} {
		t.Run(c.name, func(t *testing.T) {
			w := NewBodyWatcher(c.sse, 1<<20)
			for _, p := range c.pieces {
				w.Write([]byte(p))
			}
			u := w.Close()
			if u == nil || u.PromptTokens != c.prompt || u.CachedTokens() != c.cached || u.CompletionTokens != c.output || u.TotalTokens != c.prompt+c.output {
				t.Fatalf("usage %+v (cached %d), want prompt %d cached %d output %d", u, u.CachedTokens(), c.prompt, c.cached, c.output)
			}
		})
	}
}
