package planner_test

import (
	"math"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/kvgate/kvgate/engine/sim"
	"github.com/kvgate/kvgate/planner"
)

var (
	t0  = time.Unix(1_700_000_000, 0)
	agg = planner.Pool{Model: "m", Role: planner.RoleAggregated}
	pre = planner.Pool{Model: "m", Role: planner.RolePrefill}
	dec = planner.Pool{Model: "m", Role: planner.RoleDecode}
)

func slaConfig() planner.Config {
	return planner.Config{
		Mode: planner.ModeSLA, TTFT: 2 * time.Second, ITL: 50 * time.Millisecond,
		Interval: 30 * time.Second, Startup: 60 * time.Second,
		Profile: planner.ProfileFromSim(sim.Config{}),
	}
}

func mustNew(t *testing.T, cfg planner.Config) *planner.Planner {
	t.Helper()
	p, err := planner.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func state(pool planner.Pool, rate float64, ready int) planner.PoolState {
	return planner.PoolState{Pool: pool, ArrivalRate: rate, PromptTokens: 4096, OutputTokens: 256, PrefixHitRate: 0.3, Ready: ready}
}

func TestConfigErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  planner.Config
		want string
	}{
		{"unknown mode", planner.Config{Mode: "magic"}, "unknown mode"},
		{"sla without targets", planner.Config{Mode: planner.ModeSLA, Profile: planner.ProfileFromSim(sim.Config{})}, "TTFT and ITL"},
		{"sla without profile", planner.Config{Mode: planner.ModeSLA, TTFT: time.Second, ITL: time.Second}, "profile"},
		{"negative budget", planner.Config{Mode: planner.ModeLoad, GPUBudget: -1}, "GPU budget"},
		{"hysteresis", planner.Config{Mode: planner.ModeLoad, Hysteresis: 2}, "hysteresis"},
		{"negative headroom", planner.Config{Mode: planner.ModeLoad, Headroom: -1}, "headroom"},
		{"down band not a number", planner.Config{Mode: planner.ModeLoad, DownBand: math.NaN()}, "down band"},
		{"min over max", planner.Config{Mode: planner.ModeLoad, Limits: []planner.Limits{{Pool: agg, Min: 3, Max: 2}}}, "limits"},
		{"pool twice", planner.Config{Mode: planner.ModeLoad, Limits: []planner.Limits{{Pool: agg}, {Pool: agg}}}, "twice"},
		{"thresholds", planner.Config{Mode: planner.ModeLoad, Load: planner.LoadThresholds{QueueHigh: 1, QueueLow: 2, KVHigh: 0.9}}, "thresholds"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := planner.New(tc.cfg)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("New: %v, want an error about %q", err, tc.want)
			}
		})
	}
}

func TestStatic(t *testing.T) {
	p := mustNew(t, planner.Config{Mode: planner.ModeStatic, Limits: []planner.Limits{{Pool: pre, Min: 1, Static: 4}}})
	ds := p.Decide(t0, []planner.PoolState{state(pre, 100, 2), state(dec, 100, 3)})
	if ds[0].Desired != 4 || ds[1].Desired != 3 || ds[0].Reason != planner.ReasonStatic {
		t.Fatalf("static: %+v, want prefill at its static 4 and decode held at 3", ds)
	}
}

func TestLoadMode(t *testing.T) {
	for _, tc := range []struct {
		name   string
		st     planner.PoolState
		want   int
		reason string
	}{
		{"queue high", planner.PoolState{Pool: agg, Ready: 2, QueuedPrefillTokens: 2 * 20000, KVUsage: 0.3}, 3, planner.ReasonQueueHigh},
		{"kv high", planner.PoolState{Pool: agg, Ready: 2, KVUsage: 0.95}, 3, planner.ReasonKVHigh},
		{"both low", planner.PoolState{Pool: agg, Ready: 2, QueuedPrefillTokens: 100, KVUsage: 0.1}, 1, planner.ReasonLoadLow},
		{"between", planner.PoolState{Pool: agg, Ready: 2, QueuedPrefillTokens: 2 * 4000, KVUsage: 0.6}, 2, planner.ReasonSteady},
		{"decode ignores the queue", planner.PoolState{Pool: dec, Ready: 2, QueuedPrefillTokens: 1e6, KVUsage: 0.6}, 2, planner.ReasonSteady},
		{"prefill ignores KV", planner.PoolState{Pool: pre, Ready: 2, KVUsage: 0.99}, 1, planner.ReasonLoadLow},
		{"at min", planner.PoolState{Pool: agg, Ready: 1}, 1, planner.ReasonMinReplicas},
		{"pending holds scale-down", planner.PoolState{Pool: agg, Ready: 2, Pending: 1}, 3, planner.ReasonSteady},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := mustNew(t, planner.Config{Mode: planner.ModeLoad})
			d := p.Decide(t0, []planner.PoolState{tc.st})[0]
			if d.Desired != tc.want || d.Reason != tc.reason {
				t.Fatalf("decision %+v, want %d for %s", d, tc.want, tc.reason)
			}
		})
	}
}

func TestCooldownAndLimits(t *testing.T) {
	p := mustNew(t, planner.Config{Mode: planner.ModeLoad, Cooldown: 2 * time.Minute, Limits: []planner.Limits{{Pool: agg, Min: 1, Max: 3}}})
	hot := planner.PoolState{Pool: agg, Ready: 3, KVUsage: 0.99}
	if d := p.Decide(t0, []planner.PoolState{hot})[0]; d.Desired != 3 || d.Reason != planner.ReasonMaxReplicas {
		t.Fatalf("at max: %+v", d)
	}
	hot.Ready = 2
	if d := p.Decide(t0, []planner.PoolState{hot})[0]; d.Desired != 3 {
		t.Fatalf("scale-up: %+v", d)
	}
	cold := planner.PoolState{Pool: agg, Ready: 3}
	if d := p.Decide(t0.Add(time.Minute), []planner.PoolState{cold})[0]; d.Desired != 3 || d.Reason != planner.ReasonCooldown {
		t.Fatalf("a minute after a scale-up: %+v, want held by the cooldown", d)
	}
	if d := p.Decide(t0.Add(2*time.Minute), []planner.PoolState{cold})[0]; d.Desired != 2 {
		t.Fatalf("after the cooldown: %+v, want one fewer", d)
	}
}

func TestMaxStep(t *testing.T) {
	cfg := slaConfig()
	cfg.MaxStep = 2
	p := mustNew(t, cfg)
	d := p.Decide(t0, []planner.PoolState{state(agg, 50, 1)})[0]
	if d.Desired != 3 || d.Reason != planner.ReasonMaxStep {
		t.Fatalf("%+v, want one step of 2", d)
	}
}

func TestSLARoles(t *testing.T) {
	p := mustNew(t, slaConfig())
	ds := p.Decide(t0, []planner.PoolState{state(pre, 10, 0), state(dec, 10, 0), state(agg, 10, 0)})
	if ds[0].Reason != planner.ReasonPrefillForecast || ds[1].Reason != planner.ReasonDecodeForecast {
		t.Fatalf("reasons %+v", ds)
	}
	if ds[2].Desired < ds[0].Desired || ds[2].Desired < ds[1].Desired || ds[2].Desired > ds[0].Desired+ds[1].Desired {
		t.Fatalf("aggregated %d should lie between max and sum of prefill %d and decode %d", ds[2].Desired, ds[0].Desired, ds[1].Desired)
	}
	// A prefix hit rate discounts prefill work.
	hot := state(pre, 10, 0)
	hot.PrefixHitRate = 0.9
	if d := mustNew(t, slaConfig()).Decide(t0, []planner.PoolState{hot})[0]; d.Desired >= ds[0].Desired {
		t.Fatalf("90%% prefix hits: %d prefill engines, want fewer than %d", d.Desired, ds[0].Desired)
	}
}

func TestSLAForecastLeadsARamp(t *testing.T) {
	// A steady ramp: the forecast sizes the pool for the rate at the end of start-up.
	cfg := slaConfig()
	cfg.Startup = 5 * time.Minute
	p, flat := mustNew(t, cfg), mustNew(t, cfg)
	var d, f planner.Decision
	for i := range 8 {
		now := t0.Add(time.Duration(i) * cfg.Interval)
		d = p.Decide(now, []planner.PoolState{state(agg, 2+float64(i), 1)})[0]
		f = flat.Decide(now, []planner.PoolState{state(agg, 9, 1)})[0]
	}
	if d.Desired <= f.Desired {
		t.Fatalf("ramp reaching 9 req/s: %d engines, want more than steady 9 req/s (%d)", d.Desired, f.Desired)
	}
}

func TestSLAMissRaisesCorrection(t *testing.T) {
	p := mustNew(t, slaConfig())
	st := state(agg, 5, 0)
	st.Ready = p.Decide(t0, []planner.PoolState{st})[0].Desired
	st.TTFTP90 = 10 * time.Second
	var d planner.Decision
	for i := 1; i <= 12; i++ {
		d = p.Decide(t0.Add(time.Duration(i)*30*time.Second), []planner.PoolState{st})[0]
		if d.Desired > st.Ready {
			break
		}
	}
	if d.Desired <= st.Ready || d.Reason != planner.ReasonSLAMissed {
		t.Fatalf("TTFT p90 5x the target at the profile's count: %+v, want a scale-up for %s", d, planner.ReasonSLAMissed)
	}
}

func TestBudget(t *testing.T) {
	cfg := slaConfig()
	cfg.GPUBudget = 10
	p := mustNew(t, cfg)
	pools := []planner.PoolState{state(pre, 200, 2), state(dec, 200, 2)}
	pools[1].GPUsPerEngine = 2
	ds := p.Decide(t0, pools)
	if got := planner.GPUs(ds, pools); got > 10 {
		t.Fatalf("%+v hold %d GPUs, over the budget of 10", ds, got)
	}
	if ds[0].Reason != planner.ReasonGPUBudget && ds[1].Reason != planner.ReasonGPUBudget {
		t.Fatalf("%+v: want a %s reason", ds, planner.ReasonGPUBudget)
	}
}

// Properties over random inputs: never over budget, always within limits, more load never
// gives fewer engines (from the same history).
func TestProperties(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range 300 {
		cfg := slaConfig()
		cfg.Mode = []string{planner.ModeSLA, planner.ModeLoad, planner.ModeStatic}[i%3]
		cfg.GPUBudget = rng.IntN(40)
		cfg.Limits = []planner.Limits{{Pool: dec, Min: rng.IntN(3), Max: 3 + rng.IntN(10)}}
		var pools []planner.PoolState
		for _, pool := range []planner.Pool{agg, pre, dec} {
			st := planner.PoolState{
				Pool: pool, ArrivalRate: rng.Float64() * 100, PromptTokens: rng.Float64() * 60000,
				OutputTokens: rng.Float64() * 2000, PrefixHitRate: rng.Float64(),
				TTFTP90: time.Duration(rng.Int64N(int64(10 * time.Second))), ITLP90: time.Duration(rng.Int64N(int64(200 * time.Millisecond))),
				QueuedPrefillTokens: rng.Float64() * 1e5, KVUsage: rng.Float64(),
				Ready: rng.IntN(8), Pending: rng.IntN(3), GPUsPerEngine: rng.IntN(3),
			}
			pools = append(pools, st)
		}
		p := mustNew(t, cfg)
		ds := p.Decide(t0, pools)
		if b := cfg.GPUBudget; b > 0 {
			minGPUs := max(1, pools[0].GPUsPerEngine) + max(1, pools[1].GPUsPerEngine) + cfg.Limits[0].Min*max(1, pools[2].GPUsPerEngine)
			if got := planner.GPUs(ds, pools); got > max(b, minGPUs) {
				t.Fatalf("case %d: %d GPUs over a budget of %d: %+v", i, got, b, ds)
			}
		}
		if d := ds[2]; d.Desired > cfg.Limits[0].Max || d.Desired < cfg.Limits[0].Min {
			t.Fatalf("case %d: decode %d outside %+v", i, d.Desired, cfg.Limits[0])
		}
		if cfg.Mode != planner.ModeSLA {
			continue
		}
		cfg.GPUBudget = 0
		lo, hi := mustNew(t, cfg), mustNew(t, cfg)
		more := append([]planner.PoolState(nil), pools...)
		for j := range more {
			more[j].ArrivalRate *= 1 + rng.Float64()
		}
		a, b := lo.Decide(t0, pools), hi.Decide(t0, more)
		for j := range a {
			if b[j].Desired < a[j].Desired {
				t.Fatalf("case %d: more load gave fewer engines: %+v then %+v", i, a[j], b[j])
			}
		}
	}
}

// In steady (noisy) load the planner changes direction at most once per ten intervals.
func TestNoFlappingInSteadyLoad(t *testing.T) {
	for _, mode := range []string{planner.ModeSLA, planner.ModeLoad} {
		t.Run(mode, func(t *testing.T) {
			cfg := slaConfig()
			cfg.Mode = mode
			p := mustNew(t, cfg)
			rng := rand.New(rand.NewPCG(3, 4))
			ready, last, changes, intervals := 1, 0, 0, 200
			for i := range intervals {
				st := state(agg, 6*(1+0.1*rng.NormFloat64()), ready)
				st.KVUsage = 0.7 + 0.05*rng.NormFloat64()
				st.QueuedPrefillTokens = float64(ready) * 8000 * (1 + 0.3*rng.NormFloat64())
				d := p.Decide(t0.Add(time.Duration(i)*cfg.Interval), []planner.PoolState{st})[0]
				if dir := sign(d.Desired - d.Current); dir != 0 {
					if last != 0 && dir != last {
						changes++
					}
					last = dir
				}
				ready = d.Desired
			}
			if changes > intervals/10 {
				t.Fatalf("%d direction changes in %d intervals", changes, intervals)
			}
		})
	}
}

func sign(x int) int {
	switch {
	case x > 0:
		return 1
	case x < 0:
		return -1
	}
	return 0
}
