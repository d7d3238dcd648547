package tokenizer_test

import (
	"bufio"
	"encoding/json"
	"os"
	"slices"
	"testing"

	"github.com/kvgate/kvgate/tokenizer"
)

type encodeVector struct {
	Name string   `json:"name"`
	Text string   `json:"text"`
	IDs  []uint32 `json:"ids"`
}

type chatVector struct {
	Name                string          `json:"name"`
	Messages            json.RawMessage `json:"messages"`
	Tools               json.RawMessage `json:"tools"`
	AddGenerationPrompt bool            `json:"add_generation_prompt"`
	Extra               map[string]any  `json:"extra"`
	Prompt              string          `json:"prompt"`
	IDs                 []uint32        `json:"ids"`
}

// readJSONL decodes every line of path into a T.
func readJSONL[T any](t testing.TB, path string) []T {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []T
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<24)
	for sc.Scan() {
		var v T
		if err := json.Unmarshal(sc.Bytes(), &v); err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		out = append(out, v)
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if len(out) == 0 {
		t.Fatalf("%s: no vectors", path)
	}
	return out
}

func defaultTokenizer(t testing.TB) *tokenizer.Tokenizer {
	t.Helper()
	tok, err := tokenizer.Default()
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func firstDiff(a, b []uint32) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

func TestQwen3EncodeVectors(t *testing.T) {
	tok := defaultTokenizer(t)
	for _, v := range readJSONL[encodeVector](t, "testdata/qwen3/encode.jsonl") {
		t.Run(v.Name, func(t *testing.T) {
			got := tok.Encode(v.Text)
			if !slices.Equal(got, v.IDs) {
				i := firstDiff(got, v.IDs)
				t.Fatalf("ids differ at %d (got %d ids, want %d): got %v, want %v", i, len(got), len(v.IDs),
					got[i:min(i+8, len(got))], v.IDs[i:min(i+8, len(v.IDs))])
			}
			// Twice: the second run goes through the word cache.
			if again := tok.Encode(v.Text); !slices.Equal(again, v.IDs) {
				t.Fatalf("cached encode differs")
			}
			if got := tok.Decode(v.IDs); got != v.Text {
				t.Fatalf("decode: got %q, want %q", got, v.Text)
			}
		})
	}
}

func TestQwen3ChatVectors(t *testing.T) {
	tok := defaultTokenizer(t)
	for _, v := range readJSONL[chatVector](t, "testdata/qwen3/chat.jsonl") {
		t.Run(v.Name, func(t *testing.T) {
			got, err := tok.RenderChat(tokenizer.ChatInput{
				Messages:            v.Messages,
				Tools:               v.Tools,
				AddGenerationPrompt: v.AddGenerationPrompt,
				Extra:               v.Extra,
			})
			if err != nil {
				t.Fatal(err)
			}
			if got != v.Prompt {
				t.Fatalf("prompt:\n got %q\nwant %q", got, v.Prompt)
			}
			ids := tok.Encode(got)
			if !slices.Equal(ids, v.IDs) {
				i := firstDiff(ids, v.IDs)
				t.Fatalf("ids differ at %d: got %v, want %v", i, ids[i:min(i+8, len(ids))], v.IDs[i:min(i+8, len(v.IDs))])
			}
		})
	}
}

// TestQwen3RandomVectors checks 395 random mixed-script texts against the JS reference port.
func TestQwen3RandomVectors(t *testing.T) {
	tok := defaultTokenizer(t)
	for _, v := range readJSONL[encodeVector](t, "testdata/qwen3/random.jsonl") {
		if got := tok.Encode(v.Text); !slices.Equal(got, v.IDs) {
			i := firstDiff(got, v.IDs)
			t.Errorf("%s %q: ids differ at %d: got %v, want %v", v.Name, v.Text, i,
				got[i:min(i+6, len(got))], v.IDs[i:min(i+6, len(v.IDs))])
		}
	}
}
