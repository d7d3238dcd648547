package router_test

import (
	"bytes"
	"context"
	"fmt"
	"sync"
	"testing"

	"github.com/kvgate/kvgate/openai"
	"github.com/kvgate/kvgate/router"
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
// once: the token buffers the router reuses between requests must never be shared by two
// decisions in flight (the race detector sees it if they are), and each decision counts its
// own prompt's tokens.
func TestRouteConcurrentPromptsKeepTheirTokens(t *testing.T) {
	r, _ := newRouter(t, endpoints(4), nil)
	const workers, each = 6, 40
	want := make([]int, workers*each)
	bodies := make([][]byte, workers*each)
	for i := range bodies {
		content := fmt.Sprintf("prompt %d: %s", i, bytes.Repeat([]byte("lorem ipsum dolor sit amet "), 1+i%37))
		bodies[i] = chatBody(content, true)
		want[i] = len(chatTokens(t, content))
	}
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
}
