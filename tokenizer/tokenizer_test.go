package tokenizer_test

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/kvgate/kvgate/tokenizer"
)

func TestEncodeEdgeCases(t *testing.T) {
	tok := defaultTokenizer(t)
	tests := []struct {
		name string
		text string
		want []uint32
	}{
		{"empty", "", nil},
		{"only special", "<|im_start|><|im_end|>", []uint32{151644, 151645}},
		{"special split mid-word", "ab<|im_end|>cd", append(append(tok.Encode("ab"), 151645), tok.Encode("cd")...)},
		{"partial special is text", "<|im_end", []uint32{27, 91, 318, 6213}},
		{"invalid utf-8 as U+FFFD", "a\xffb", tok.Encode("a\uFFFDb")},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := tok.Encode(tc.text); !slices.Equal(got, tc.want) {
				t.Fatalf("Encode(%q) = %v, want %v", tc.text, got, tc.want)
			}
		})
	}
	if got := tok.AppendEncode([]uint32{7}, "Hello"); !slices.Equal(got, []uint32{7, 9707}) {
		t.Fatalf("AppendEncode = %v", got)
	}
	if tok.VocabSize() != 151669 {
		t.Fatalf("VocabSize = %d, want 151669", tok.VocabSize())
	}
	if got := tok.Decode([]uint32{9707, 1 << 30, 11}); got != "Hello," {
		t.Fatalf("Decode skips unknown ids: got %q", got)
	}
}

// TestConcurrentUse encodes and renders from many goroutines (run with -race) and checks
// every result against the sequential one.
func TestConcurrentUse(t *testing.T) {
	tok := defaultTokenizer(t)
	texts := make([]string, 64)
	want := make([][]uint32, len(texts))
	for i := range texts {
		texts[i] = fmt.Sprintf("request %d: the quick brown fox %d jumps over <|im_end|> the lazy dog %x", i, i*i, i)
		want[i] = tok.Encode(texts[i])
	}
	in := tokenizer.ChatInput{Messages: json.RawMessage(`[{"role":"user","content":"hi"}]`), AddGenerationPrompt: true}
	wantPrompt, err := tok.RenderChat(in)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range texts {
				j := (i + g*7) % len(texts)
				if got := tok.Encode(texts[j]); !slices.Equal(got, want[j]) {
					errs <- fmt.Errorf("text %d: got %v, want %v", j, got, want[j])
					return
				}
				if p, err := tok.RenderChat(in); err != nil || p != wantPrompt {
					errs <- fmt.Errorf("render: %q, %v", p, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func TestChatInputErrors(t *testing.T) {
	tok := defaultTokenizer(t)
	tests := []struct {
		name string
		in   tokenizer.ChatInput
	}{
		{"messages not json", tokenizer.ChatInput{Messages: json.RawMessage(`[{`)}},
		{"messages not array", tokenizer.ChatInput{Messages: json.RawMessage(`{"role":"user"}`)}},
		{"message not object", tokenizer.ChatInput{Messages: json.RawMessage(`["hi"]`)}},
		{"tools not array", tokenizer.ChatInput{Messages: json.RawMessage(`[{"role":"user","content":"x"}]`), Tools: json.RawMessage(`{}`)}},
		{"template error", tokenizer.ChatInput{Messages: json.RawMessage(`[]`)}}, // messages[0] of an empty list
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if p, err := tok.RenderChat(tc.in); err == nil {
				t.Fatalf("RenderChat succeeded: %q", p)
			}
		})
	}
}

func TestContentPartsFlattened(t *testing.T) {
	tok := defaultTokenizer(t)
	parts, err := tok.RenderChat(tokenizer.ChatInput{Messages: json.RawMessage(
		`[{"role":"user","content":[{"type":"text","text":"Hello,"},{"type":"text","text":"you"}]}]`)})
	if err != nil {
		t.Fatal(err)
	}
	plain, err := tok.RenderChat(tokenizer.ChatInput{Messages: json.RawMessage(`[{"role":"user","content":"Hello,\nyou"}]`)})
	if err != nil {
		t.Fatal(err)
	}
	if parts != plain {
		t.Fatalf("content parts rendered %q, want %q", parts, plain)
	}
}

// TestNullContent renders an assistant tool-call message with "content": null (what OpenAI
// clients send) like vLLM does for string-content templates: as "".
func TestNullContent(t *testing.T) {
	tok := defaultTokenizer(t)
	render := func(msgs string) string {
		t.Helper()
		p, err := tok.RenderChat(tokenizer.ChatInput{Messages: json.RawMessage(msgs), AddGenerationPrompt: true})
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	call := `"tool_calls":[{"id":"a","type":"function","function":{"name":"w","arguments":"{}"}}]`
	want := render(`[{"role":"user","content":"Weather?"},{"role":"assistant","content":"",` + call + `}]`)
	for _, msgs := range []string{
		`[{"role":"user","content":"Weather?"},{"role":"assistant","content":null,` + call + `}]`,
		`[{"role":"user","content":"Weather?"},{"role":"assistant",` + call + `}]`,
	} {
		if got := render(msgs); got != want {
			t.Errorf("%s:\n got %q\nwant %q", msgs, got, want)
		}
	}
	// Python jinja2's rendering of the "" variant:
	if want != "<|im_start|>user\nWeather?<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n<tool_call>\n{\"name\": \"w\", \"arguments\": {}}\n</tool_call><|im_end|>\n<|im_start|>assistant\n" {
		t.Errorf("unexpected prompt %q", want)
	}
}

// TestToolArgumentStrings: string arguments are parsed into objects before rendering (vLLM,
// SGLang), so compact JSON from a client renders as the template's tojson writes it.
func TestToolArgumentStrings(t *testing.T) {
	tok := defaultTokenizer(t)
	msgs := func(args string) json.RawMessage {
		return json.RawMessage(`[{"role":"user","content":"Weather?"},{"role":"assistant","content":"",` +
			`"tool_calls":[{"id":"a","type":"function","function":{"name":"w","arguments":` + args + `}}]}]`)
	}
	tests := []struct {
		name string
		args string
		keep bool
		want string
	}{
		{"string parsed", `"{\"city\":\"Paris\",\"days\":2}"`, false, `{"city": "Paris", "days": 2}`},
		{"object", `{"city":"Paris","days":2}`, false, `{"city": "Paris", "days": 2}`},
		{"string kept", `"{\"city\":\"Paris\",\"days\":2}"`, true, `{"city":"Paris","days":2}`},
		{"not json stays", `"city=Paris"`, false, `city=Paris`},
	}
	// An empty tool_calls list is dropped (vLLM): same prompt as without the key.
	empty, err := tok.RenderChat(tokenizer.ChatInput{Messages: json.RawMessage(`[{"role":"user","content":"a"},{"role":"assistant","content":"b","tool_calls":[]}]`)})
	if err != nil {
		t.Fatal(err)
	}
	without, err := tok.RenderChat(tokenizer.ChatInput{Messages: json.RawMessage(`[{"role":"user","content":"a"},{"role":"assistant","content":"b"}]`)})
	if err != nil || empty != without {
		t.Fatalf("empty tool_calls: %q, want %q (%v)", empty, without, err)
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p, err := tok.RenderChat(tokenizer.ChatInput{Messages: msgs(tc.args), KeepToolArgumentStrings: tc.keep})
			if err != nil {
				t.Fatal(err)
			}
			want := `"arguments": ` + tc.want + "}\n</tool_call>"
			if !strings.Contains(p, want) {
				t.Fatalf("prompt %q lacks %q", p, want)
			}
		})
	}
}
