package replay

import (
	"context"
	"fmt"
	"math"
	"time"

	"github.com/kvgate/kvgate/planner"
	"github.com/kvgate/kvgate/workload"
)

// Names of the fleets ComparePlanners runs.
const (
	FleetStaticPeak = "static-at-peak"
	FleetStaticMean = "static-at-mean"
	// FleetStaticSame is the fewest static engines whose attainment reaches the sla
	// planner's: the fleet the "same attainment" compares against.
	FleetStaticSame = "static-at-sla-attainment"
)

// PlannerModes lists what --planner accepts besides "all".
func PlannerModes() []string {
	return []string{planner.ModeSLA, planner.ModeLoad, planner.ModeStatic, ModeOracle}
}

// ComparePlanners runs the same trace four ways: static-at-peak (the fewest static engines, up
// to cfg.Engines, whose attainment reaches target, found by bisection), static-at-mean (that
// count scaled by the rate profile's mean over its peak, rounded up), and the load and sla
// planners with cfg.Engines as their budget, both starting from the static-at-mean count.
// A fifth, static-at-sla-attainment, is the fewest static engines whose attainment reaches
// the sla planner's, when that is another count than static-at-peak's (none when no count
// within the budget reaches it). cfg.Planner carries the planner settings (its mode is
// replaced).
func ComparePlanners(ctx context.Context, cfg Config, tr *workload.Trace, rates workload.RateProfile, target float64) ([]*Result, error) {
	if cfg.Planner == nil {
		return nil, fmt.Errorf("replay: comparing planners needs planner settings")
	}
	runs := map[int]*Result{}
	static := func(n int) (*Result, error) {
		if r := runs[n]; r != nil {
			c := *r
			return &c, nil
		}
		c := cfg
		c.Engines, c.Planner = n, nil
		r, err := Run(ctx, c, tr)
		if err != nil {
			return nil, err
		}
		runs[n] = r
		c2 := *r
		return &c2, nil
	}
	// Bisection on the static count: attainment grows with engines.
	lo, hi := 1, cfg.Engines
	best, err := static(hi)
	if err != nil {
		return nil, err
	}
	for lo < hi {
		mid := (lo + hi) / 2
		r, err := static(mid)
		if err != nil {
			return nil, err
		}
		if r.SLAAttainment >= target {
			hi, best = mid, r
		} else {
			lo = mid + 1
		}
	}
	if best.Engines != hi {
		if best, err = static(hi); err != nil {
			return nil, err
		}
	}
	best.Planner = FleetStaticPeak
	span := tr.Requests[len(tr.Requests)-1].Arrival
	meanN := hi
	if len(rates) > 0 {
		meanN = max(1, int(math.Ceil(float64(hi)*rates.Mean(span)/rates.Peak(span)-1e-9)))
	}
	mean, err := static(meanN)
	if err != nil {
		return nil, err
	}
	mean.Planner = FleetStaticMean
	out := []*Result{best, mean}
	for _, mode := range []string{planner.ModeLoad, planner.ModeSLA} {
		c := cfg
		run := *cfg.Planner
		run.Planner.Mode, run.Initial = mode, meanN
		c.Planner = &run
		r, err := Run(ctx, c, tr)
		if err != nil {
			return nil, fmt.Errorf("planner %s: %w", mode, err)
		}
		out = append(out, r)
	}
	same, err := fewestStatic(static, out[len(out)-1].SLAAttainment, cfg.Engines)
	if err != nil {
		return nil, err
	}
	if same != nil && same.Engines != hi {
		same.Planner = FleetStaticSame
		out = append(out, same)
	}
	return out, nil
}

// fewestStatic is the static run with the fewest engines, up to budget, whose attainment
// reaches target (bisection: attainment grows with engines); nil when none does.
func fewestStatic(static func(int) (*Result, error), target float64, budget int) (*Result, error) {
	top, err := static(budget)
	if err != nil || top.SLAAttainment < target {
		return nil, err
	}
	lo, hi, best := 1, budget, top
	for lo < hi {
		mid := (lo + hi) / 2
		r, err := static(mid)
		if err != nil {
			return nil, err
		}
		if r.SLAAttainment >= target {
			hi, best = mid, r
		} else {
			lo = mid + 1
		}
	}
	return best, nil
}

// StartupSweep runs the load and sla planners at each start-up time: the attainment each
// keeps as engines take longer to load.
func StartupSweep(ctx context.Context, cfg Config, tr *workload.Trace, startups []time.Duration) ([]*Result, error) {
	var out []*Result
	for _, s := range startups {
		for _, mode := range []string{planner.ModeLoad, planner.ModeSLA} {
			c := cfg
			run := *cfg.Planner
			run.Planner.Mode, run.Startup, run.Planner.Startup = mode, s, 0
			c.Planner = &run
			r, err := Run(ctx, c, tr)
			if err != nil {
				return nil, err
			}
			out = append(out, r)
		}
	}
	return out, nil
}
