package tokenizer_test

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/kvgate/kvgate/tokenizer"
)

// writeTokenizer writes tokenizer.json (and tokenizer_config.json when cfg is not nil) into a
// fresh directory and loads it.
func writeTokenizer(t testing.TB, tj map[string]any, cfg map[string]any) *tokenizer.Tokenizer {
	t.Helper()
	tok, err := tryWriteTokenizer(t, tj, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func tryWriteTokenizer(t testing.TB, tj map[string]any, cfg map[string]any) (*tokenizer.Tokenizer, error) {
	t.Helper()
	dir := t.TempDir()
	b, err := json.Marshal(tj)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "tokenizer.json"), b, 0o644); err != nil {
		t.Fatal(err)
	}
	if cfg != nil {
		c, err := json.Marshal(cfg)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "tokenizer_config.json"), c, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return tokenizer.Load(dir)
}

// gpt2Style is a tiny GPT-2-style tokenizer: NFKC, ByteLevel with add_prefix_space and the
// GPT-2 regex, merges in the ["a", "b"] form, an lstrip added token.
func gpt2Style() map[string]any {
	vocab := map[string]int{"!": 0, "d": 1, "e": 2, "h": 3, "l": 4, "o": 5, "r": 6, "w": 7, "Ġ": 8,
		"he": 9, "ll": 10, "hell": 11, "hello": 12, "Ġw": 13, "or": 14, "Ġwor": 15, "Ġworl": 16, "Ġworld": 17}
	merges := [][]string{{"h", "e"}, {"l", "l"}, {"he", "ll"}, {"hell", "o"}, {"Ġ", "w"}, {"o", "r"},
		{"Ġw", "or"}, {"Ġwor", "l"}, {"Ġworl", "d"}}
	return map[string]any{
		"version": "1.0",
		"added_tokens": []map[string]any{
			{"id": 18, "content": "<|endoftext|>", "special": true, "normalized": false},
			{"id": 19, "content": "<mask>", "special": true, "normalized": false, "lstrip": true},
		},
		"normalizer":    map[string]any{"type": "Sequence", "normalizers": []any{map[string]any{"type": "NFKC"}}},
		"pre_tokenizer": map[string]any{"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
		"decoder":       map[string]any{"type": "ByteLevel"},
		"model": map[string]any{"type": "BPE", "vocab": vocab, "merges": merges, "dropout": nil,
			"unk_token": nil, "continuing_subword_prefix": "", "end_of_word_suffix": "", "fuse_unk": false},
	}
}

// sentencePieceStyle is a tiny Llama-2-style tokenizer: Prepend + Replace normalizers, no
// pre-tokenizer, byte fallback, merges in the "a b" form, the Replace/ByteFallback/Fuse/Strip
// decoder. metaspace switches to the Metaspace pre-tokenizer and decoder instead.
func sentencePieceStyle(byteFallback, metaspace bool) map[string]any {
	vocab := map[string]int{"<unk>": 0, "<s>": 1, "</s>": 2}
	for b := 0; b < 256; b++ {
		vocab[fmt.Sprintf("<0x%02X>", b)] = 3 + b
	}
	for i, s := range []string{"▁", "h", "i", "t", "e", "r", "▁h", "▁hi", "▁t", "he", "▁the", "re", "▁there"} {
		vocab[s] = 259 + i
	}
	tj := map[string]any{
		"added_tokens": []map[string]any{
			{"id": 0, "content": "<unk>", "special": true},
			{"id": 1, "content": "<s>", "special": true},
			{"id": 2, "content": "</s>", "special": true},
		},
		"normalizer": map[string]any{"type": "Sequence", "normalizers": []any{
			map[string]any{"type": "Prepend", "prepend": "▁"},
			map[string]any{"type": "Replace", "pattern": map[string]any{"String": " "}, "content": "▁"},
		}},
		"pre_tokenizer": nil,
		"decoder": map[string]any{"type": "Sequence", "decoders": []any{
			map[string]any{"type": "Replace", "pattern": map[string]any{"String": "▁"}, "content": " "},
			map[string]any{"type": "ByteFallback"},
			map[string]any{"type": "Fuse"},
			map[string]any{"type": "Strip", "content": " ", "start": 1, "stop": 0},
		}},
		"model": map[string]any{"type": "BPE", "vocab": vocab, "unk_token": "<unk>", "fuse_unk": true,
			"byte_fallback": byteFallback,
			"merges":        []string{"▁ h", "▁h i", "▁ t", "h e", "▁t he", "r e", "▁the re"}},
	}
	if metaspace {
		tj["normalizer"] = nil
		tj["pre_tokenizer"] = map[string]any{"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": true}
		tj["decoder"] = map[string]any{"type": "Sequence", "decoders": []any{
			map[string]any{"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": true},
			map[string]any{"type": "ByteFallback"},
			map[string]any{"type": "Fuse"},
		}}
	}
	return tj
}

func TestOtherTokenizers(t *testing.T) {
	gpt2 := writeTokenizer(t, gpt2Style(), nil)
	sp := writeTokenizer(t, sentencePieceStyle(true, false), nil)
	spNoFallback := writeTokenizer(t, sentencePieceStyle(false, false), nil)
	meta := writeTokenizer(t, sentencePieceStyle(true, true), nil)
	// Hand-derived ids (see the merge ranks above):
	// " hello" -> Ġ h e l l o -> (h e) (l l) (he ll) (hell o) -> Ġ hello = 8 12
	// " world" -> Ġ w o r l d -> (Ġ w) (o r) (Ġw or) (Ġwor l) (Ġworl d) = 17
	// "▁hi▁there▁é" -> ▁hi ▁there ▁ <0xC3> <0xA9> = 266 271 259 198 172
	tests := []struct {
		name       string
		tok        *tokenizer.Tokenizer
		text       string
		want       []uint32
		wantDecode string // "" = text
	}{
		{"gpt2 prefix space", gpt2, "hello world!", []uint32{8, 12, 17, 0}, " hello world!"},
		{"gpt2 NFKC fullwidth", gpt2, "ｈｅｌｌｏ", []uint32{8, 12}, " hello"},
		{"gpt2 special token", gpt2, "hello<|endoftext|>world", []uint32{8, 12, 18, 17}, " hello<|endoftext|> world"},
		{"gpt2 lstrip token", gpt2, "hello <mask>!", []uint32{8, 12, 19, 8, 0}, " hello<mask> !"},
		{"sentencepiece byte fallback", sp, "hi there é", []uint32{266, 271, 259, 198, 172}, ""},
		{"sentencepiece special", sp, "<s>hi", []uint32{1, 266}, "<s> hi"},
		{"sentencepiece unk fused", spNoFallback, "hi ☃☃", []uint32{266, 259, 0}, "hi <unk>"},
		{"metaspace split", meta, "hi there é", []uint32{266, 271, 259, 198, 172}, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := tc.tok.Encode(tc.text)
			if !slices.Equal(got, tc.want) {
				t.Fatalf("Encode(%q) = %v, want %v", tc.text, got, tc.want)
			}
			want := tc.wantDecode
			if want == "" {
				want = tc.text
			}
			if d := tc.tok.Decode(got); d != want {
				t.Fatalf("Decode = %q, want %q", d, want)
			}
		})
	}
}

func TestUnsupportedComponents(t *testing.T) {
	tests := []struct {
		name    string
		mutate  func(map[string]any)
		wantErr string
	}{
		{"wordpiece model", func(tj map[string]any) { tj["model"].(map[string]any)["type"] = "WordPiece" }, `model type "WordPiece"`},
		{"unigram model", func(tj map[string]any) { tj["model"].(map[string]any)["type"] = "Unigram" }, `"Unigram"`},
		{"dropout", func(tj map[string]any) { tj["model"].(map[string]any)["dropout"] = 0.1 }, "dropout"},
		{"subword prefix", func(tj map[string]any) { tj["model"].(map[string]any)["continuing_subword_prefix"] = "##" }, "continuing_subword_prefix"},
		{"normalizer", func(tj map[string]any) { tj["normalizer"] = map[string]any{"type": "BertNormalizer"} }, `normalizer "BertNormalizer"`},
		{"pre-tokenizer", func(tj map[string]any) { tj["pre_tokenizer"] = map[string]any{"type": "Whitespace"} }, `pre_tokenizer "Whitespace"`},
		{"decoder", func(tj map[string]any) { tj["decoder"] = map[string]any{"type": "WordPiece"} }, `decoder "WordPiece"`},
		{"split behavior", func(tj map[string]any) {
			tj["pre_tokenizer"] = map[string]any{"type": "Split", "pattern": map[string]any{"Regex": "a"}, "behavior": "Sideways"}
		}, "Sideways"},
		{"bad regex", func(tj map[string]any) {
			tj["pre_tokenizer"] = map[string]any{"type": "Split", "pattern": map[string]any{"Regex": "(?<"}, "behavior": "Isolated"}
		}, "regex"},
		{"merge out of vocab", func(tj map[string]any) {
			m := tj["model"].(map[string]any)
			m["merges"] = append(m["merges"].([][]string), []string{"x", "y"})
		}, "not in the vocab"},
		{"byte level not last", func(tj map[string]any) {
			tj["pre_tokenizer"] = map[string]any{"type": "Sequence", "pretokenizers": []any{
				map[string]any{"type": "ByteLevel", "add_prefix_space": false, "use_regex": false},
				map[string]any{"type": "Split", "pattern": map[string]any{"String": " "}, "behavior": "Isolated"},
			}}
		}, "ByteLevel must be the last"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tj := gpt2Style()
			tc.mutate(tj)
			_, err := tryWriteTokenizer(t, tj, nil)
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("err = %v, want one containing %q", err, tc.wantErr)
			}
		})
	}
}

// templateCase is one line of testdata/templates/cases.jsonl, rendered by Python's jinja2 set up
// as Hugging Face does (see gen.py there).
type templateCase struct {
	Name     string                     `json:"name"`
	Template string                     `json:"template"`
	Vars     map[string]json.RawMessage `json:"vars"`
	Output   *string                    `json:"output"`
	Error    string                     `json:"error"`
}

func TestChatTemplatesOfOtherFamilies(t *testing.T) {
	for _, c := range readJSONL[templateCase](t, "testdata/templates/cases.jsonl") {
		t.Run(c.Name, func(t *testing.T) {
			var bos, eos string
			_ = json.Unmarshal(c.Vars["bos_token"], &bos)
			_ = json.Unmarshal(c.Vars["eos_token"], &eos)
			tok := writeTokenizer(t, gpt2Style(), map[string]any{"chat_template": c.Template, "bos_token": bos, "eos_token": eos})
			in := tokenizer.ChatInput{Messages: c.Vars["messages"], Tools: c.Vars["tools"], Extra: map[string]any{}}
			_ = json.Unmarshal(c.Vars["add_generation_prompt"], &in.AddGenerationPrompt)
			for k, v := range c.Vars {
				switch k {
				case "messages", "tools", "add_generation_prompt", "bos_token", "eos_token":
				default:
					in.Extra[k] = v
				}
			}
			got, err := tok.RenderChat(in)
			if c.Error != "" {
				if err == nil || !strings.Contains(err.Error(), c.Error) {
					t.Fatalf("err = %v, want one containing %q", err, c.Error)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got != *c.Output {
				t.Fatalf("render:\n got %q\nwant %q", got, *c.Output)
			}
		})
	}
}

func TestNamedTemplates(t *testing.T) {
	tok := writeTokenizer(t, gpt2Style(), map[string]any{
		"chat_template": []map[string]string{
			{"name": "default", "template": "D{{ messages|length }}"},
			{"name": "tool_use", "template": "T{{ tools|length }}"},
		},
	})
	msgs := json.RawMessage(`[{"role":"user","content":"hi"}]`)
	tests := []struct {
		name, template, want, wantErr string
		tools                         json.RawMessage
	}{
		{name: "default", want: "D1"},
		{name: "named", template: "tool_use", tools: json.RawMessage(`[{"a":1},{"b":2}]`), want: "T2"},
		{name: "unknown", template: "rag", wantErr: `no chat template named "rag"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := tok.RenderChat(tokenizer.ChatInput{Messages: msgs, Tools: tc.tools, Template: tc.template})
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("got %q, %v; want %q", got, err, tc.want)
			}
		})
	}
	noTmpl := writeTokenizer(t, gpt2Style(), nil)
	if _, err := noTmpl.RenderChat(tokenizer.ChatInput{Messages: msgs}); err == nil {
		t.Fatal("RenderChat without a chat template succeeded")
	}
}
