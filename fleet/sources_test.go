package fleet

import (
	"context"
	"encoding/json"
	"math"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/kvgate/kvgate/router"
)

// RouterDemand sums two routers' pools (counters and in-flight load add up; the engines'
// own reports are the same engines seen twice) and fails when any router fails.
func TestRouterDemand(t *testing.T) {
	pool := router.Pool{Model: "m", Role: router.RoleDecode}
	serve := func(ps router.PoolStats) *httptest.Server {
		return httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path != router.PoolsPath {
				http.NotFound(w, r)
				return
			}
			_ = json.NewEncoder(w).Encode(router.PoolsResponse{Pools: []router.PoolStats{ps}})
		}))
	}
	a := serve(router.PoolStats{Pool: pool, Endpoints: 2, QueuedPrefillTokens: 10, RunningRequests: 3, KVUsage: 0.5, KVReporting: 2, WaitingRequests: 1, Requests: 100, OutputTokens: 1000})
	defer a.Close()
	b := serve(router.PoolStats{Pool: pool, Endpoints: 2, QueuedPrefillTokens: 5, RunningRequests: 1, KVUsage: 0.3, KVReporting: 2, WaitingRequests: 1, Requests: 50, OutputTokens: 400})
	defer b.Close()
	got, err := RouterDemand(http.DefaultClient, FixedRouters([]string{a.URL, b.URL + "/"}))(context.Background())
	if err != nil || len(got) != 1 {
		t.Fatalf("demand %+v, %v", got, err)
	}
	p := got[0]
	if p.Endpoints != 2 || p.QueuedPrefillTokens != 15 || p.RunningRequests != 4 || math.Abs(p.KVUsage-0.4) > 1e-9 ||
		p.WaitingRequests != 1 || p.Requests != 150 || p.OutputTokens != 1400 {
		t.Fatalf("summed %+v", p)
	}
	down := httptest.NewServer(http.NotFoundHandler())
	defer down.Close()
	if _, err := RouterDemand(http.DefaultClient, FixedRouters([]string{a.URL, down.URL}))(context.Background()); err == nil || !strings.Contains(err.Error(), "404") {
		t.Fatalf("one router failing: %v", err)
	}
}

// FuzzDecodePools: no body a router (or anything at its address) sends panics the planner,
// and what is accepted has no impossible value.
func FuzzDecodePools(f *testing.F) {
	f.Add([]byte(`{"pools":[{"model":"m","role":"decode","endpoints":2,"kv_usage":0.5,"requests":3}]}`))
	f.Add([]byte(`{"pools":[{"kv_usage":1.5}]}`))
	f.Add([]byte(`{"pools":[{"queued_prefill_tokens":-1}]}`))
	f.Add([]byte(`{"pools":null}`))
	f.Add([]byte(`{"pools":[{"model":"m","ttft_seconds":{"bounds":[1,2],"counts":[1,0,3],"count":4,"sum":9}}]}`))
	f.Add([]byte(`{"pools":[{"itl_seconds":{"bounds":[2,1],"counts":[1,0,3],"count":4,"sum":9}}]}`))
	f.Add([]byte(`{"pools":[{"itl_seconds":{"bounds":[1],"counts":[18446744073709551615,1],"count":0,"sum":1}}]}`))
	f.Add([]byte(`[]`))
	f.Fuzz(func(t *testing.T, b []byte) {
		pools, err := decodePools(b)
		if err != nil {
			return
		}
		var sum router.PoolStats
		for _, p := range pools {
			if p.KVUsage < 0 || p.KVUsage > 1 || p.QueuedPrefillTokens < 0 || p.WaitingRequests < 0 {
				t.Fatalf("accepted %+v", p)
			}
			addPools(&sum, p)
			for _, h := range []*router.Histogram{p.TTFT, p.ITL} {
				if q := h.Quantile(0.9); q < 0 || math.IsNaN(q) {
					t.Fatalf("accepted a histogram with p90 %v: %+v", q, h)
				}
				if d, ok := h.Sub(h); h != nil && (!ok || d.Count != 0) {
					t.Fatalf("h - h = %+v, %v", d, ok)
				}
			}
		}
		_ = intervalP90(sum.TTFT, nil)
	})
}
