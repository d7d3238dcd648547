package replay_test

import (
	"testing"
	"time"

	"github.com/kvgate/kvgate/planner"
	"github.com/kvgate/kvgate/replay"
)

// After a 2x step in load, the engines the sla planner holds for the new level (the most it
// wants after the step) are serving within start-up plus two intervals of the step: it sizes
// the step by its second decision after it (a new level counts once it held two intervals)
// and the engines load for the start-up.
func TestPlannerStepReadyWithinStartupPlusTwoIntervals(t *testing.T) {
	const startup, interval, step = 60 * time.Second, 30 * time.Second, 300 * time.Second
	tr := stepTrace(t)
	res := run(t, plannerConfig(planner.ModeSLA, 20, startup), tr)
	end := tr.Requests[len(tr.Requests)-1].Arrival.Seconds()
	before, level := 0, 0
	for _, p := range res.Timeline {
		if p.At <= step.Seconds() {
			before = p.Ready
		} else if p.At <= end {
			level = max(level, p.Desired)
		}
	}
	if 2*level < 3*before {
		t.Fatalf("%d engines before the 2x step, at most %d wanted after it; want at least 1.5x", before, level)
	}
	deadline := (step + startup + 2*interval).Seconds()
	ready, readyAt := 0, -1.0
	for _, p := range res.Timeline {
		if p.At <= deadline {
			ready = p.Ready
		}
		if readyAt < 0 && p.At > step.Seconds() && p.Ready >= level {
			readyAt = p.At
		}
	}
	t.Logf("%d engines before the step, %d for the level after it, %d serving at step + start-up + two intervals (%.0f s), all %d first seen serving at the decision of %.0f s", before, level, ready, deadline, level, readyAt)
	if ready < level {
		t.Fatalf("%d engines serving at step + start-up + two intervals (%.0f s), want the %d the planner holds for the new level\n%+v", ready, deadline, level, res.Timeline)
	}
}

// The oracle (the sla planner told the trace's future) has the step's engines serving by
// the time the step comes: it starts them a start-up ahead. It is a bound, not a planner one
// can run.
func TestPlannerOracleIsReadyForTheStep(t *testing.T) {
	const startup, interval, step = 60 * time.Second, 30 * time.Second, 300 * time.Second
	tr := stepTrace(t)
	sla := run(t, plannerConfig(planner.ModeSLA, 20, startup), tr)
	oracle := run(t, plannerConfig(replay.ModeOracle, 20, startup), tr)
	if oracle.Planner != replay.ModeOracle {
		t.Fatalf("result named %q, want %q", oracle.Planner, replay.ModeOracle)
	}
	readyAt := func(r *replay.Result, at float64) int {
		n := 0
		for _, p := range r.Timeline {
			if p.At <= at {
				n = p.Ready
			}
		}
		return n
	}
	var before int
	for _, p := range oracle.Timeline {
		if p.At <= step.Seconds()-startup.Seconds()-interval.Seconds() {
			before = p.Ready
		}
	}
	at := step.Seconds() + interval.Seconds()/2
	if o, s := readyAt(oracle, at), readyAt(sla, at); o <= before || o <= s {
		t.Fatalf("serving %.0f s after the step: oracle %d (it served %d a start-up before the step), sla %d; want the oracle ahead of both", interval.Seconds()/2, o, before, s)
	}
	t.Logf("oracle %.3f attainment, %.3f GPU-hours; sla %.3f, %.3f", oracle.SLAAttainment, oracle.GPUHours, sla.SLAAttainment, sla.GPUHours)
}
