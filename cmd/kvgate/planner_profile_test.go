package main

import (
	"context"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kvgate/kvgate/engine/sim"
	"github.com/kvgate/kvgate/planner"
)

// kvgate planner profile sweeps a simulated engine over HTTP and writes a profile the
// planner loads.
func TestPlannerProfileCommand(t *testing.T) {
	tm := sim.DefaultTiming()
	tm.Speed = 20
	s, err := sim.NewServer(sim.ServerConfig{Addr: "127.0.0.1:0", Engine: sim.Config{NumBlocks: 4096, Timing: tm}}, slog.New(slog.DiscardHandler), nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("sim: %v", err)
		}
	}()
	path := filepath.Join(t.TempDir(), "profile.json")
	out, err := runKvgate(t, "planner", "profile", "--url", "http://"+s.Addr(), "--out", path,
		"--lengths", "256,1024", "--concurrency", "1,8", "--requests", "8", "--decode-tokens", "8", "--name", "sim-x20")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "2 prefill and 2 decode curves") {
		t.Fatalf("output %q", out)
	}
	p, err := planner.LoadProfile(path)
	if err != nil {
		t.Fatal(err)
	}
	if p.Name != "sim-x20" || p.PrefillThroughput(512, time.Second) <= 0 {
		t.Fatalf("profile %+v", p)
	}
	if _, err := runKvgate(t, "planner", "profile", "--url", "http://"+s.Addr()); err == nil || !strings.Contains(err.Error(), "--out") {
		t.Fatalf("without --out: %v", err)
	}
}
