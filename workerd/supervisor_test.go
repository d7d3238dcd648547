package workerd

import (
	"context"
	"errors"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kvgate/kvgate/gpu"
	"github.com/kvgate/kvgate/relay/relaytest"
)

// Supervision with stand-in engines (shell commands): crash loops back off, an engine that
// never gets healthy is killed and restarted, one that ignores SIGTERM is killed on shutdown.
func TestSupervision(t *testing.T) {
	tests := []struct {
		name  string
		cmd   []string // the "simulator" command; SimArgs follow and are ignored
		start time.Duration
		check func(t *testing.T, w *Workerd, out *syncBuffer)
	}{
		{
			name: "crash loop backs off",
			cmd:  []string{"/bin/sh", "-c", "echo boom; exit 3", "sh"},
			check: func(t *testing.T, w *Workerd, out *syncBuffer) {
				time.Sleep(1500 * time.Millisecond)
				// Backoff 100, 200, 400, 400 ... ms: a few restarts, not hundreds.
				if r := w.Engines()[0].Restarts; r < 2 || r > 8 {
					t.Fatalf("%d restarts in 1.5s, want 2-8 with backoff", r)
				}
				if !strings.Contains(out.String(), "n1-e | boom") {
					t.Fatalf("output not captured: %q", out.String())
				}
			},
		},
		{
			name:  "never healthy is restarted",
			cmd:   []string{"/bin/sh", "-c", "exec sleep 60", "sh"},
			start: 500 * time.Millisecond,
			check: func(t *testing.T, w *Workerd, _ *syncBuffer) {
				first := w.Engines()[0].PID
				relaytest.WaitFor(t, 10*time.Second, "a restart after the start timeout", func() bool {
					s := w.Engines()[0]
					return s.Restarts >= 1 && s.PID != 0 && s.PID != first
				})
				if err := syscall.Kill(first, 0); !errors.Is(err, syscall.ESRCH) {
					t.Fatalf("the unhealthy process %d still exists", first)
				}
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			out := &syncBuffer{}
			cfg := Config{
				Node: "n1", ScrapeInterval: Duration(100 * time.Millisecond), StartTimeout: Duration(tc.start),
				MinBackoff: Duration(100 * time.Millisecond), MaxBackoff: Duration(400 * time.Millisecond),
				DrainTimeout: Duration(100 * time.Millisecond), StopTimeout: Duration(time.Second),
				Engines: []EngineSpec{{Name: "e", Kind: KindSim, NoKVEvents: true}},
			}
			w, err := New(context.Background(), cfg, Options{GPUs: gpu.NewFake(gpu.FakeInventory(0, "", 0)), SimCommand: tc.cmd, EngineOutput: out})
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- w.Run(ctx) }()
			relaytest.WaitFor(t, 5*time.Second, "the engine started", func() bool { return w.Engines()[0].PID != 0 || w.Engines()[0].Restarts > 0 })
			tc.check(t, w, out)
			cancel()
			select {
			case <-done:
			case <-time.After(10 * time.Second):
				t.Fatal("Run did not return")
			}
		})
	}
}

// An engine that ignores SIGTERM is killed after StopTimeout, and Run returns.
func TestStopEscalatesToKill(t *testing.T) {
	cfg := Config{
		Node: "n1", ScrapeInterval: Duration(100 * time.Millisecond), DrainTimeout: Duration(100 * time.Millisecond),
		StopTimeout: Duration(500 * time.Millisecond),
		Engines:     []EngineSpec{{Name: "e", Kind: KindSim, NoKVEvents: true}},
	}
	cmd := []string{"/bin/sh", "-c", `trap "" TERM; echo ready; while :; do sleep 0.05; done`, "sh"}
	out := &syncBuffer{}
	w, err := New(context.Background(), cfg, Options{GPUs: gpu.NewFake(gpu.FakeInventory(0, "", 0)), SimCommand: cmd, EngineOutput: out})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	relaytest.WaitFor(t, 5*time.Second, "the engine running its trap", func() bool { return strings.Contains(out.String(), "n1-e | ready") })
	pid := w.Engines()[0].PID
	start := time.Now()
	cancel()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return")
	}
	if took := time.Since(start); took < 400*time.Millisecond {
		t.Fatalf("stopped in %v: SIGTERM was not ignored, the test proves nothing", took)
	}
	if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
		t.Fatalf("process %d survived shutdown", pid)
	}
}
