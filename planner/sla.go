package planner

import (
	"math"
	"time"
)

// Bounds of the sla mode's latency correction: the factor by which a pool's demand is scaled
// after its observed latency missed the target at the capacity the profile asked for.
const (
	correctionMax  = 2.0
	correctionUp   = 1.15 // per interval with a missed target
	correctionDown = 0.97 // per interval within both targets
)

// decideSLA sizes the pool from the profile: prefill engines from the prompt tokens to
// compute per second (after prefix hits) against one engine's throughput at the TTFT target,
// decode engines from output tokens per second at the ITL target, aggregated engines from the
// sum of both fractions. Demand is the larger of the level of the last two intervals and the
// forecast at the end of an engine's start-up. It returns the decision and the fractional engines needed.
func (p *Planner) decideSLA(now time.Time, st PoolState, m *poolMemory) (Decision, float64) {
	cur := st.current()
	h := float64(p.cfg.Startup+p.cfg.Interval) / float64(p.cfg.Interval)
	// A new level counts once it held two intervals (a step is sized in full by the second
	// decision after it); one noisy interval moves only the three-interval mean.
	rate := math.Max(m.rate.held(2), m.rate.forecast(h))
	if p.cfg.Headroom > 0 {
		// an upper bound of the forecast over the start-up horizon: the window's swing,
		// growing as a random walk's with the intervals a new engine needs to serve
		rate += p.cfg.Headroom * m.rate.stddev() * math.Sqrt(h)
	}
	missed := p.learn(now, st, m)
	prefill, decode := p.engines(st.Pool.Role, rate, m)
	need := (prefill + decode) * m.correction
	reason := ReasonPrefillForecast
	if decode > prefill {
		reason = ReasonDecodeForecast
	}
	up := int(math.Ceil(need - 1e-9))
	switch down := int(math.Ceil(need*(1+p.cfg.Hysteresis) - 1e-9)); {
	case up > cur && missed:
		return Decision{Desired: up, Reason: ReasonSLAMissed}, need
	case up > cur:
		return Decision{Desired: up, Reason: reason}, need
	case down < cur:
		return Decision{Desired: down, Reason: ReasonLowLoad}, need
	case up < cur:
		return Decision{Desired: cur, Reason: ReasonHysteresis}, need
	}
	return Decision{Desired: cur, Reason: ReasonSteady}, need
}

// engines is the profile's engines for rate requests/s with the window's mean lengths at the
// targets: the prefill and the decode fractions.
func (p *Planner) engines(role Role, rate float64, m *poolMemory) (prefill, decode float64) {
	if rate <= 0 {
		return 0, 0
	}
	prompt, output, hit := m.prompt.mean(), m.output.mean(), m.hit.mean()
	if role != RoleDecode {
		prefill = rate * prompt * (1 - hit) / p.cfg.Profile.PrefillThroughput(prompt, p.cfg.TTFT)
	}
	if role != RolePrefill {
		decode = rate * output / p.cfg.Profile.DecodeThroughput(prompt+output/2, p.cfg.ITL)
	}
	return prefill, decode
}

// learn adjusts the pool's correction: up when an observed p90 missed its target in two
// intervals in a row while the pool was settled (every engine ready, no change for start-up
// plus two intervals: a miss right after a change is the backlog of the change, not an
// optimistic profile), slowly back towards 1 while both are within target.
func (p *Planner) learn(now time.Time, st PoolState, m *poolMemory) (missed bool) {
	settled := !m.changed || now.Sub(m.lastChange) >= p.cfg.Startup+2*p.cfg.Interval
	if st.Ready == 0 || st.Pending > 0 || !settled {
		m.misses = 0
		return false
	}
	ttftMiss := st.Pool.Role != RoleDecode && st.TTFTP90 > p.cfg.TTFT
	itlMiss := st.Pool.Role != RolePrefill && st.ITLP90 > p.cfg.ITL
	if !ttftMiss && !itlMiss {
		m.misses = 0
	}
	switch {
	case ttftMiss || itlMiss:
		if m.misses++; m.misses < 2 {
			return false
		}
		m.correction = math.Min(correctionMax, m.correction*correctionUp)
		return true
	case st.TTFTP90 <= p.cfg.TTFT && st.ITLP90 <= p.cfg.ITL:
		m.correction = math.Max(1, m.correction*correctionDown)
	}
	return false
}
