package workload

import (
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
)

// RateStep is one step of a rate profile: from At (replayed time) on, requests arrive Scale
// times as fast as in the trace.
type RateStep struct {
	At    time.Duration
	Scale float64
}

// RateProfile is a piecewise-constant change of a trace's arrival rate, steps in time order.
type RateProfile []RateStep

// ParseRateProfile reads "time:scale,time:scale,..." with times in seconds of replayed time,
// increasing, e.g. "0:1,600:3,1800:1". Before the first step the scale is 1.
func ParseRateProfile(s string) (RateProfile, error) {
	var p RateProfile
	for i, f := range strings.Split(s, ",") {
		ts, xs, ok := strings.Cut(strings.TrimSpace(f), ":")
		if !ok {
			return nil, fmt.Errorf("rate profile %q: step %d: want time:scale", s, i+1)
		}
		t, err := strconv.ParseFloat(ts, 64)
		if err != nil || t < 0 || t > 1e9 || math.IsNaN(t) {
			return nil, fmt.Errorf("rate profile %q: step %d: time %q is not a number of seconds >= 0", s, i+1, ts)
		}
		x, err := strconv.ParseFloat(xs, 64)
		if err != nil || !(x > 0) || x > 1e6 {
			return nil, fmt.Errorf("rate profile %q: step %d: scale %q must be a number > 0", s, i+1, xs)
		}
		at := time.Duration(t * float64(time.Second))
		if len(p) > 0 && at <= p[len(p)-1].At {
			return nil, fmt.Errorf("rate profile %q: step %d: times must increase", s, i+1)
		}
		p = append(p, RateStep{At: at, Scale: x})
	}
	return p, nil
}

// scaleAt is the scale in force at replayed time t.
func (p RateProfile) scaleAt(t time.Duration) float64 {
	x := 1.0
	for _, s := range p {
		if s.At > t {
			break
		}
		x = s.Scale
	}
	return x
}

// Mean is the time-weighted mean scale over the first d of replayed time.
func (p RateProfile) Mean(d time.Duration) float64 {
	if d <= 0 {
		return p.scaleAt(0)
	}
	var sum float64
	prev, x := time.Duration(0), 1.0
	for _, s := range p {
		if s.At >= d {
			break
		}
		sum += float64(s.At-prev) * x
		prev, x = s.At, s.Scale
	}
	sum += float64(d-prev) * x
	return sum / float64(d)
}

// Peak is the largest scale the profile reaches before d.
func (p RateProfile) Peak(d time.Duration) float64 {
	x := p.scaleAt(0)
	for _, s := range p {
		if s.At < d {
			x = math.Max(x, s.Scale)
		}
	}
	return x
}

// ApplyRateProfile moves the arrivals so that from each step's time on they come Scale times
// as fast as in the trace: replayed time t consumes trace time at the rate scale(t).
func (t *Trace) ApplyRateProfile(p RateProfile) {
	// segments of replayed time [at, next) with their start in trace time
	type seg struct {
		at, orig time.Duration
		scale    float64
	}
	segs := []seg{{at: 0, orig: 0, scale: p.scaleAt(0)}}
	for _, s := range p {
		if s.At == 0 {
			continue
		}
		last := segs[len(segs)-1]
		segs = append(segs, seg{at: s.At, orig: last.orig + time.Duration(float64(s.At-last.at)*last.scale), scale: s.Scale})
	}
	j := 0
	for i := range t.Requests {
		a := t.Requests[i].Arrival
		for j > 0 && a < segs[j].orig {
			j--
		}
		for j+1 < len(segs) && a >= segs[j+1].orig {
			j++
		}
		s := segs[j]
		t.Requests[i].Arrival = s.at + time.Duration(float64(a-s.orig)/s.scale)
	}
}
