package sidecar_test

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/kvgate/kvgate/sidecar"
)

// TestSidecarHopByHopHeaders: headers a Connection header names are connection-level and
// stop at the sidecar, both ways and on both legs (prefill and decode), as do the fixed
// hop-by-hop ones; X-Forwarded-For gets the client's address appended.
func TestSidecarHopByHopHeaders(t *testing.T) {
	answer := func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Connection", "X-Engine-Hop")
		w.Header().Set("X-Engine-Hop", "secret")
		if strings.HasSuffix(r.Header.Get("X-Leg"), "prefill") {
			prefillOK(w, r)
			return
		}
		decodeOK(w, r)
	}
	for _, tc := range []struct {
		name    string
		prefill bool
	}{{"pass-through", false}, {"remote prefill", true}} {
		t.Run(tc.name, func(t *testing.T) {
			pre := newFakeEngine(t, func(w http.ResponseWriter, r *http.Request) { r.Header.Set("X-Leg", "prefill"); answer(w, r) })
			dec := newFakeEngine(t, answer)
			s, _ := startSidecar(t, dec.addr(), func(c *sidecar.Config) { c.Prefill = sidecar.NewPrefillSet(pre.addr()) })
			req, _ := http.NewRequestWithContext(context.Background(), http.MethodPost, "http://"+s.Addr()+"/v1/chat/completions", strings.NewReader(chatReq))
			req.Header.Set("Connection", "X-Client-Hop")
			req.Header.Set("X-Client-Hop", "hop")
			req.Header.Set("Keep-Alive", "timeout=5")
			req.Header.Set("X-Forwarded-For", "203.0.113.7")
			if tc.prefill {
				req.Header.Set(sidecar.HeaderPrefiller, pre.addr())
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("status %d", resp.StatusCode)
			}
			if v := resp.Header.Get("X-Engine-Hop"); v != "" {
				t.Errorf("the client got the engine's connection-level header X-Engine-Hop: %q", v)
			}
			legs := dec.requests()
			if tc.prefill {
				legs = append(legs, pre.requests()...)
				if len(pre.requests()) != 1 {
					t.Fatalf("prefill engine saw %d requests", len(pre.requests()))
				}
			}
			for _, l := range legs {
				for _, h := range []string{"X-Client-Hop", "Keep-Alive"} {
					if v := l.header.Get(h); v != "" {
						t.Errorf("%s: engine got the client's connection-level header %s: %q", l.path, h, v)
					}
				}
				if got := l.header.Get("X-Forwarded-For"); got != "203.0.113.7, 127.0.0.1" {
					t.Errorf("%s: X-Forwarded-For %q, want the client appended", l.path, got)
				}
			}
		})
	}
}
