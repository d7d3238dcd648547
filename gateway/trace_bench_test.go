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
	"github.com/kvgate/kvgate/tracing"
	"github.com/kvgate/kvgate/tracing/tracingtest"
)

// BenchmarkGatewayTracing streams the same chat alternately through two gateways (kv policy)
// in front of one simulated engine: one with tracing off (the default), one with every
// request traced and exported to an OTLP collector on loopback. It reports both medians and
// their ratio. The engine runs 1000x faster than its modelled H100 so that its own time does
// not hide the gateways'.
func BenchmarkGatewayTracing(b *testing.B) {
	cfg := sim.ServerConfig{Addr: "127.0.0.1:0"}
	cfg.Engine.Timing = sim.DefaultTiming()
	cfg.Engine.Timing.Speed = 1000
	s := simtest.Start(b, cfg, nil, nil)
	offURL := startTraced(b, &tracing.Provider{}, s.Addr()).url
	onURL := startTraced(b, newProvider(b, tracingtest.New(b)), s.Addr()).url
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
	do(offURL)
	do(onURL)
	var off, on []time.Duration
	for b.Loop() {
		off = append(off, do(offURL))
		on = append(on, do(onURL))
	}
	b.StopTimer()
	med := func(x []time.Duration) float64 {
		slices.Sort(x)
		return float64(x[len(x)/2].Microseconds())
	}
	moff, mon := med(off), med(on)
	b.ReportMetric(moff, "off-p50-µs")
	b.ReportMetric(mon, "on-p50-µs")
	b.ReportMetric(mon/moff, "on/off")
}
