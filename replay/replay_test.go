package replay_test

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/kvgate/kvgate/engine/sim"
	"github.com/kvgate/kvgate/replay"
	"github.com/kvgate/kvgate/workload"
)

func synthetic(t *testing.T, conversations int) *workload.Trace {
	t.Helper()
	s := workload.DefaultSynthetic()
	s.Conversations, s.Turns, s.SystemPrompts, s.SystemTokens = conversations, 4, 4, 1024
	s.Rate, s.ThinkTime = 8, 2*time.Second
	tr, err := s.Generate()
	if err != nil {
		t.Fatal(err)
	}
	return tr
}

func run(t *testing.T, cfg replay.Config, tr *workload.Trace) *replay.Result {
	t.Helper()
	res, err := replay.Run(context.Background(), cfg, tr)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

func TestReplayIsDeterministic(t *testing.T) {
	tr := synthetic(t, 40)
	cfg := replay.Config{Engines: 3, Policy: "random", Engine: sim.Config{NumBlocks: 3000}, EventDelay: 5 * time.Millisecond, Seed: 7}
	a, b := run(t, cfg, tr), run(t, cfg, tr)
	a.WallSeconds, b.WallSeconds = 0, 0
	if a.HitRatio != b.HitRatio || a.TTFTP90 != b.TTFTP90 || a.Throughput != b.Throughput || len(a.TTFTs) != len(b.TTFTs) {
		t.Fatalf("two runs differ:\n%+v\n%+v", a, b)
	}
	if a.Requests != len(tr.Requests) || a.Rejected != 0 || len(a.TTFTs) != len(tr.Requests) {
		t.Fatalf("requests %d rejected %d ttfts %d, want %d", a.Requests, a.Rejected, len(a.TTFTs), len(tr.Requests))
	}
}

func TestKVRoutingBeatsRoundRobin(t *testing.T) {
	tr := synthetic(t, 60)
	base := replay.Config{Engines: 4, Engine: sim.Config{NumBlocks: 4000}, EventDelay: 5 * time.Millisecond, Seed: 1}
	kv, rr := base, base
	kv.Policy, rr.Policy = "kv", "round-robin"
	k, r := run(t, kv, tr), run(t, rr, tr)
	if k.HitRatio <= r.HitRatio {
		t.Fatalf("kv hit ratio %.3f not above round-robin's %.3f", k.HitRatio, r.HitRatio)
	}
	if k.TTFTP50 >= r.TTFTP50 {
		t.Fatalf("kv TTFT p50 %.1f ms not below round-robin's %.1f ms", k.TTFTP50, r.TTFTP50)
	}
	if k.BoundHitRatio != r.BoundHitRatio || k.BoundHitRatio <= 0 {
		t.Fatalf("bound differs between policies or is zero: %v %v", k.BoundHitRatio, r.BoundHitRatio)
	}
}

func TestEventDelayCostsHits(t *testing.T) {
	// Turns of a conversation arrive 2 s apart: without the router's credit for prefixes it
	// just routed, events delayed past that can't help routing.
	tr := synthetic(t, 40)
	fast := replay.Config{Engines: 4, Policy: "kv", Engine: sim.Config{NumBlocks: 4000}, EventDelay: time.Millisecond, Seed: 1, PendingTTL: -1}
	slow := fast
	slow.EventDelay = time.Hour
	f, s := run(t, fast, tr), run(t, slow, tr)
	if f.HitRatio <= s.HitRatio {
		t.Fatalf("hit ratio with 1 ms events %.3f not above with 1 h events %.3f", f.HitRatio, s.HitRatio)
	}
	// With it (the default), routing keeps conversations together before events arrive.
	slow.PendingTTL = 0
	if p := run(t, slow, tr); p.HitRatio <= s.HitRatio {
		t.Fatalf("pending credit: hit ratio %.3f with 1 h events, not above %.3f without it", p.HitRatio, s.HitRatio)
	}
}

func TestConfigErrors(t *testing.T) {
	tr := synthetic(t, 2)
	for _, cfg := range []replay.Config{
		{Engines: 0, Policy: "kv"},
		{Engines: 2, Policy: "nonsense"},
		{Engines: 2, Policy: "kv", EventDelay: -1},
	} {
		if _, err := replay.Run(context.Background(), cfg, tr); err == nil {
			t.Errorf("%+v accepted", cfg)
		}
	}
	if _, err := replay.Run(context.Background(), replay.Config{Engines: 1, Policy: "kv"}, &workload.Trace{}); err == nil {
		t.Error("empty trace accepted")
	}
}

func TestCancel(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := replay.Run(ctx, replay.Config{Engines: 2, Policy: "kv", Engine: sim.Config{NumBlocks: 4000}}, synthetic(t, 100)); err == nil {
		t.Fatal("cancelled replay finished")
	}
}

func TestPlot(t *testing.T) {
	tr := synthetic(t, 10)
	var rs []*replay.Result
	for _, p := range []string{"kv", "round-robin"} {
		rs = append(rs, run(t, replay.Config{Engines: 2, Policy: p, Engine: sim.Config{NumBlocks: 4000}}, tr))
	}
	var b bytes.Buffer
	if err := replay.WriteTTFTCDF(&b, "title <&>", rs); err != nil {
		t.Fatal(err)
	}
	svg := b.String()
	if !strings.HasPrefix(svg, "<svg") || strings.Count(svg, "<polyline") != 2 || !strings.Contains(svg, "title &lt;&amp;&gt;") || !strings.Contains(svg, "round-robin") {
		t.Fatalf("unexpected SVG:\n%.400s", svg)
	}
}

func TestDisaggregatedReplay(t *testing.T) {
	s := workload.DefaultSynthetic()
	s.Conversations, s.Turns, s.SystemTokens = 30, 3, 4096
	tr, err := s.Generate()
	if err != nil {
		t.Fatal(err)
	}
	cfg := replay.Config{Prefill: 1, Decode: 2, Policy: "kv", Engine: sim.Config{NumBlocks: 8000}, Seed: 1}
	res := run(t, cfg, tr)
	if res.Engines != 3 || res.Prefill != 1 || res.Decode != 2 {
		t.Fatalf("engines %d (%dP+%dD)", res.Engines, res.Prefill, res.Decode)
	}
	if res.Disaggregated == 0 || res.TransferredBytes == 0 {
		t.Fatalf("no request went through remote prefill: %+v", res)
	}
	if res.Rejected != 0 || len(res.TTFTs) != len(tr.Requests) {
		t.Fatalf("rejected %d, answered %d of %d", res.Rejected, len(res.TTFTs), len(tr.Requests))
	}
	// Every transferred block is a whole KV block of the engine's model shape.
	if bb := int64(sim.Config{NumBlocks: 8000}.WithDefaults().BlockBytes()); res.TransferredBytes%bb != 0 {
		t.Fatalf("transferred %d bytes, not a multiple of the block size %d", res.TransferredBytes, bb)
	}
	if _, err := replay.Run(context.Background(), replay.Config{Prefill: 1, Policy: "kv"}, tr); err == nil {
		t.Fatal("prefill without decode engines accepted")
	}
}
