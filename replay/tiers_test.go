package replay_test

import (
	"math"
	"testing"
	"time"

	"github.com/kvgate/kvgate/engine/sim"
	"github.com/kvgate/kvgate/replay"
	"github.com/kvgate/kvgate/router"
	"github.com/kvgate/kvgate/workload"
)

// tierTrace is a multi-turn workload whose working set is several times the engines' GPU
// caches, so that blocks are evicted and come back.
func tierTrace(t *testing.T) *workload.Trace {
	t.Helper()
	s := workload.DefaultSynthetic()
	s.Conversations, s.Turns, s.SystemPrompts, s.SystemTokens = 60, 4, 4, 1024
	s.Rate, s.ThinkTime = 8, 4*time.Second
	tr, err := s.Generate()
	if err != nil {
		t.Fatal(err)
	}
	return tr
}

// checkTiers asserts what holds for every replay: the per-tier hit ratios sum to the total,
// and infinite >= bound >= achieved.
func checkTiers(t *testing.T, name string, r *replay.Result) {
	t.Helper()
	t.Logf("%s: hit %.4f (gpu %.4f cpu %.4f disk %.4f remote %.4f) bound %.4f infinite %.4f pulls %d ttft p90 %.1f",
		name, r.HitRatio, r.HitRatioGPU, r.HitRatioCPU, r.HitRatioDisk, r.HitRatioRemote, r.BoundHitRatio, r.InfiniteHitRatio, r.Pulls, r.TTFTP90)
	sum := r.HitRatioGPU + r.HitRatioCPU + r.HitRatioDisk + r.HitRatioRemote
	if math.Abs(sum-r.HitRatio) > 5e-4 {
		t.Errorf("%s: tiers %v+%v+%v+%v = %v, total %v", name, r.HitRatioGPU, r.HitRatioCPU, r.HitRatioDisk, r.HitRatioRemote, sum, r.HitRatio)
	}
	if !(r.InfiniteHitRatio >= r.BoundHitRatio && r.BoundHitRatio >= r.HitRatio && r.HitRatio > 0) {
		t.Errorf("%s: want infinite %v >= bound %v >= achieved %v > 0", name, r.InfiniteHitRatio, r.BoundHitRatio, r.HitRatio)
	}
	if r.Rejected != 0 || len(r.TTFTs) != r.Requests {
		t.Errorf("%s: rejected %d, answered %d of %d", name, r.Rejected, len(r.TTFTs), r.Requests)
	}
}

func TestTierReplay(t *testing.T) {
	tr := tierTrace(t)
	gpu := replay.Config{Engines: 4, Policy: "kv", Engine: sim.Config{NumBlocks: 400}, EventDelay: 5 * time.Millisecond, Seed: 1}
	cpu := gpu
	cpu.Engine.CPUBlocks = 4 * 400
	disk := gpu
	disk.Engine.CPUBlocks, disk.Engine.DiskBlocks = 400, 1600

	g, c, d := run(t, gpu, tr), run(t, cpu, tr), run(t, disk, tr)
	checkTiers(t, "gpu only", g)
	checkTiers(t, "cpu tier", c)
	checkTiers(t, "cpu and disk tiers", d)
	if g.HitRatioCPU != 0 || g.HitRatioDisk != 0 || g.HitRatioRemote != 0 || g.HitRatioGPU != g.HitRatio {
		t.Errorf("GPU-only replay reports lower-tier hits: %+v", g)
	}
	if c.HitRatioCPU == 0 || c.HitRatioDisk != 0 {
		t.Errorf("CPU tier: cpu %v disk %v, want cpu hits only", c.HitRatioCPU, c.HitRatioDisk)
	}
	if d.HitRatioDisk == 0 {
		t.Errorf("disk tier: no disk hits: %+v", d)
	}
	// The tiers add capacity: more hits, and a higher bound, on the same GPU caches.
	if c.HitRatio <= g.HitRatio || c.BoundHitRatio <= g.BoundHitRatio {
		t.Errorf("CPU tier: hit ratio %v (bound %v), not above GPU-only %v (%v)", c.HitRatio, c.BoundHitRatio, g.HitRatio, g.BoundHitRatio)
	}
	if g.InfiniteHitRatio != c.InfiniteHitRatio {
		t.Errorf("infinite hit ratio depends on the engines: %v, %v", g.InfiniteHitRatio, c.InfiniteHitRatio)
	}
	// Derived credits run too, on the engines' own timing model.
	dc := disk
	dc.TierCredits = router.TierCreditsDerived
	checkTiers(t, "derived credits", run(t, dc, tr))
}

// TestP2PReplay: with the cluster-wide cache on, busy holders hand prefixes to other engines;
// the pulls cross the network (bytes counted, whole blocks) and count as remote hits.
func TestP2PReplay(t *testing.T) {
	tr := tierTrace(t)
	base := replay.Config{Engines: 4, Policy: "kv", Engine: sim.Config{NumBlocks: 400, CPUBlocks: 1600}, EventDelay: 5 * time.Millisecond, Seed: 1}
	p2p := base
	p2p.P2P = true
	off, on := run(t, base, tr), run(t, p2p, tr)
	checkTiers(t, "p2p off", off)
	checkTiers(t, "p2p", on)
	if off.Pulls != 0 || off.HitRatioRemote != 0 {
		t.Errorf("pulls without P2P: %+v", off)
	}
	if on.Pulls == 0 || on.HitRatioRemote == 0 {
		t.Fatalf("P2P: %d pulls, remote hit ratio %v; want some", on.Pulls, on.HitRatioRemote)
	}
	if bb := int64(base.Engine.WithDefaults().BlockBytes()); on.PulledBytes == 0 || on.PulledBytes%bb != 0 {
		t.Errorf("pulled %d bytes, not whole blocks of %d", on.PulledBytes, bb)
	}
	if on.BoundHitRatio != off.BoundHitRatio {
		t.Errorf("bound differs with P2P: %v, %v", on.BoundHitRatio, off.BoundHitRatio)
	}
}
