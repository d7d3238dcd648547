package tokenizer

import (
	"crypto/sha256"
	"encoding/hex"
	"strings"
)

// qwen3TemplateSHA256 is the digest of the Qwen3 chat template (Qwen3-8B's
// tokenizer_config.json, the embedded default).
const qwen3TemplateSHA256 = "87a2728cb8dc9fe424d624542f6060ec05a1d285ebbec578bb078900e33396b5"

func isQwen3Template(src string) bool {
	sum := sha256.Sum256([]byte(src))
	return hex.EncodeToString(sum[:]) == qwen3TemplateSHA256
}

// renderQwen3 renders what the Qwen3 template renders for plain chats, without the template
// engine, and reports false (the caller renders with the template) for anything else: tools,
// tool messages or calls, reasoning content, "</think>" in an assistant message, content that
// is not a string, variables other than enable_thinking. msgs are the decoded messages after
// the same preprocessing the template gets. A multi-turn chat renders in a few microseconds
// here against hundreds through the template engine; tests hold the two equal.
func renderQwen3(msgs []any, vars map[string]any) (string, bool) {
	if len(msgs) == 0 || vars["tools"] != nil {
		return "", false
	}
	thinkingOff := false
	for k, v := range vars {
		switch k {
		case "messages", "add_generation_prompt", "bos_token", "eos_token", "tools":
		case "enable_thinking":
			b, ok := v.(bool)
			if !ok {
				return "", false
			}
			thinkingOff = !b
		default:
			return "", false
		}
	}
	addGen, ok := vars["add_generation_prompt"].(bool)
	if !ok {
		return "", false
	}
	type msg struct{ role, content string }
	ms := make([]msg, len(msgs))
	n := 0
	for i, m := range msgs {
		mm, ok := m.(map[string]any)
		if !ok {
			return "", false
		}
		role, ok1 := mm["role"].(string)
		content, ok2 := mm["content"].(string)
		if !ok1 || !ok2 {
			return "", false
		}
		switch role {
		case "system", "user":
		case "assistant":
			if _, has := mm["reasoning_content"]; has {
				return "", false
			}
			if _, has := mm["tool_calls"]; has {
				return "", false
			}
			if strings.Contains(content, "</think>") {
				return "", false
			}
		default:
			return "", false
		}
		ms[i] = msg{role, content}
		n += len(content) + 32
	}
	// The last user message that is not a tool response.
	lastQuery := len(ms) - 1
	for i := len(ms) - 1; i >= 0; i-- {
		c := ms[i].content
		if ms[i].role == "user" && !(strings.HasPrefix(c, "<tool_response>") && strings.HasSuffix(c, "</tool_response>")) {
			lastQuery = i
			break
		}
	}
	var b strings.Builder
	b.Grow(n + 64)
	if ms[0].role == "system" {
		b.WriteString("<|im_start|>system\n")
		b.WriteString(ms[0].content)
		b.WriteString("<|im_end|>\n")
	}
	for i, m := range ms {
		switch {
		case m.role == "user" || m.role == "system" && i > 0:
			b.WriteString("<|im_start|>")
			b.WriteString(m.role)
			b.WriteString("\n")
			b.WriteString(m.content)
			b.WriteString("<|im_end|>\n")
		case m.role == "assistant":
			if i > lastQuery && i == len(ms)-1 {
				// Empty reasoning: "<think>\n" + "" + "\n</think>\n\n", content lstripped of "\n".
				b.WriteString("<|im_start|>assistant\n<think>\n\n</think>\n\n")
				b.WriteString(strings.TrimLeft(m.content, "\n"))
			} else {
				b.WriteString("<|im_start|>assistant\n")
				b.WriteString(m.content)
			}
			b.WriteString("<|im_end|>\n")
		}
	}
	if addGen {
		b.WriteString("<|im_start|>assistant\n")
		if thinkingOff {
			b.WriteString("<think>\n\n</think>\n\n")
		}
	}
	return b.String(), true
}
