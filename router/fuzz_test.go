package router_test

import (
	"context"
	"errors"
	"testing"

	"github.com/kvgate/kvgate/openai"
	"github.com/kvgate/kvgate/router"
)

// FuzzRoute: any body on either path is routed or refused with an OpenAI error, never a
// panic, and whatever is routed releases its load.
func FuzzRoute(f *testing.F) {
	for _, s := range []string{
		`{"model":"Qwen/Qwen3-8B","messages":[{"role":"user","content":"hi"}]}`,
		`{"messages":[{"role":"system","content":"s"},{"role":"user","content":[{"type":"text","text":"x"}]}],"stream":true,"chat_template_kwargs":{"enable_thinking":false}}`,
		`{"messages":[{"role":"user","content":"x"}],"tools":[{"type":"function","function":{"name":"f","parameters":{}}}]}`,
		`{"prompt":[1,2,3],"stream":true,"stream_options":{"include_usage":false}}`,
		`{"prompt":["a","b"],"cache_salt":"s"}`, `{"prompt":"x","model":"nope"}`, `{`, ``,
	} {
		f.Add(false, []byte(s))
		f.Add(true, []byte(s))
	}
	r, _ := newRouter(f, endpoints(2), func(c *router.Config) { c.MaxBodyBytes = 1 << 16 })
	f.Fuzz(func(t *testing.T, completions bool, body []byte) {
		path := "/v1/chat/completions"
		if completions {
			path = "/v1/completions"
		}
		d, err := r.Route(context.Background(), router.Request{Path: path, Body: body})
		if err != nil {
			var e *openai.Error
			if !errors.As(err, &e) || e.Status < 400 {
				t.Fatalf("error %v is not an OpenAI error", err)
			}
			return
		}
		d.FirstToken()
		d.Done(nil, nil)
		for _, l := range r.Load() {
			if l.PrefillTokens != 0 || l.DecodeBlocks != 0 || l.Requests != 0 {
				t.Fatalf("load left: %+v", l)
			}
		}
	})
}
