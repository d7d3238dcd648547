package tokenizer_test

import (
	"encoding/json"
	"slices"
	"testing"
	"unicode/utf8"

	"github.com/kvgate/kvgate/tokenizer"
	"golang.org/x/text/unicode/norm"
)

// FuzzRoundTrip checks decode(encode(x)) == x on the Qwen3 tokenizer for every valid,
// NFC-normalized x (the tokenizer's normalizer is NFC), and that encoding is stable.
func FuzzRoundTrip(f *testing.F) {
	for _, s := range []string{"Hello, how are you?", "  x\n\n\t", "<|im_start|>user\nhi<|im_end|>", "日本語 🙂👍🏽", "it's 1234", "<think>\n\n</think>"} {
		f.Add(s)
	}
	tok, err := tokenizer.Default()
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, s string) {
		ids := tok.Encode(s)
		for _, id := range ids {
			if int(id) >= tok.VocabSize() {
				t.Fatalf("id %d out of range", id)
			}
		}
		if !utf8.ValidString(s) || !norm.NFC.IsNormalString(s) {
			return
		}
		if got := tok.Decode(ids); got != s {
			t.Fatalf("decode(encode(%q)) = %q (ids %v)", s, got, ids)
		}
		if again := tok.Encode(tok.Decode(ids)); !slices.Equal(again, ids) {
			t.Fatalf("encode(decode(encode(%q))) = %v, want %v", s, again, ids)
		}
	})
}

// FuzzLoad feeds arbitrary tokenizer.json and tokenizer_config.json: Load must return a
// tokenizer or an error, never panic, and a loaded tokenizer must encode and decode.
func FuzzLoad(f *testing.F) {
	for _, tj := range []map[string]any{gpt2Style(), sentencePieceStyle(true, false), sentencePieceStyle(true, true)} {
		b, err := json.Marshal(tj)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b, []byte(`{"chat_template": "{{ messages[0].content }}", "eos_token": {"content": "</s>"}}`))
	}
	f.Add([]byte(`{"model":{"vocab":{"a":0},"merges":[["a","a"]]}}`), []byte(`{"added_tokens_decoder":{"5":{"content":"<x>"}}}`))
	f.Add([]byte(`{"model":{"vocab":{"a":0,"b":1,"ab":2},"merges":["a b"]},"pre_tokenizer":{"type":"Split","pattern":{"Regex":"\\s+(?!\\S)"},"behavior":"Contiguous","invert":true}}`), []byte(nil))
	f.Fuzz(func(t *testing.T, tj, cfg []byte) {
		tok, err := tokenizer.FromBytes(tj, cfg)
		if err != nil {
			return
		}
		for _, s := range []string{"hello world", "hi there é", "<s>a</s>", "ab ab"} {
			tok.Decode(tok.Encode(s))
		}
		_, _ = tok.RenderChat(tokenizer.ChatInput{Messages: json.RawMessage(`[{"role":"user","content":"hi"}]`)})
	})
}

// FuzzRenderChat renders arbitrary templates and messages: errors are fine, panics are not.
func FuzzRenderChat(f *testing.F) {
	f.Add("{% for m in messages %}{{ m.role }}: {{ m.content | tojson }}{% endfor %}", `[{"role":"user","content":"hi"}]`)
	f.Add("{{ messages[::-1] | map(attribute='role') | join(',') }}{{ raise_exception('x') }}", `[{"role":"a"},{"role":"b"}]`)
	f.Add("{% set ns = namespace(a=1) %}{% set ns.a = ns.a + 1 %}{{ ns.a }}{{ tools | tojson(indent=2) }}", `[]`)
	f.Add("{{ messages[0].content.split('x')[-1].strip() }}{% if messages[0].content is string %}s{% endif %}", `[{"content":"axb "}]`)
	f.Fuzz(func(t *testing.T, tmpl, msgs string) {
		cfg, err := json.Marshal(map[string]any{"chat_template": tmpl, "bos_token": "<s>"})
		if err != nil {
			return
		}
		tj, err := json.Marshal(gpt2Style())
		if err != nil {
			t.Fatal(err)
		}
		tok, err := tokenizer.FromBytes(tj, cfg)
		if err != nil {
			return
		}
		_, _ = tok.RenderChat(tokenizer.ChatInput{
			Messages:            json.RawMessage(msgs),
			Tools:               json.RawMessage(`[{"type":"function","function":{"name":"f","parameters":{}}}]`),
			AddGenerationPrompt: true,
			Extra:               map[string]any{"enable_thinking": false},
		})
	})
}
