package httpproxy_test

import (
	"net/http"
	"testing"

	"github.com/kvgate/kvgate/httpproxy"
)

func TestRemoveHopByHop(t *testing.T) {
	h := http.Header{}
	h.Set("Connection", "keep-alive, X-Secret")
	h.Set("Keep-Alive", "timeout=5")
	h.Set("X-Secret", "s")
	h.Set("Transfer-Encoding", "chunked")
	h.Set("Authorization", "Bearer k")
	httpproxy.RemoveHopByHop(h)
	for _, k := range []string{"Connection", "Keep-Alive", "X-Secret", "Transfer-Encoding"} {
		if h.Get(k) != "" {
			t.Errorf("%s kept", k)
		}
	}
	if h.Get("Authorization") != "Bearer k" {
		t.Error("an end-to-end header was dropped")
	}
}

func TestAddForwardedFor(t *testing.T) {
	for _, tc := range []struct {
		name, prior, remote, want string
	}{
		{"first proxy", "", "10.0.0.1:5000", "10.0.0.1"},
		{"after others", "1.2.3.4", "[::1]:80", "1.2.3.4, ::1"},
		{"no address", "1.2.3.4", "pipe", "1.2.3.4"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := http.Header{}
			if tc.prior != "" {
				h.Set(httpproxy.ForwardedFor, tc.prior)
			}
			httpproxy.AddForwardedFor(h, tc.remote)
			if got := h.Get(httpproxy.ForwardedFor); got != tc.want {
				t.Errorf("X-Forwarded-For %q, want %q", got, tc.want)
			}
		})
	}
}
