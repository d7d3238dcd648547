package planner_test

import (
	"testing"
	"time"

	"github.com/kvgate/kvgate/planner"
)

// A load that swings (three intervals at 40 req/s, three at 20) is sized for its highs: the
// pool holds instead of stepping down after every low stretch and back up after every high
// one. The old sla mode scaled down once the lows held two intervals and the cooldown since
// its last change had passed, and flapped every period.
func TestSLAHoldsThroughSwingingLoad(t *testing.T) {
	cfg := slaConfig()
	p := mustNew(t, cfg)
	cur, last, changes := 0, 0, 0
	for i := range 40 {
		rate := 40.0
		if i%6 >= 3 {
			rate = 20
		}
		st := state(agg, rate, cur)
		d := p.Decide(t0.Add(time.Duration(i)*cfg.Interval), []planner.PoolState{st})[0]
		if dir := sign(d.Desired - d.Current); dir != 0 && i > 0 {
			if last != 0 && dir != last {
				changes++
			}
			last = dir
		}
		cur = d.Desired
	}
	if changes > 0 {
		t.Fatalf("%d direction changes in 40 intervals of a load that swings around one level", changes)
	}
}

// Once the load falls and stays down, sla steps down one engine per decision after the
// cooldown since its last scale-up (the steps do not restart it), until the peak of the
// cooldown's needs fits.
func TestSLAStepsDownOneAtATime(t *testing.T) {
	cfg := slaConfig()
	p := mustNew(t, cfg)
	at := func(i int) time.Time { return t0.Add(time.Duration(i) * cfg.Interval) }
	d := p.Decide(at(0), []planner.PoolState{state(agg, 40, 1)})[0]
	high := d.Desired
	if high < 6 {
		t.Fatalf("40 req/s wants %d engines; the test needs a higher count", high)
	}
	cur := high
	var path []int
	for i := 1; i < 30; i++ {
		d = p.Decide(at(i), []planner.PoolState{state(agg, 2, cur)})[0]
		if d.Desired < cur-1 || d.Desired > cur {
			t.Fatalf("interval %d: %d -> %d (%s); want at most one engine down", i, cur, d.Desired, d.Reason)
		}
		if d.Desired < cur && at(i).Sub(at(0)) < cfg.WithDefaults().Cooldown {
			t.Fatalf("interval %d: scaled down within the cooldown of the scale-up", i)
		}
		cur = d.Desired
		path = append(path, cur)
	}
	if cur > 2 {
		t.Fatalf("from %d engines at 40 req/s, %d engines 29 intervals after a drop to 2 req/s: %v", high, cur, path)
	}
}

// The backlog a burst left (queued prompt tokens beyond the pool's in-flight work) adds
// engines when Config.Backlog is on; the in-flight work alone adds none.
func TestSLABacklog(t *testing.T) {
	want := func(backlog bool, queued float64) int {
		cfg := slaConfig()
		cfg.Backlog = backlog
		p := mustNew(t, cfg)
		st := state(agg, 4, 1)
		st.QueuedPrefillTokens = queued
		return p.Decide(t0, []planner.PoolState{st})[0].Desired
	}
	base := want(false, 0)
	inFlight := 4 * 4096 * slaConfig().TTFT.Seconds() // rate x prompt x TTFT
	if got := want(true, inFlight); got != base {
		t.Fatalf("in-flight work alone: %d engines, want %d as without a queue", got, base)
	}
	if got := want(false, 100*inFlight); got != base {
		t.Fatalf("backlog off: %d engines with a queue, want %d", got, base)
	}
	if got := want(true, 100*inFlight); got <= base {
		t.Fatalf("backlog on: %d engines with a queue 100x the in-flight work, want more than %d", got, base)
	}
}

// With the down band (the default), a pool whose load swings holds more engines before it
// steps down than without it, and the same as without it once the load is steady: the band
// is the swing of what each interval needed, which a steady load does not have.
func TestSLADownBandHoldsThroughSwings(t *testing.T) {
	settle := func(band float64, swing bool) int {
		cfg := slaConfig()
		cfg.DownBand = band
		cfg.Limits = []planner.Limits{{Pool: agg, Min: 1, Max: 1000}}
		p := mustNew(t, cfg)
		cur := 1
		for i := range 60 {
			rate := 30.0
			if swing {
				rate = 20 + 20*float64(i%2) // 20 and 40 req/s: a mean of 30 as well
			}
			if i < 3 {
				rate = 60 // a high start, to come down from
			}
			d := p.Decide(t0.Add(time.Duration(i)*cfg.Interval), []planner.PoolState{state(agg, rate, cur)})[0]
			cur = d.Desired
		}
		return cur
	}
	off, on := settle(-1, true), settle(0, true)
	if on <= off {
		t.Fatalf("swinging load (20/40 req/s): %d engines with the down band, %d without; want more with it", on, off)
	}
	if a, b := settle(-1, false), settle(0, false); a != b {
		t.Fatalf("steady 30 req/s: %d engines with the down band, %d without; want the same", b, a)
	}
}
