package profiler_test

import (
	"bytes"
	"context"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/kvgate/kvgate/engine/sim"
	"github.com/kvgate/kvgate/planner"
	"github.com/kvgate/kvgate/planner/profiler"
)

// startSim runs a simulated engine on loopback, its timing sped up so a sweep takes seconds.
func startSim(t *testing.T) string {
	t.Helper()
	tm := sim.DefaultTiming()
	tm.Speed = 20
	s, err := sim.NewServer(sim.ServerConfig{Addr: "127.0.0.1:0", Engine: sim.Config{NumBlocks: 4096, Timing: tm}}, slog.New(slog.DiscardHandler), nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("sim: %v", err)
		}
	})
	return "http://" + s.Addr()
}

func TestSweepAgainstSim(t *testing.T) {
	url := startSim(t)
	var log bytes.Buffer
	p, err := profiler.Sweep(t.Context(), profiler.Config{
		URL: url, Lengths: []int{256, 2048}, Concurrency: []int{1, 4, 16}, Requests: 8, DecodeTokens: 16, Log: &log, Name: "sim-test",
	})
	if err != nil {
		t.Fatalf("%v\n%s", err, log.String())
	}
	if len(p.Prefill) != 2 || len(p.Decode) != 2 || p.Name != "sim-test" {
		t.Fatalf("profile %+v", p)
	}
	for _, c := range p.Decode {
		lo, hi := c.Points[0].TokensPerS, c.Points[0].TokensPerS
		for _, pt := range c.Points {
			lo, hi = min(lo, pt.TokensPerS), max(hi, pt.TokensPerS)
		}
		if !(hi > 2*lo) {
			t.Fatalf("decode at %d: %v to %v tokens/s from 1 to 16 concurrent: batching should multiply it\n%s", c.ContextTokens, lo, hi, log.String())
		}
	}
	// The file the command writes loads back into the same lookups.
	var buf bytes.Buffer
	if err := p.Write(&buf); err != nil {
		t.Fatal(err)
	}
	q, err := planner.ParseProfile(buf.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	if a, b := p.DecodeThroughput(1000, 50*time.Millisecond), q.DecodeThroughput(1000, 50*time.Millisecond); a != b || a <= 0 {
		t.Fatalf("decode throughput %v before the file, %v after", a, b)
	}
}

// An engine that fails requests gives no profile, and says why.
func TestSweepFailingEngine(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		http.Error(w, `{"error":{"message":"overloaded"}}`, http.StatusServiceUnavailable)
	}))
	defer srv.Close()
	_, err := profiler.Sweep(t.Context(), profiler.Config{URL: srv.URL, Lengths: []int{64}, Concurrency: []int{1}, Requests: 2})
	if err == nil || !strings.Contains(err.Error(), "failed") {
		t.Fatalf("Sweep against a failing engine: %v, want an error about failed requests", err)
	}
}

func TestSweepConfigErrors(t *testing.T) {
	for _, cfg := range []profiler.Config{
		{},
		{URL: "http://x", Lengths: []int{0}},
		{URL: "http://x", Concurrency: []int{4, 2}},
	} {
		if _, err := profiler.Sweep(t.Context(), cfg); err == nil {
			t.Errorf("Sweep(%+v): no error", cfg)
		}
	}
}
