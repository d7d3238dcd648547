package planner

import "math"

// Bounds of the sla mode's latency correction: the factor by which a pool's demand is scaled
// after its observed latency missed the target at the capacity the profile asked for.
const (
	correctionMax  = 2.0
	correctionUp   = 1.15 // per interval with a missed target
	correctionDown = 0.97 // per interval well within both targets
)

// decideSLA sizes the pool from the profile: prefill engines from the prompt tokens to
// compute per second (after prefix hits) against one engine's throughput at the TTFT target,
// decode engines from output tokens per second at the ITL target, aggregated engines from the
// sum of both fractions. Demand is the larger of the last interval and the forecast at the
// end of an engine's start-up. It returns the decision and the fractional engines needed.
func (p *Planner) decideSLA(st PoolState, m *poolMemory) (Decision, float64) {
	cur := st.current()
	h := float64(p.cfg.Startup+p.cfg.Interval) / float64(p.cfg.Interval)
	rate := math.Max(m.rate.last(), m.rate.forecast(h))
	prompt, output, hit := m.prompt.mean(), m.output.mean(), m.hit.mean()

	missed := p.learn(st, m)
	var prefill, decode float64
	if st.Pool.Role != RoleDecode && rate > 0 {
		prefill = rate * prompt * (1 - hit) / p.cfg.Profile.PrefillThroughput(prompt, p.cfg.TTFT)
	}
	if st.Pool.Role != RolePrefill && rate > 0 {
		decode = rate * output / p.cfg.Profile.DecodeThroughput(prompt+output/2, p.cfg.ITL)
	}
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

// learn adjusts the pool's correction: up when an observed p90 missed its target in two
// intervals in a row while every engine was ready (the profile was optimistic, not one noisy
// interval), slowly back towards 1 while both are well within target.
func (p *Planner) learn(st PoolState, m *poolMemory) (missed bool) {
	if st.Ready == 0 || st.Pending > 0 {
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
	case st.TTFTP90 < p.cfg.TTFT/2 && st.ITLP90 < p.cfg.ITL/2:
		m.correction = math.Max(1, m.correction*correctionDown)
	}
	return false
}
