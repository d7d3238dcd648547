package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/kvgate/kvgate/planner"
	"github.com/kvgate/kvgate/replay"
	"github.com/kvgate/kvgate/workload"
)

// replayPlannerFlags are kvgate replay's planner and SLA options.
type replayPlannerFlags struct {
	mode        string
	startupS    float64
	rateProfile string
	rates       workload.RateProfile
	slaTTFTMs   float64
	slaITLMs    float64
	ttftMs      float64
	itlMs       float64
	target      float64
	initial     int
	profile     string
	cfg         planner.Config
	sweep       string
}

func (p *replayPlannerFlags) add(cmd *cobra.Command) {
	f := cmd.Flags()
	f.StringVar(&p.mode, "planner", "", "scale the engines with a planner in the loop: "+strings.Join(replay.PlannerModes(), ", ")+", or all (static-at-peak, static-at-mean, load, sla and the fewest static engines that reach sla's attainment, side by side); --engines is then the GPU budget")
	f.Float64Var(&p.startupS, "startup-s", 60, "planner: seconds a started engine loads before it serves")
	f.StringVar(&p.rateProfile, "rate-profile", "", `change the arrival rate in steps, "time:scale,...": e.g. "0:1,600:3,1800:1" triples it from 600 s to 1800 s (seconds of replayed time)`)
	f.Float64Var(&p.slaTTFTMs, "sla-ttft-ms", 5000, "SLA: a request meets it with TTFT at most this (sla_attainment)")
	f.Float64Var(&p.slaITLMs, "sla-itl-ms", 50, "SLA: ... and mean ITL at most this")
	f.Float64Var(&p.ttftMs, "planner-ttft-ms", 0, "sla planner: its p90 TTFT target (0: half of --sla-ttft-ms, so that about 95% of requests fall within the SLA)")
	f.Float64Var(&p.itlMs, "planner-itl-ms", 0, "sla planner: its ITL target (0: --sla-itl-ms)")
	f.Float64Var(&p.target, "sla-target", 0.95, "planner all: the attainment static-at-peak must reach")
	f.IntVar(&p.initial, "initial-engines", 0, "planner: engines serving at time 0 (0: all of --engines; planner all starts load and sla at static-at-mean)")
	f.StringVar(&p.profile, "profile", "", "sla planner: engine profile file (default: derived from the simulated engine's timing model)")
	f.DurationVar(&p.cfg.Interval, "planner-interval", 30*time.Second, "planner: time between decisions")
	f.DurationVar(&p.cfg.Cooldown, "planner-cooldown", 0, "planner: no scale-down this soon after a change (0: four intervals)")
	f.IntVar(&p.cfg.MaxStep, "planner-max-step", 0, "planner: most engines added or removed per decision (0: no limit)")
	f.Float64Var(&p.cfg.Headroom, "planner-headroom", 0, "sla planner: size for the forecast plus this many standard deviations of the recent rate, grown with the square root of the start-up in intervals (0: none)")
	f.Float64Var(&p.cfg.DownBand, "planner-down-band", 0, "sla planner: scale down only when the forecast's upper band fits, this many standard deviations of the intervals' needs, grown with the square root of the start-up in intervals (0: the default, 1; negative: off)")
	f.BoolVar(&p.cfg.Backlog, "planner-backlog", false, "sla planner: add the engines that clear the queued prompt tokens beyond the pool's in-flight work within start-up + one interval")
	f.StringVar(&p.sweep, "startup-sweep", "", `planner: run load and sla at each of these start-up seconds, e.g. "15,60,120,300", and print attainment against start-up`)
}

// prepare validates the flags and applies the rate profile to tr and the targets to cfg.
func (p *replayPlannerFlags) prepare(cfg *replay.Config, tr *workload.Trace) error {
	if p.rateProfile != "" {
		rates, err := workload.ParseRateProfile(p.rateProfile)
		if err != nil {
			return err
		}
		p.rates = rates
		tr.ApplyRateProfile(rates)
	}
	if p.slaTTFTMs < 0 || p.slaITLMs < 0 || p.startupS < 0 {
		return fmt.Errorf("--sla-ttft-ms, --sla-itl-ms and --startup-s must be >= 0")
	}
	cfg.SLATTFT = time.Duration(p.slaTTFTMs * float64(time.Millisecond))
	cfg.SLAITL = time.Duration(p.slaITLMs * float64(time.Millisecond))
	if p.mode == "" {
		if p.sweep != "" {
			return fmt.Errorf("--startup-sweep needs --planner")
		}
		return nil
	}
	if p.mode != "all" && !slices.Contains(replay.PlannerModes(), p.mode) {
		return fmt.Errorf("--planner %q: want %s or all", p.mode, strings.Join(replay.PlannerModes(), ", "))
	}
	pc := p.cfg
	pc.Mode, pc.TTFT, pc.ITL = p.mode, cfg.SLATTFT/2, cfg.SLAITL
	if p.ttftMs > 0 {
		pc.TTFT = time.Duration(p.ttftMs * float64(time.Millisecond))
	}
	if p.itlMs > 0 {
		pc.ITL = time.Duration(p.itlMs * float64(time.Millisecond))
	}
	if p.profile != "" {
		prof, err := planner.LoadProfile(p.profile)
		if err != nil {
			return err
		}
		pc.Profile = prof
	} else {
		pc.Profile = planner.ProfileFromSim(cfg.Engine)
	}
	cfg.Planner = &replay.PlannerRun{Planner: pc, Startup: time.Duration(p.startupS * float64(time.Second)), Initial: p.initial}
	check := cfg.Planner.Planner
	if p.mode == "all" || p.mode == replay.ModeOracle {
		check.Mode = planner.ModeSLA // validated now; ComparePlanners sets each, oracle is sla told the future
	}
	if p.mode == "all" {
		cfg.Planner.Planner.Mode = planner.ModeSLA
	}
	_, err := planner.New(check)
	return err
}

// run replays under the planner flags.
func (p *replayPlannerFlags) run(ctx context.Context, cfg replay.Config, tr *workload.Trace) ([]*replay.Result, error) {
	if p.sweep != "" {
		var startups []time.Duration
		for s := range strings.SplitSeq(p.sweep, ",") {
			var x float64
			if _, err := fmt.Sscan(strings.TrimSpace(s), &x); err != nil || x < 0 {
				return nil, fmt.Errorf("--startup-sweep %q: %q is not a number of seconds", p.sweep, s)
			}
			startups = append(startups, time.Duration(x*float64(time.Second)))
		}
		return replay.StartupSweep(ctx, cfg, tr, startups)
	}
	if p.mode == "all" {
		return replay.ComparePlanners(ctx, cfg, tr, p.rates, p.target)
	}
	if cfg.Planner.Initial == 0 && p.mode != planner.ModeStatic {
		cfg.Planner.Initial = cfg.Engines
	}
	r, err := replay.Run(ctx, cfg, tr)
	if err != nil {
		return nil, err
	}
	return []*replay.Result{r}, nil
}

// plot writes the fleet plot of planner results to path.
func (p *replayPlannerFlags) plot(path, title string, rs []*replay.Result) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := replay.WriteFleetPlot(f, title, rs); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func printPlannerReplay(w io.Writer, rs []*replay.Result) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "fleet\tstart-up s\tbudget\tmax engines\tGPU-hours\tSLA attainment\tscale events\tTTFT p50 ms\tTTFT p90 ms\tITL p90 ms\trejected\t")
	for _, r := range rs {
		fmt.Fprintf(tw, "%s\t%.0f\t%d\t%d\t%.3f\t%.4f\t%d\t%.1f\t%.1f\t%.2f\t%d\t\n",
			r.Planner, r.StartupSeconds, r.Engines, r.MaxEnginesUsed, r.GPUHours, r.SLAAttainment, r.ScaleEvents, r.TTFTP50, r.TTFTP90, r.ITLP90, r.Rejected)
	}
	tw.Flush()
}

// replayPlanners is kvgate replay with --planner.
func replayPlanners(cmd *cobra.Command, p *replayPlannerFlags, cfg replay.Config, tr *workload.Trace, plot string, asJSON bool) error {
	rs, err := p.run(cmd.Context(), cfg, tr)
	if err != nil {
		return err
	}
	if plot != "" {
		title := fmt.Sprintf("%s, %d requests, budget %d engines, start-up %.0f s", tr.Name, len(tr.Requests), cfg.Engines, p.startupS)
		if err := p.plot(plot, title, rs); err != nil {
			return err
		}
	}
	out := cmd.OutOrStdout()
	if asJSON {
		enc := json.NewEncoder(out)
		if len(rs) == 1 {
			return enc.Encode(rs[0])
		}
		return enc.Encode(rs)
	}
	printPlannerReplay(out, rs)
	return nil
}
