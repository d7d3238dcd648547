package replay_test

import (
	"bytes"
	"encoding/json"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/kvgate/kvgate/engine/sim"
	"github.com/kvgate/kvgate/planner"
	"github.com/kvgate/kvgate/replay"
	"github.com/kvgate/kvgate/workload"
)

// stepTrace is single-turn requests at 2/s whose rate doubles at 300 s (replayed time).
func stepTrace(t *testing.T) *workload.Trace {
	t.Helper()
	s := workload.DefaultSynthetic()
	s.Conversations, s.Turns, s.SystemPrompts, s.SystemTokens = 1500, 1, 4, 512
	s.UserTokens, s.OutputTokens, s.Rate = 512, 32, 2
	tr, err := s.Generate()
	if err != nil {
		t.Fatal(err)
	}
	p, err := workload.ParseRateProfile("0:1,300:2")
	if err != nil {
		t.Fatal(err)
	}
	tr.ApplyRateProfile(p)
	return tr
}

// slowEngine is a sim engine 20 times slower than the default, so that a few requests a
// second need several engines, with small prefill chunks so that decode keeps its pace.
func slowEngine() sim.Config {
	tm := sim.DefaultTiming()
	tm.Speed = 0.05
	return sim.Config{NumBlocks: 4000, Timing: tm, MaxNumBatchedTokens: 512}
}

func plannerConfig(mode string, budget int, startup time.Duration) replay.Config {
	ecfg := slowEngine()
	return replay.Config{
		Engines: budget, Policy: "kv", Engine: ecfg, EventDelay: 5 * time.Millisecond, Seed: 1,
		SLATTFT: 4 * time.Second, SLAITL: time.Second,
		Planner: &replay.PlannerRun{
			Planner: planner.Config{Mode: mode, TTFT: 2 * time.Second, ITL: time.Second, Interval: 30 * time.Second, Profile: planner.ProfileFromSim(ecfg)},
			Startup: startup, Initial: 2,
		},
	}
}

// After a 2x step the sla planner has the engines the step calls for (what it wants two
// intervals after the step) serving within start-up plus two intervals.
func TestPlannerStepResponse(t *testing.T) {
	const startup, interval, step = 60 * time.Second, 30 * time.Second, 300 * time.Second
	res := run(t, plannerConfig(planner.ModeSLA, 20, startup), stepTrace(t))
	deadline := (step + startup + 2*interval).Seconds()
	var before, wanted, at int
	for _, p := range res.Timeline {
		switch {
		case p.At <= step.Seconds():
			before = p.Ready
		case p.At <= (step + 2*interval).Seconds():
			wanted = p.Desired
		}
		if p.At <= deadline {
			at = p.Ready
		}
	}
	if wanted < 3*before/2 || at < wanted {
		t.Fatalf("serving %d before the step, wanting %d two intervals after it, serving %d at start-up + two intervals (%.0f s); want at least 1.5x and all of it serving\n%+v", before, wanted, at, deadline, res.Timeline)
	}
}

func TestPlannerResultInvariants(t *testing.T) {
	tr := stepTrace(t)
	const budget = 12
	static := plannerConfig(planner.ModeStatic, budget, 30*time.Second)
	static.Planner.Initial = 0
	results := map[string]*replay.Result{}
	for _, cfg := range []replay.Config{static, plannerConfig(planner.ModeLoad, budget, 30*time.Second), plannerConfig(planner.ModeSLA, budget, 30*time.Second)} {
		r := run(t, cfg, tr)
		results[r.Planner] = r
		// The JSON carries the fleet fields.
		var buf bytes.Buffer
		if err := json.NewEncoder(&buf).Encode(r); err != nil {
			t.Fatal(err)
		}
		for _, k := range []string{`"sla_attainment":`, `"gpu_hours":`, `"max_engines_used":`, `"scale_events":`, `"timeline":`} {
			if !strings.Contains(buf.String(), k) {
				t.Fatalf("%s: JSON without %s: %s", r.Planner, k, buf.String())
			}
		}
		if r.SLAAttainment < 0 || r.SLAAttainment > 1 || r.Requests != len(tr.Requests) {
			t.Fatalf("%s: attainment %v of %d requests", r.Planner, r.SLAAttainment, r.Requests)
		}
		if r.MaxEnginesUsed < 1 || r.MaxEnginesUsed > budget {
			t.Fatalf("%s: %d engines used at most, budget %d", r.Planner, r.MaxEnginesUsed, budget)
		}
		if most := float64(budget) * r.VirtualSeconds / 3600; r.GPUHours <= 0 || r.GPUHours > most+1e-3 {
			t.Fatalf("%s: %v GPU-hours, more than the budget's %v", r.Planner, r.GPUHours, most)
		}
		for _, p := range r.Timeline {
			if held := p.Ready + p.Starting + p.Draining; held > budget || p.Ready < 1 {
				t.Fatalf("%s: at %.0f s %d engines held, %d serving (budget %d)", r.Planner, p.At, held, p.Ready, budget)
			}
		}
	}
	st := results[planner.ModeStatic]
	if st.ScaleEvents != 0 || st.MaxEnginesUsed != budget || math.Abs(st.GPUHours-float64(budget)*st.VirtualSeconds/3600) > 1e-3 {
		t.Fatalf("static: %d scale events, %d engines, %v GPU-hours over %v s", st.ScaleEvents, st.MaxEnginesUsed, st.GPUHours, st.VirtualSeconds)
	}
	for _, mode := range []string{planner.ModeLoad, planner.ModeSLA} {
		if r := results[mode]; r.ScaleEvents == 0 || r.GPUHours >= st.GPUHours {
			t.Fatalf("%s: %d scale events, %v GPU-hours (static at the budget: %v)", mode, r.ScaleEvents, r.GPUHours, st.GPUHours)
		}
	}
}

func TestPlannerConfigErrors(t *testing.T) {
	tr := stepTrace(t)
	cfg := plannerConfig(planner.ModeSLA, 4, 0)
	cfg.Planner.Initial = 5
	if _, err := replay.Run(t.Context(), cfg, tr); err == nil || !strings.Contains(err.Error(), "initial engines") {
		t.Fatalf("initial over the budget: %v", err)
	}
	cfg = plannerConfig("magic", 4, 0)
	if _, err := replay.Run(t.Context(), cfg, tr); err == nil || !strings.Contains(err.Error(), "unknown mode") {
		t.Fatalf("unknown mode: %v", err)
	}
	cfg = plannerConfig(planner.ModeSLA, 4, 0)
	cfg.Prefill, cfg.Decode = 1, 1
	if _, err := replay.Run(t.Context(), cfg, tr); err == nil || !strings.Contains(err.Error(), "aggregated") {
		t.Fatalf("disaggregated: %v", err)
	}
}
