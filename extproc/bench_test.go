package extproc_test

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"sync"
	"testing"
	"time"

	filterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"

	"github.com/kvgate/kvgate/extproc"
	"github.com/kvgate/kvgate/extproc/extproctest"
)

// BenchmarkExtProcRoundTrip times one whole request through the ext_proc server over real
// gRPC on loopback, as Envoy drives it in FULL_DUPLEX_STREAMED: request headers and body in,
// the pick and the body out, response headers and three SSE chunks through, stream closed.
// The Router is the real router with the round-robin policy, so the figure is the protocol's
// cost plus a minimal decision. Reports p50 and p99 per request.
func BenchmarkExtProcRoundTrip(b *testing.B) {
	for _, m := range []struct {
		name string
		mode extproctest.Mode
	}{
		{"full-duplex", extproctest.Mode{RequestBody: filterv3.ProcessingMode_FULL_DUPLEX_STREAMED, ResponseBody: filterv3.ProcessingMode_FULL_DUPLEX_STREAMED}},
		{"buffered", extproctest.Mode{RequestBody: filterv3.ProcessingMode_BUFFERED, ResponseBody: filterv3.ProcessingMode_STREAMED}},
	} {
		b.Run(m.name, func(b *testing.B) {
			f := start(b, extproc.Config{})
			f.client.EarlyWait = -1
			body := chatBody(b, "Write a haiku about caches.", true)
			req := extproctest.Request{Method: "POST", Path: "/v1/chat/completions", Header: http.Header{"Content-Type": {"application/json"}}, Body: body}
			up := extproctest.Upstream{Header: http.Header{"Content-Type": {"text/event-stream"}}, Chunks: sseChunks(usageJSON)}
			upstream := func(*extproctest.Result) extproctest.Upstream { return up }
			ctx := context.Background()
			lat := make([]time.Duration, 0, b.N)
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				t0 := time.Now()
				res, err := f.client.Do(ctx, m.mode, req, upstream)
				lat = append(lat, time.Since(t0))
				if err != nil || res.Immediate != nil {
					b.Fatal(err, res)
				}
			}
			b.StopTimer()
			report(b, f, lat)
		})
	}
	// Open loop at 1,000 requests/s: a request starts every millisecond whether or not the
	// previous ones have finished, as Envoy's streams would arrive.
	b.Run("full-duplex-1000rps", func(b *testing.B) {
		f := start(b, extproc.Config{})
		f.client.EarlyWait = -1
		mode := extproctest.Mode{RequestBody: filterv3.ProcessingMode_FULL_DUPLEX_STREAMED, ResponseBody: filterv3.ProcessingMode_FULL_DUPLEX_STREAMED}
		req := extproctest.Request{Method: "POST", Path: "/v1/chat/completions", Body: chatBody(b, "Write a haiku about caches.", true)}
		up := extproctest.Upstream{Header: http.Header{"Content-Type": {"text/event-stream"}}, Chunks: sseChunks(usageJSON)}
		upstream := func(*extproctest.Result) extproctest.Upstream { return up }
		lat := make([]time.Duration, b.N)
		errs := make(chan error, b.N)
		var wg sync.WaitGroup
		tick := time.NewTicker(time.Millisecond)
		defer tick.Stop()
		b.ResetTimer()
		for i := range b.N {
			<-tick.C
			wg.Go(func() {
				t0 := time.Now()
				res, err := f.client.Do(context.Background(), mode, req, upstream)
				lat[i] = time.Since(t0)
				if err == nil && res.Immediate != nil {
					err = fmt.Errorf("immediate %s", res.Immediate.GetBody())
				}
				if err != nil {
					errs <- err
				}
			})
		}
		wg.Wait()
		b.StopTimer()
		select {
		case err := <-errs:
			b.Fatal(err)
		default:
		}
		report(b, f, lat)
	})
}

// report sorts lat and reports its p50 and p99, and the mean time the router took inside.
func report(b *testing.B, f *fixture, lat []time.Duration) {
	slices.Sort(lat)
	q := func(p float64) float64 { return float64(lat[int(p*float64(len(lat)-1))].Microseconds()) }
	b.ReportMetric(q(0.5), "p50-µs")
	b.ReportMetric(q(0.99), "p99-µs")
	mfs, _ := f.reg.Gather()
	for _, mf := range mfs {
		if mf.GetName() == extproc.MetricPickDuration {
			h := mf.GetMetric()[0].GetHistogram()
			if h.GetSampleCount() > 0 {
				b.ReportMetric(h.GetSampleSum()/float64(h.GetSampleCount())*1e6, "pick-µs")
			}
		}
	}
}
