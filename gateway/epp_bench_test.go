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
	"github.com/kvgate/kvgate/extproc"
	"github.com/kvgate/kvgate/gateway"
)

// BenchmarkRemoteEPPOverhead sends the same streamed chat, in turn, through the gateway with
// the router in-process and through the remote-EPP gateway asking `kvgate router`'s ext_proc
// server over loopback gRPC (FULL_DUPLEX_STREAMED and BUFFERED), all in front of one
// simulated engine 1000x faster than its modelled H100, and reports each median and the
// ratios to the in-process one. Both routers run the kv policy.
func BenchmarkRemoteEPPOverhead(b *testing.B) {
	cfg := sim.ServerConfig{Addr: "127.0.0.1:0"}
	cfg.Engine.Timing = sim.DefaultTiming()
	cfg.Engine.Timing.Speed = 1000
	s := simtest.Start(b, cfg, nil, nil)
	inproc := startPolicy(b, "kv", gateway.Config{}, s.Addr()).url
	eppAddr, _, _ := startRouterEPPPolicy(b, "kv", extproc.Config{}, s.Addr())
	full, _ := startEPPGateway(b, gateway.EPPConfig{Addr: eppAddr, Timeout: time.Minute}, s.Addr())
	buffered, _ := startEPPGateway(b, gateway.EPPConfig{Addr: eppAddr, Mode: gateway.EPPBuffered, Timeout: time.Minute}, s.Addr())
	body := chat("Write a haiku about caches.", true)
	body = strings.Replace(body, `"stream":true`, `"stream":true,"max_tokens":16`, 1)
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 4}}
	do := func(url string) time.Duration {
		t0 := time.Now()
		resp, err := client.Post(url+"/v1/chat/completions", "application/json", strings.NewReader(body))
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
	urls := []string{inproc, full, buffered}
	for _, u := range urls { // warm: tokenizer, connections
		do(u)
	}
	times := make([][]time.Duration, len(urls))
	b.ResetTimer()
	for b.Loop() {
		for i, u := range urls {
			times[i] = append(times[i], do(u))
		}
	}
	b.StopTimer()
	med := func(x []time.Duration) float64 {
		slices.Sort(x)
		return float64(x[len(x)/2].Microseconds())
	}
	mi, mf, mb := med(times[0]), med(times[1]), med(times[2])
	b.ReportMetric(mi, "inprocess-p50-µs")
	b.ReportMetric(mf, "epp-fullduplex-p50-µs")
	b.ReportMetric(mb, "epp-buffered-p50-µs")
	b.ReportMetric(mf/mi, "fullduplex-ratio")
	b.ReportMetric(mb/mi, "buffered-ratio")
}
