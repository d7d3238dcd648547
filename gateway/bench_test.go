package gateway_test

import (
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/kvgate/kvgate/engine/sim"
	"github.com/kvgate/kvgate/engine/sim/simtest"
	"github.com/kvgate/kvgate/gateway"
)

// BenchmarkGatewayOverhead sends the same streamed chat alternately straight to a simulated
// engine and through the gateway in front of it, in one run, and reports both medians and
// their ratio. The gateway's share includes the whole routing decision (kv policy: parse,
// chat template, tokenize, hash, match, score). The engine runs 1000x faster than its
// modelled H100 so that its own time does not hide the gateway's.
func BenchmarkGatewayOverhead(b *testing.B) {
	cfg := sim.ServerConfig{Addr: "127.0.0.1:0"}
	cfg.Engine.Timing = sim.DefaultTiming()
	cfg.Engine.Timing.Speed = 1000
	s := simtest.Start(b, cfg, nil, nil)
	f := startPolicy(b, "kv", gateway.Config{}, s.Addr())
	body := chat("Write a haiku about caches.", true)
	body = strings.Replace(body, `"stream":true`, `"stream":true,"max_tokens":16`, 1)
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 4}}
	do := func(url string) time.Duration {
		t0 := time.Now()
		resp, err := client.Post(url, "application/json", strings.NewReader(body))
		if err != nil {
			b.Fatal(err)
		}
		_, err = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != 200 {
			b.Fatal(resp.StatusCode, err)
		}
		return time.Since(t0)
	}
	direct := "http://" + s.Addr() + "/v1/chat/completions"
	via := f.url + "/v1/chat/completions"
	do(direct)
	do(via)
	var d, g []time.Duration
	b.ResetTimer()
	for b.Loop() {
		d = append(d, do(direct))
		g = append(g, do(via))
	}
	b.StopTimer()
	med := func(x []time.Duration) float64 {
		slices.Sort(x)
		return float64(x[len(x)/2].Microseconds())
	}
	md, mg := med(d), med(g)
	b.ReportMetric(md, "direct-p50-µs")
	b.ReportMetric(mg, "gateway-p50-µs")
	b.ReportMetric(mg/md, "ratio")
	b.ReportMetric(mg-md, "added-µs")
}

// BenchmarkMigrationOverhead streams the same chat through two gateways in front of one
// simulated engine, alternately: one with migration on (every chunk parsed, rewritten and
// accounted so that the stream could move), one with it off (bytes copied through). It
// reports both medians and their ratio. The engine runs 1000x faster than its modelled H100
// so that its own time does not hide the gateways'.
func BenchmarkMigrationOverhead(b *testing.B) {
	cfg := sim.ServerConfig{Addr: "127.0.0.1:0"}
	cfg.Engine.Timing = sim.DefaultTiming()
	cfg.Engine.Timing.Speed = 1000
	s := simtest.Start(b, cfg, nil, nil)
	on := startPolicy(b, "kv", gateway.Config{}, s.Addr())
	off := startPolicy(b, "kv", gateway.Config{MigrationLimit: -1}, s.Addr())
	body := chat("Write a haiku about caches.", true)
	body = strings.Replace(body, `"stream":true`, `"stream":true,"max_tokens":64,"ignore_eos":true`, 1)
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 4}}
	do := func(url string) time.Duration {
		t0 := time.Now()
		resp, err := client.Post(url, "application/json", strings.NewReader(body))
		if err != nil {
			b.Fatal(err)
		}
		_, err = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != 200 {
			b.Fatal(resp.StatusCode, err)
		}
		return time.Since(t0)
	}
	urlOn, urlOff := on.url+"/v1/chat/completions", off.url+"/v1/chat/completions"
	do(urlOn)
	do(urlOff)
	var a, o []time.Duration
	b.ResetTimer()
	for b.Loop() {
		a = append(a, do(urlOn))
		o = append(o, do(urlOff))
	}
	b.StopTimer()
	med := func(x []time.Duration) float64 {
		slices.Sort(x)
		return float64(x[len(x)/2].Microseconds())
	}
	mOn, mOff := med(a), med(o)
	b.ReportMetric(mOff, "off-p50-µs")
	b.ReportMetric(mOn, "on-p50-µs")
	b.ReportMetric(mOn/mOff, "ratio")
	b.ReportMetric((mOn-mOff)/64, "added-µs/token")
}
