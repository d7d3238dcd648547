package tokenizer

import (
	"encoding/json"
	"math/rand/v2"
	"testing"
)

// TestQwen3NativeMatchesTemplate renders random chats (system messages first, later or not at
// all; tool responses written as user messages; leading newlines and think tags in assistant
// messages; tool messages, tool calls, reasoning content and content parts that send the
// render to the template engine; enable_thinking on, off, absent or not a bool) natively and
// through the template engine, and requires the same text or the same failure.
func TestQwen3NativeMatchesTemplate(t *testing.T) {
	tok, err := Default()
	if err != nil {
		t.Fatal(err)
	}
	if !tok.tmpl.def.qwen3 {
		t.Fatal("the embedded template is not recognised as Qwen3's")
	}
	texts := append(prose(t), "", "\n\nhi", "<tool_response>\nok\n</tool_response>", "<tool_response>x",
		"<think>\nhmm", "a\n\n", "</think>done", "<think>r</think>\n\nanswer")
	rnd := rand.New(rand.NewPCG(5, 6))
	pick := func() string {
		s := texts[rnd.IntN(len(texts))]
		if len(s) > 300 {
			i := rnd.IntN(len(s) - 300)
			s = s[i : i+rnd.IntN(300)]
		}
		return s
	}
	native := 0
	for i := range 3000 {
		var msgs []map[string]any
		if rnd.IntN(2) == 0 {
			msgs = append(msgs, map[string]any{"role": "system", "content": pick()})
		}
		for range rnd.IntN(7) {
			role := []string{"user", "assistant", "user", "assistant", "system", "tool"}[rnd.IntN(6)]
			m := map[string]any{"role": role, "content": pick()}
			switch rnd.IntN(12) {
			case 0:
				m["name"] = "x"
			case 1:
				m["reasoning_content"] = pick()
			case 2:
				m["tool_calls"] = []any{map[string]any{"function": map[string]any{"name": "f", "arguments": "{}"}}}
			case 3:
				m["content"] = []any{map[string]any{"type": "text", "text": pick()}}
			case 4:
				m["content"] = nil
			}
			msgs = append(msgs, m)
		}
		raw, _ := json.Marshal(msgs)
		in := ChatInput{Messages: raw, AddGenerationPrompt: rnd.IntN(3) > 0}
		switch rnd.IntN(4) {
		case 0:
			in.Extra = map[string]any{"enable_thinking": false}
		case 1:
			in.Extra = map[string]any{"enable_thinking": true}
		case 2:
			if rnd.IntN(4) == 0 {
				in.Extra = map[string]any{"enable_thinking": "no"}
			}
		}
		want, werr := tok.renderChat(in, false)
		got, gerr := tok.renderChat(in, true)
		if (werr != nil) != (gerr != nil) || got != want {
			t.Fatalf("case %d %s extra %v:\nnative   %q (%v)\ntemplate %q (%v)", i, raw, in.Extra, got, gerr, want, werr)
		}
		var list []any
		_ = json.Unmarshal(raw, &list)
		vars := map[string]any{"messages": list, "add_generation_prompt": in.AddGenerationPrompt, "tools": nil}
		for k, v := range in.Extra {
			vars[k] = v
		}
		if _, ok := renderQwen3(list, vars); ok {
			native++
		}
	}
	if native < 500 {
		t.Fatalf("only %d of 3000 chats took the native path", native)
	}
}
