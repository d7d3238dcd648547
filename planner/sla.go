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
	// what this interval saw: the oracle is told it is the horizon's demand
	observed := Forecast{Rate: st.ArrivalRate, PromptTokens: st.PromptTokens, OutputTokens: st.OutputTokens, PrefixHitRate: st.PrefixHitRate}
	fc := Forecast{Rate: rate, PromptTokens: m.prompt.mean(), OutputTokens: m.output.mean(), PrefixHitRate: m.hit.mean()}
	if p.cfg.Foresight {
		fc = observed // no forecast, no band
	}
	prefill, decode := p.cfg.Engines(st.Pool.Role, fc)
	need := (prefill + decode + p.backlog(st, rate, m)) * m.correction
	upper := need
	if b := p.cfg.DownBand; b > 0 && !p.cfg.Foresight {
		// what each interval's own rate and lengths needed: its spread over the window is
		// how far the demand swings, in engines
		own, ownDecode := p.cfg.Engines(st.Pool.Role, observed)
		m.raw.add(own + ownDecode)
		upper += b * m.raw.stddev() * math.Sqrt(h) * m.correction
	}
	reason := ReasonPrefillForecast
	if decode > prefill {
		reason = ReasonDecodeForecast
	}
	up := int(math.Ceil(need - 1e-9))
	m.needs.add(upper)
	d, need := p.slaChange(cur, up, m.needs.peak(), need, missed, reason)
	d.Forecast, d.Correction, d.Upper = fc, m.correction, upper
	return d, need
}

// slaChange turns the engines needed into a change of the pool's count: up at once to what
// this decision needs; down by one engine, only when the most it needed over the cooldown
// (peak, of the needs' upper bands when Config.DownBand is on) fits the smaller count with
// the hysteresis to spare. A load that swings from one interval to the next is sized for
// its highs and does not move the pool back and forth.
func (p *Planner) slaChange(cur, up int, peak, need float64, missed bool, reason string) (Decision, float64) {
	switch down := int(math.Ceil(peak*(1+p.cfg.Hysteresis) - 1e-9)); {
	case up > cur && missed:
		return Decision{Desired: up, Reason: ReasonSLAMissed}, need
	case up > cur:
		return Decision{Desired: up, Reason: reason}, need
	case down < cur:
		return Decision{Desired: cur - 1, Reason: ReasonLowLoad}, need
	case up < cur:
		return Decision{Desired: cur, Reason: ReasonHysteresis}, need
	}
	return Decision{Desired: cur, Reason: ReasonSteady}, need
}

// Engines is what sla mode sizes a pool of role for demand f, before its latency
// correction: the prefill fraction (prompt tokens to compute per second, after prefix hits,
// against one engine's prefill throughput at the TTFT target) and the decode fraction
// (output tokens per second against one engine's decode throughput at the ITL target).
// It needs c.Profile.
func (c Config) Engines(role Role, f Forecast) (prefill, decode float64) {
	if f.Rate <= 0 || c.Profile == nil {
		return 0, 0
	}
	hit := clamp01(f.PrefixHitRate)
	if role != RoleDecode {
		prefill = f.Rate * f.PromptTokens * (1 - hit) / c.Profile.PrefillThroughput(f.PromptTokens, c.TTFT)
	}
	if role != RolePrefill {
		decode = f.Rate * f.OutputTokens / c.Profile.DecodeThroughput(f.PromptTokens+f.OutputTokens/2, c.ITL)
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

// backlog is the prefill engines that clear, within the forecast horizon (an engine's
// start-up plus one interval), the queued prompt tokens beyond what the pool holds in flight
// at its rate when it meets the TTFT target (Little's law: rate x prompt x TTFT): the work a
// burst left waiting, which the rate alone does not show. 0 unless Config.Backlog.
func (p *Planner) backlog(st PoolState, rate float64, m *poolMemory) float64 {
	if !p.cfg.Backlog || st.Pool.Role == RoleDecode || st.QueuedPrefillTokens <= 0 {
		return 0
	}
	prompt, hit := m.prompt.mean(), m.hit.mean()
	tput := p.cfg.Profile.PrefillThroughput(prompt, p.cfg.TTFT)
	inFlight := rate * prompt * p.cfg.TTFT.Seconds()
	excess := (st.QueuedPrefillTokens - inFlight) * (1 - hit)
	drain := (p.cfg.Startup + p.cfg.Interval).Seconds()
	if excess <= 0 || tput <= 0 || drain <= 0 {
		return 0
	}
	return excess / (tput * drain)
}
