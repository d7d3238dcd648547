package router_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/kvgate/kvgate/openai"
	"github.com/kvgate/kvgate/router"
)

// TestMaxModelLenLearned checks the router learns a model's context length from the
// engine's /v1/models (as vLLM and the sim report max_model_len) and refuses prompts that
// cannot fit it; the configured length wins over the engine's.
func TestMaxModelLenLearned(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/metrics":
			fmt.Fprint(w, vllmMetrics(0, 0, 0.1))
		case "/v1/models":
			fmt.Fprintf(w, `{"object":"list","data":[{"id":%q,"object":"model","max_model_len":64}]}`, model)
		default:
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(srv.Close)
	ep := router.Endpoint{Name: "e", Address: srv.Listener.Addr().String(), Models: []string{model}, BlockSize: 16}
	long := chatBody(strings.Repeat("pear ", 100), false)

	for _, c := range []struct {
		name       string
		configured int
		want       int
	}{{"learned", 0, 64}, {"configured wins", 80, 80}} {
		t.Run(c.name, func(t *testing.T) {
			r, _ := newRouter(t, []router.Endpoint{ep}, func(cfg *router.Config) {
				cfg.ScrapeInterval = 10 * time.Millisecond
				if c.configured > 0 {
					cfg.MaxModelLen = map[string]int{model: c.configured}
				}
			})
			run(t, r)
			var err error
			eventually(t, "a decision", func() bool {
				var d *router.Decision
				d, err = r.Route(context.Background(), router.Request{Path: "/v1/chat/completions", Body: long})
				if d != nil {
					d.Done(nil, nil)
				}
				return err != nil
			})
			var oe *openai.Error
			if !errors.As(err, &oe) || oe.Status != 400 || !strings.Contains(oe.Message, fmt.Sprintf("maximum context length is %d tokens", c.want)) {
				t.Fatalf("err %v, want vLLM's 400 for a context of %d", err, c.want)
			}
		})
	}
}
