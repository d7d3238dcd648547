package replay_test

import (
	"os"
	"testing"
	"time"

	"github.com/kvgate/kvgate/engine/sim"
	"github.com/kvgate/kvgate/planner"
	"github.com/kvgate/kvgate/replay"
	"github.com/kvgate/kvgate/workload"
)

// directionChanges counts the timeline's reversals (a scale-up after a scale-down or the
// other way round) at or after from seconds, and the intervals it counted over.
func directionChanges(tl []replay.Point, from float64) (changes, intervals int) {
	last := 0
	for _, p := range tl {
		if p.At < from {
			continue
		}
		intervals++
		if d := p.Desired - p.Current; d != 0 {
			dir := 1
			if d < 0 {
				dir = -1
			}
			if last != 0 && dir != last {
				changes++
			}
			last = dir
		}
	}
	return changes, intervals
}

// On the Mooncake trace's steady opening (0.4x, no burst), whose prompt lengths swing widely
// from one interval to the next, the sla planner changes direction at most once per ten
// intervals. Before it sized scale-downs on the peak of the cooldown's needs and stepped down
// one engine at a time, it reversed 7 times in the 48 intervals from 120 s to 600 s.
func TestPlannerMooncakeSteadyDoesNotFlap(t *testing.T) {
	f, err := os.Open("../workload/testdata/mooncake_synthetic_trace.jsonl")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tr, err := workload.ReadMooncake(f)
	if err != nil {
		t.Fatal(err)
	}
	if err := tr.ScaleRate(0.4); err != nil {
		t.Fatal(err)
	}
	n := 0
	for n < len(tr.Requests) && tr.Requests[n].Arrival < 600*time.Second {
		n++
	}
	tr.Limit(n)
	ecfg := sim.Config{}
	cfg := replay.Config{
		Engines: 16, Policy: "kv", Engine: ecfg, EventDelay: 5 * time.Millisecond, Seed: 1,
		SLATTFT: 5 * time.Second, SLAITL: 50 * time.Millisecond,
		Planner: &replay.PlannerRun{
			Planner: planner.Config{Mode: planner.ModeSLA, TTFT: 2500 * time.Millisecond, ITL: 50 * time.Millisecond,
				Interval: 10 * time.Second, Profile: planner.ProfileFromSim(ecfg)},
			Startup: 15 * time.Second, Initial: 4,
		},
	}
	r := run(t, cfg, tr)
	changes, intervals := directionChanges(r.Timeline, 120)
	t.Logf("%d direction changes in %d intervals; attainment %.3f, %.3f GPU-hours", changes, intervals, r.SLAAttainment, r.GPUHours)
	if intervals < 40 || changes*10 > intervals {
		t.Fatalf("%d direction changes in %d intervals from 120 s; want at most one per ten\n%+v", changes, intervals, r.Timeline)
	}
}
