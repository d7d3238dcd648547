package router_test

import (
	"bytes"
	"context"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"testing"

	"github.com/kvgate/kvgate/openai"
	"github.com/kvgate/kvgate/router"
	"github.com/kvgate/kvgate/tokenizer"
)

// TestRouteStreamUsageBodies: the body forwarded for a stream without include_usage is the
// one the router wrote before it stopped searching the messages for "stream_options"
// (WithIncludeUsage when the key is anywhere in the body, else AppendField), whatever the
// messages, the tools or an escaped key say.
func TestRouteStreamUsageBodies(t *testing.T) {
	r, _ := newRouter(t, endpoints(2), nil)
	msgs := `"messages":[{"role":"user","content":"set \"stream_options\": {\"include_usage\": false}"}]`
	bodies := map[string]string{
		"key only in a message":     `{"stream":true,` + msgs + `}`,
		"top-level null":            `{"stream":true,` + msgs + `,"stream_options":null}`,
		"top-level without usage":   `{"stream":true,"stream_options":{"continuous_usage_stats":true},` + msgs + `}`,
		"top-level usage off":       `{"stream_options":{"include_usage":false},"stream":true,` + msgs + `}`,
		"key in the tools":          `{"stream":true,` + msgs + `,"tools":[{"type":"function","function":{"name":"f","description":"\"stream_options\""}}]}`,
		"escaped top-level key":     `{"stream":true,` + msgs + `,"stream\u005foptions":null}`,
		"key in an unknown field":   `{"stream":true,"x":{"stream_options":1},` + msgs + `}`,
		"no key anywhere":           `{"stream":true,"messages":[{"role":"user","content":"hi"}]}`,
		"message shaped like a key": `{"stream":true,"messages":[{"role":"user","content":"x"},{"role":"assistant","content":"\"stream_options\""}]}`,
	}
	for name, body := range bodies {
		t.Run(name, func(t *testing.T) {
			var want []byte
			var err error
			if bytes.Contains([]byte(body), []byte(`"stream_options"`)) {
				want, _, err = openai.WithIncludeUsage([]byte(body))
			} else {
				want, err = openai.AppendField([]byte(body), "stream_options", []byte(`{"include_usage":true}`))
			}
			if err != nil {
				t.Fatal(err)
			}
			d, err := r.Route(context.Background(), router.Request{Path: "/v1/chat/completions", Body: []byte(body)})
			if err != nil {
				t.Fatalf("Route: %v", err)
			}
			defer d.Done(nil, nil)
			if !d.UsageForced || string(d.Body) != string(want) {
				t.Fatalf("forced %v, body\n %s\nwant\n %s", d.UsageForced, d.Body, want)
			}
		})
	}
}

// TestRouteConcurrentPromptsKeepTheirTokens routes different chats from many goroutines at
// once, under the kv policy (which hashes the token ids) and approx-prefix (which hashes the
// rendered text): the token and text buffers the router reuses between requests must never
// be shared by two decisions in flight (the race detector sees it if they are), and each
// decision counts its own prompt's tokens.
func TestRouteConcurrentPromptsKeepTheirTokens(t *testing.T) {
	const workers, each = 6, 40
	want := make([]int, workers*each)
	bodies := make([][]byte, workers*each)
	for i := range bodies {
		content := fmt.Sprintf("prompt %d: %s", i, bytes.Repeat([]byte("lorem ipsum dolor sit amet "), 1+i%37))
		bodies[i] = chatBody(content, true)
		want[i] = len(chatTokens(t, content))
	}
	for _, policy := range []string{router.PolicyKV, router.PolicyApproxPrefix} {
		t.Run(policy, func(t *testing.T) {
			r, _ := newRouter(t, endpoints(4), func(c *router.Config) { c.Policy = policy })
			var wg sync.WaitGroup
			errs := make(chan error, workers)
			for w := range workers {
				wg.Go(func() {
					for k := range each {
						i := w*each + k
						d, err := r.Route(context.Background(), router.Request{Path: "/v1/chat/completions", Body: bodies[i]})
						if err != nil {
							errs <- err
							return
						}
						got := d.PromptTokens
						d.Done(nil, nil)
						if got != want[i] {
							errs <- fmt.Errorf("prompt %d: %d tokens, want %d", i, got, want[i])
							return
						}
					}
				})
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Error(err)
			}
		})
	}
}

// TestQueuedPromptKeepsItsTokens: a request waiting in the admission queue keeps its prompt's
// token ids and text while other requests are routed (and take buffers from the same pools);
// when it is dispatched, it is matched on its own tokens. One P, so that a buffer handed
// back early would be the next one taken (the race detector's pool drops a quarter of them,
// hence three rounds).
func TestQueuedPromptKeepsItsTokens(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	eps := endpoints(2)
	eps[1].Models = []string{"other-model"}
	r, reg := newRouter(t, eps, func(c *router.Config) {
		mm, err := tokenizer.NewModelMap([]tokenizer.Model{{Name: model}, {Name: "other-model"}})
		if err != nil {
			t.Fatal(err)
		}
		c.Models = mm
		c.MaxInflight = 1
	})
	for round := range 3 {
		content := fmt.Sprintf("round %d: %s", round, strings.Repeat("the queued prompt's own words ", 40))
		toks := chatTokens(t, content)
		blocks := len(toks) / 16
		r.ApplyEvents("e0", stored(toks, 16, uint64(round+1)<<20, ""))
		hold := route(t, r, "/v1/chat/completions", chatBody(fmt.Sprint("holder ", round), false))
		ch := routeAsync(context.Background(), r, chatBody(content, false), nil)
		eventually(t, "the prompt queued", func() bool { return queued(reg) == 1 })
		for i := range 4 {
			other := fmt.Sprintf(`{"model":"other-model","messages":[{"role":"user","content":"%d %s"}]}`, i, strings.Repeat("other words entirely ", 60))
			route(t, r, "/v1/chat/completions", []byte(other)).Done(nil, nil)
		}
		hold.Done(nil, nil)
		res := get(t, ch)
		if res.err != nil {
			t.Fatal(res.err)
		}
		got := res.d.CachedBlocks
		res.d.Done(nil, nil)
		if got != blocks {
			t.Fatalf("round %d: the queued prompt matched %d cached blocks, want its own %d", round, got, blocks)
		}
	}
}

// TestQueuedApproxPromptKeepsItsText: under approx-prefix a queued request is matched and
// recorded on its rendered text when it is dispatched, after other requests were rendered
// into the router's pooled buffers meanwhile: routed again, it goes back where that text was
// recorded although the other endpoint is less loaded.
func TestQueuedApproxPromptKeepsItsText(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	eps := endpoints(3)
	eps[2].Models = []string{"other-model"}
	r, reg := newRouter(t, eps, func(c *router.Config) {
		mm, err := tokenizer.NewModelMap([]tokenizer.Model{{Name: model}, {Name: "other-model"}})
		if err != nil {
			t.Fatal(err)
		}
		c.Models = mm
		c.MaxInflight = 2
		c.Policy = router.PolicyApproxPrefix
	})
	content := strings.Repeat("the queued prompt's own words ", 40)
	on := map[string][]*router.Decision{}
	for i := range 4 {
		d := route(t, r, "/v1/chat/completions", chatBody(fmt.Sprintf("holder %d %s", i, strings.Repeat("x", 200*i)), false))
		on[d.Endpoint.Name] = append(on[d.Endpoint.Name], d)
	}
	if len(on["e0"]) != 2 || len(on["e1"]) != 2 {
		t.Fatalf("holders not two per endpoint: e0 %d, e1 %d", len(on["e0"]), len(on["e1"]))
	}
	ch := routeAsync(context.Background(), r, chatBody(content, false), nil)
	eventually(t, "the prompt queued", func() bool { return queued(reg) == 1 })
	for i := range 4 {
		other := fmt.Sprintf(`{"model":"other-model","messages":[{"role":"user","content":"%d %s"}]}`, i, strings.Repeat("other words entirely ", 60))
		route(t, r, "/v1/chat/completions", []byte(other)).Done(nil, nil)
	}
	on["e1"][0].Done(nil, nil) // room on e1 only: the queued prompt goes there
	res := get(t, ch)
	if res.err != nil {
		t.Fatal(res.err)
	}
	if res.d.Endpoint.Name != "e1" {
		t.Fatalf("dispatched to %s, the endpoint with room is e1", res.d.Endpoint.Name)
	}
	res.d.Done(nil, nil)
	on["e0"][0].Done(nil, nil)
	on["e0"][1].Done(nil, nil)
	defer on["e1"][1].Done(nil, nil)
	d := route(t, r, "/v1/chat/completions", chatBody(content, false))
	defer d.Done(nil, nil)
	if d.Endpoint.Name != "e1" {
		t.Fatalf("routed again to %s: the text recorded on e1 at dispatch was not the prompt's", d.Endpoint.Name)
	}
}
