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
		// AppendRenderChat appends the same render to what dst holds, and nothing on error.
		b, aerr := tok.AppendRenderChat([]byte("kept:"), in)
		if (aerr != nil) != (werr != nil) || aerr == nil && string(b) != "kept:"+want || aerr != nil && string(b) != "kept:" {
			t.Fatalf("case %d %s: AppendRenderChat gave %q (%v), want %q after the prefix", i, raw, b, aerr, want)
		}
		if nativePath(in) {
			native++
		}
	}
	if native < 500 {
		t.Fatalf("only %d of 3000 chats took the native path", native)
	}
}

// nativePath reports whether in renders without the template engine.
func nativePath(in ChatInput) bool {
	off, ok := qwen3Vars(in.Extra)
	if !ok || !isNull(in.Tools) {
		return false
	}
	ms, ok := plainMessages(in.Messages)
	if !ok {
		return false
	}
	_, ok = appendQwen3(nil, ms, in.AddGenerationPrompt, off)
	return ok
}

// FuzzPlainMessages: whatever messages JSON plainMessages accepts renders natively exactly as
// the template engine renders it.
func FuzzPlainMessages(f *testing.F) {
	f.Add([]byte(`[{"role":"system","content":"be brief"},{"role":"user","content":"hi\n\"there\" \u00e9\ud83d\ude00"}]`), true)
	f.Add([]byte(` [ {"content":"x","role":"user","name":"n"} , {"role":"assistant","content":"\n\nok"} ] `), false)
	f.Add([]byte(`[{"role":"user","content":"a\u0000b\/"},{"role":"user","role":"assistant","content":""}]`), true)
	f.Add([]byte("[{\"role\":\"user\",\"content\":\"\xff\xfe\"}]"), true)
	tok, err := Default()
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, raw []byte, gen bool) {
		in := ChatInput{Messages: raw, AddGenerationPrompt: gen}
		if !nativePath(in) {
			return
		}
		got, gerr := tok.renderChat(in, true)
		want, werr := tok.renderChat(in, false)
		if gerr != nil || werr != nil || got != want {
			t.Fatalf("%q:\nnative   %q (%v)\ntemplate %q (%v)", raw, got, gerr, want, werr)
		}
	})
}

// FuzzPlainString: the native string decoder agrees with encoding/json on every literal.
func FuzzPlainString(f *testing.F) {
	for _, s := range []string{`plain`, `a\nb\"c\\d\/e\bf\fg\rh\ti`, `\u00e9\ud83d\ude00`, `\ud83d`, `\ud83dx`, `\ud83d\u0041`,
		`\ude00\ud83d`, "\xff\xfe ok \xe2\x82", "tab\there", "raw\tcontrol", `\x`, `\u12`, `é 日本`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		lit := append(append([]byte{'"'}, body...), '"')
		var want string
		werr := json.Unmarshal(lit, &want)
		s := jsonScanner{data: lit}
		got, ok := plainString(&s)
		ok = ok && s.pos == len(lit)
		if ok != (werr == nil) || ok && got != want {
			t.Fatalf("%q: native %q (%v), encoding/json %q (%v)", lit, got, ok, want, werr)
		}
	})
}

// TestQwen3ReasoningSplit: assistant messages holding "</think>" without "<think>" (how
// Qwen3's own replies come back when the generation prompt opened the think block) render as
// Python's Jinja renders them. The template takes split('<think>')[-1] of a one-item list;
// gonja's indexing returned None for x[-n] on n items and the render failed.
func TestQwen3ReasoningSplit(t *testing.T) {
	tok, err := Default()
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, reply, want string
	}{
		{"reasoning then answer", "r</think>\n\nans",
			"<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nans<|im_end|>\n<|im_start|>user\nagain<|im_end|>\n<|im_start|>assistant\n<think>\nr\n</think>\n\nans<|im_end|>\n"},
		{"reasoning only", "x</think>",
			"<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n<|im_end|>\n<|im_start|>user\nagain<|im_end|>\n<|im_start|>assistant\n<think>\nx\n</think>\n\n<|im_end|>\n"},
		{"closing tag only", "</think>\n",
			"<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n<|im_end|>\n<|im_start|>user\nagain<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n<|im_end|>\n"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			raw, _ := json.Marshal([]map[string]string{{"role": "user", "content": "hi"}, {"role": "assistant", "content": tc.reply},
				{"role": "user", "content": "again"}, {"role": "assistant", "content": tc.reply}})
			got, err := tok.RenderChat(ChatInput{Messages: raw})
			if err != nil || got != tc.want {
				t.Fatalf("got %q (%v), want %q", got, err, tc.want)
			}
		})
	}
}
