package replay_test

import (
	"testing"
	"time"

	"github.com/kvgate/kvgate/planner"
	"github.com/kvgate/kvgate/replay"
	"github.com/kvgate/kvgate/workload"
)

// --planner all compares the sla planner with the fewest static engines that reach its own
// attainment: that fleet reaches it, and one engine fewer does not.
func TestComparePlannersStaticAtSLAAttainment(t *testing.T) {
	tr := stepTrace(t)
	cfg := plannerConfig(planner.ModeSLA, 8, 30*time.Second)
	rates, err := workload.ParseRateProfile("0:1,300:2")
	if err != nil {
		t.Fatal(err)
	}
	rs, err := replay.ComparePlanners(t.Context(), cfg, tr, rates, 0.5)
	if err != nil {
		t.Fatal(err)
	}
	byName := map[string]*replay.Result{}
	for _, r := range rs {
		byName[r.Planner] = r
		t.Logf("%s: %d engines at most, attainment %.3f, %.3f GPU-hours", r.Planner, r.MaxEnginesUsed, r.SLAAttainment, r.GPUHours)
	}
	sla, peak := byName[planner.ModeSLA], byName[replay.FleetStaticPeak]
	if sla == nil || peak == nil || byName[planner.ModeLoad] == nil || byName[replay.FleetStaticMean] == nil {
		t.Fatalf("fleets %v", rs)
	}
	same := byName[replay.FleetStaticSame]
	if same == nil {
		same = peak // the same count
	}
	if same.SLAAttainment < sla.SLAAttainment {
		t.Fatalf("static with %d engines attains %.3f, under sla's %.3f", same.Engines, same.SLAAttainment, sla.SLAAttainment)
	}
	if same.Engines > 1 {
		c := cfg
		c.Engines, c.Planner = same.Engines-1, nil
		if fewer := run(t, c, tr); fewer.SLAAttainment >= sla.SLAAttainment {
			t.Fatalf("static with %d engines already attains %.3f >= sla's %.3f; %d is not the fewest", c.Engines, fewer.SLAAttainment, sla.SLAAttainment, same.Engines)
		}
	}
}
