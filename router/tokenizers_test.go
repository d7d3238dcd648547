package router_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/kvgate/kvgate/router"
	"github.com/kvgate/kvgate/tokenizer"
)

// tokenizerDir copies the repository's Qwen3 tokenizer into a directory of its own, which
// the test may delete.
func tokenizerDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	for _, f := range []string{"tokenizer.json.gz", "tokenizer_config.json"} {
		b, err := os.ReadFile(filepath.Join("..", "tokenizer", "models", "qwen3", f))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, f), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// TestTokenizersLoadBeforeTheFirstRequest checks that the router loads the tokenizers of the
// models its endpoints serve when it learns of them (New, SetEndpoints), not on the first
// request of each model, which paid for the load (about 0.5 s of CPU for Qwen3's) while the
// requests behind it waited: with the tokenizer files removed after New or SetEndpoints, a
// request is still tokenized (it would be routed by load alone, with no prompt tokens, had
// the load been left to it, as Config.LazyTokenizers leaves it).
func TestTokenizersLoadBeforeTheFirstRequest(t *testing.T) {
	for _, tc := range []struct {
		name  string
		later bool // the model's endpoint arrives through SetEndpoints, not New
		lazy  bool // Config.LazyTokenizers: the first request loads it (and finds no files)
	}{
		{name: "New"},
		{name: "SetEndpoints", later: true},
		{name: "lazy", lazy: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			const custom = "custom-qwen3"
			dir := tokenizerDir(t)
			eps := endpoints(2)
			eps[1].Models = []string{custom}
			initial := eps
			if tc.later {
				initial = eps[:1]
			}
			r, _ := newRouter(t, initial, func(c *router.Config) {
				mm, err := tokenizer.NewModelMap([]tokenizer.Model{{Name: model}, {Name: custom, Tokenizer: dir}})
				if err != nil {
					t.Fatal(err)
				}
				c.Models = mm
				c.LazyTokenizers = tc.lazy
			})
			if tc.later {
				r.SetEndpoints(eps)
			}
			if err := os.RemoveAll(dir); err != nil {
				t.Fatal(err)
			}
			body := []byte(`{"model":"` + custom + `","messages":[{"role":"user","content":"Which engine holds this prompt's blocks?"}]}`)
			d, err := r.Route(context.Background(), router.Request{Path: "/v1/chat/completions", Body: body})
			if err != nil {
				t.Fatal(err)
			}
			defer d.Done(nil, nil)
			if tc.lazy {
				if d.PromptTokens != 0 {
					t.Errorf("lazy: %d prompt tokens from a tokenizer whose files were gone before its first request", d.PromptTokens)
				}
				return
			}
			if d.Endpoint.Name != "e1" || d.PromptTokens < 10 {
				t.Errorf("routed to %s with %d prompt tokens; want e1 and the prompt tokenized (the tokenizer loaded before its files went away)",
					d.Endpoint.Name, d.PromptTokens)
			}
		})
	}
}
