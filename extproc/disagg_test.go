package extproc_test

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kvgate/kvgate/extproc"
	"github.com/kvgate/kvgate/extproc/extproctest"
	"github.com/kvgate/kvgate/router"
	"github.com/kvgate/kvgate/tokenizer"
)

// startPD is an ext_proc server over a router with one prefill and one decode endpoint that
// splits every request (thresholds off).
func startPD(t *testing.T) *extproctest.Client {
	t.Helper()
	rc := router.DefaultConfig()
	rc.Models = tokenizer.DefaultModelMap()
	rc.ScrapeInterval = -1
	rc.DisaggMinUncachedTokens, rc.DisaggMinUncachedRatio = 0, 0
	rc.Endpoints = []router.Endpoint{
		{Name: "p", Address: "127.0.0.1:11", Models: []string{model}, Role: router.RolePrefill, BlockSize: 16},
		{Name: "d", Address: "127.0.0.1:12", Models: []string{model}, Role: router.RoleDecode, BlockSize: 16},
	}
	reg := prometheus.NewRegistry()
	rt, err := router.New(rc, nil, reg)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := extproc.New(extproc.Config{Addr: "127.0.0.1:0"}, rt, nil, reg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	actx, acancel := context.WithTimeout(ctx, 5*time.Second)
	defer acancel()
	addr, err := srv.Addr(actx)
	if err != nil {
		t.Fatal(err)
	}
	c, err := extproctest.Dial(addr.String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c.Close()
		cancel()
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			t.Error("Run did not return")
		}
	})
	return c
}

// TestDisaggHeaders: a split request names the prefill endpoint upstream and on the
// response, unless the decode sidecar says it fell back; a client cannot name a prefill
// endpoint itself.
func TestDisaggHeaders(t *testing.T) {
	pd := startPD(t)
	agg := start(t, extproc.Config{}).client
	body := chatBody(t, "Summarise the history of Rome.", false)
	answer := [][]byte{[]byte(`{"choices":[{"index":0,"message":{"role":"assistant","content":"x"}}]}`)}
	tests := []struct {
		name        string
		client      *extproctest.Client
		clientHdr   string // x-prefiller-host-port the client sends
		upstreamHdr http.Header
		wantUp      string // x-prefiller-host-port upstream
		wantResp    string // x-kvgate-prefill-endpoint on the response
	}{
		{name: "split", client: pd, wantUp: "127.0.0.1:11", wantResp: "127.0.0.1:11"},
		{name: "split, sidecar fell back", client: pd, upstreamHdr: http.Header{"X-Kvgate-Prefill-Fallback": {"connect"}}, wantUp: "127.0.0.1:11"},
		{name: "split, client header replaced", client: pd, clientHdr: "10.9.9.9:80", wantUp: "127.0.0.1:11", wantResp: "127.0.0.1:11"},
		{name: "aggregated, client header removed", client: agg, clientHdr: "10.9.9.9:80"},
	}
	for _, m := range modes {
		for _, tc := range tests {
			t.Run(m.name+"/"+tc.name, func(t *testing.T) {
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				defer cancel()
				h := http.Header{"Content-Type": {"application/json"}}
				if tc.clientHdr != "" {
					h.Set(router.HeaderPrefiller, tc.clientHdr)
				}
				res, err := tc.client.Do(ctx, m.mode, extproctest.Request{Method: "POST", Path: "/v1/chat/completions", Header: h, Body: body},
					func(r *extproctest.Result) extproctest.Upstream {
						up := tc.upstreamHdr.Clone()
						if up == nil {
							up = http.Header{}
						}
						up.Set("Content-Type", "application/json")
						return extproctest.Upstream{Header: up, Chunks: answer, Served: strings.Split(r.Header.Get(router.HeaderDestination), ",")[0]}
					})
				if err != nil {
					t.Fatal(err)
				}
				if res.Immediate != nil {
					t.Fatalf("immediate %s", res.Immediate.GetBody())
				}
				if got := res.Header.Get(router.HeaderPrefiller); got != tc.wantUp {
					t.Errorf("upstream %s = %q, want %q", router.HeaderPrefiller, got, tc.wantUp)
				}
				if got := res.ResponseHeader.Get(router.HeaderPrefillEndpoint); got != tc.wantResp {
					t.Errorf("response %s = %q, want %q", router.HeaderPrefillEndpoint, got, tc.wantResp)
				}
			})
		}
	}
}
