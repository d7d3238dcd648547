package openai

import (
	"reflect"
	"testing"
)

func TestBodyWatcher(t *testing.T) {
	const u = `{"choices":[],"usage":{"prompt_tokens":9,"completion_tokens":2,"total_tokens":11}}`
	cases := []struct {
		name   string
		sse    bool
		pieces []string
		first  int // index of the piece that shows the first token, -1 none
		tokens int // prompt tokens of the usage found, 0 none
	}{
		{"sse in one", true, []string{"data: {\"choices\":[]}\n\ndata: " + u + "\n\ndata: [DONE]\n\n"}, 0, 9},
		{"sse split mid line", true, []string{"data: {\"cho", "ices\":[]}\n\nda", "ta: " + u[:20], u[20:] + "\n\ndata: [DONE]\n\n"}, 1, 9},
		{"sse crlf", true, []string{"data: {}\r\n\r\n", "data: " + u + "\r\n\r\n"}, 0, 9},
		{"sse no final newline", true, []string{"data: {}\n\n", "data: " + u}, 0, 9},
		{"sse comments only", true, []string{": ping\n\n", "event: x\n\n"}, -1, 0},
		{"sse done only", true, []string{"data: [DONE]\n\n"}, -1, 0},
		{"json", false, []string{`{"id":"x",`, `"usage":{"prompt_tokens":9,"completion_tokens":1,"total_tokens":10}}`}, 0, 9},
		{"json no usage", false, []string{`{"id":"x"}`}, 0, 0},
		{"json too large", false, []string{`{"usage":{"prompt_tokens":9},"pad":"`, string(make([]byte, 200)), `"}`}, 0, 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			w := NewBodyWatcher(c.sse, 150)
			first := -1
			for i, p := range c.pieces {
				if w.Write([]byte(p)) {
					if first >= 0 {
						t.Errorf("first token reported twice (pieces %d and %d)", first, i)
					}
					first = i
				}
			}
			if first != c.first {
				t.Errorf("first token at piece %d, want %d", first, c.first)
			}
			got := 0
			if u := w.Close(); u != nil {
				got = u.PromptTokens
			}
			if got != c.tokens {
				t.Errorf("usage prompt tokens %d, want %d", got, c.tokens)
			}
		})
	}
}

// FuzzBodyWatcher checks the watcher never panics, never holds more than its limit, and
// finds the same usage however the body is split.
func FuzzBodyWatcher(f *testing.F) {
	f.Add([]byte("data: {\"usage\":{\"prompt_tokens\":3}}\n\ndata: [DONE]\n\n"), 7, true)
	f.Add([]byte(`{"usage":{"prompt_tokens":3}}`), 3, false)
	f.Add([]byte("data:\r\n\r\ndata: x\n"), 1, true)
	f.Fuzz(func(t *testing.T, body []byte, cut int, sse bool) {
		if cut < 0 {
			cut = -cut
		}
		cut %= len(body) + 1
		whole := NewBodyWatcher(sse, 64)
		whole.Write(body)
		parts := NewBodyWatcher(sse, 64)
		parts.Write(body[:cut])
		parts.Write(body[cut:])
		if len(whole.buf) > 64 || len(parts.buf) > 64 {
			t.Fatalf("buffer over the limit: %d, %d", len(whole.buf), len(parts.buf))
		}
		if a, b := whole.Close(), parts.Close(); !reflect.DeepEqual(a, b) {
			t.Fatalf("usage depends on the split: %+v vs %+v", a, b)
		}
	})
}
