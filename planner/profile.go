package planner

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"time"

	"github.com/kvgate/kvgate/configfile"
)

// Profile is one engine configuration's measured capacity: for several prompt lengths, the
// prefill throughput reached at each TTFT, and for several context lengths, the decode
// throughput reached at each ITL. `kvgate planner profile` records one by sweeping an engine;
// ProfileFromSim derives one from the simulator's timing model. Files are YAML or JSON with
// snake_case keys.
type Profile struct {
	Name          string         `json:"name,omitempty"`
	GPUsPerEngine int            `json:"gpus_per_engine,omitempty"`
	Prefill       []PrefillCurve `json:"prefill"`
	Decode        []DecodeCurve  `json:"decode"`
}

// PrefillCurve is prefill throughput against p90 TTFT at one prompt length.
type PrefillCurve struct {
	PromptTokens int            `json:"prompt_tokens"`
	Points       []PrefillPoint `json:"points"`
}

// PrefillPoint is one load level: prompt tokens computed per second at that p90 TTFT.
type PrefillPoint struct {
	TTFTMs     float64 `json:"ttft_ms"`
	TokensPerS float64 `json:"tokens_per_s"`
}

// DecodeCurve is decode throughput against ITL at one context length.
type DecodeCurve struct {
	ContextTokens int           `json:"context_tokens"`
	Points        []DecodePoint `json:"points"`
}

// DecodePoint is one load level: output tokens per second at that ITL.
type DecodePoint struct {
	ITLMs      float64 `json:"itl_ms"`
	TokensPerS float64 `json:"tokens_per_s"`
}

// Validate reports what makes the profile unusable.
func (p *Profile) Validate() error {
	var errs []error
	if len(p.Prefill) == 0 || len(p.Decode) == 0 {
		errs = append(errs, errors.New("profile: needs prefill and decode curves"))
	}
	if p.GPUsPerEngine < 0 {
		errs = append(errs, fmt.Errorf("profile: gpus_per_engine %d is negative", p.GPUsPerEngine))
	}
	for i, c := range p.Prefill {
		if c.PromptTokens <= 0 || len(c.Points) == 0 {
			errs = append(errs, fmt.Errorf("profile: prefill[%d]: needs prompt_tokens > 0 and points", i))
		}
		for j, pt := range c.Points {
			if !(pt.TTFTMs > 0) || !(pt.TokensPerS > 0) || pt.TTFTMs > 1e12 || pt.TokensPerS > 1e15 {
				errs = append(errs, fmt.Errorf("profile: prefill[%d].points[%d]: ttft_ms and tokens_per_s must be positive and finite", i, j))
			}
		}
	}
	for i, c := range p.Decode {
		if c.ContextTokens <= 0 || len(c.Points) == 0 {
			errs = append(errs, fmt.Errorf("profile: decode[%d]: needs context_tokens > 0 and points", i))
		}
		for j, pt := range c.Points {
			if !(pt.ITLMs > 0) || !(pt.TokensPerS > 0) || pt.ITLMs > 1e12 || pt.TokensPerS > 1e15 {
				errs = append(errs, fmt.Errorf("profile: decode[%d].points[%d]: itl_ms and tokens_per_s must be positive and finite", i, j))
			}
		}
	}
	return errors.Join(errs...)
}

// Sort sorts the curves by length and their points by latency, as the lookups need.
func (p *Profile) Sort() {
	slices.SortFunc(p.Prefill, func(a, b PrefillCurve) int { return a.PromptTokens - b.PromptTokens })
	slices.SortFunc(p.Decode, func(a, b DecodeCurve) int { return a.ContextTokens - b.ContextTokens })
	for _, c := range p.Prefill {
		slices.SortFunc(c.Points, func(a, b PrefillPoint) int { return cmpFloat(a.TTFTMs, b.TTFTMs) })
	}
	for _, c := range p.Decode {
		slices.SortFunc(c.Points, func(a, b DecodePoint) int { return cmpFloat(a.ITLMs, b.ITLMs) })
	}
}

func cmpFloat(a, b float64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// ParseProfile reads a profile from YAML or JSON, validates it and sorts its curves.
func ParseProfile(data []byte) (*Profile, error) {
	var p Profile
	if _, err := configfile.Decode(data, &p, nil); err != nil {
		return nil, fmt.Errorf("profile: %w", err)
	}
	if err := p.Validate(); err != nil {
		return nil, err
	}
	p.Sort()
	return &p, nil
}

// LoadProfile reads the profile file at path.
func LoadProfile(path string) (*Profile, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	p, err := ParseProfile(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return p, nil
}

// Write writes the profile as indented JSON (which the loader reads as YAML too).
func (p *Profile) Write(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(p)
}

// PrefillThroughput is the prompt tokens per second one engine computes with p90 TTFT at
// most ttft, for prompts of promptTokens: interpolated between measured load levels and
// between prompt lengths (clamped at the ends). When no level meets ttft, the throughput of
// the lightest level measured: more engines cannot make one prompt faster.
func (p *Profile) PrefillThroughput(promptTokens float64, ttft time.Duration) float64 {
	ms := float64(ttft) / float64(time.Millisecond)
	return across(len(p.Prefill), promptTokens,
		func(i int) float64 { return float64(p.Prefill[i].PromptTokens) },
		func(i int) float64 {
			pts := p.Prefill[i].Points
			return atLatency(len(pts), ms, func(j int) (float64, float64) { return pts[j].TTFTMs, pts[j].TokensPerS })
		})
}

// DecodeThroughput is the output tokens per second one engine produces with ITL at most itl
// at a context of contextTokens, interpolated as PrefillThroughput is.
func (p *Profile) DecodeThroughput(contextTokens float64, itl time.Duration) float64 {
	ms := float64(itl) / float64(time.Millisecond)
	return across(len(p.Decode), contextTokens,
		func(i int) float64 { return float64(p.Decode[i].ContextTokens) },
		func(i int) float64 {
			pts := p.Decode[i].Points
			return atLatency(len(pts), ms, func(j int) (float64, float64) { return pts[j].ITLMs, pts[j].TokensPerS })
		})
}

// across interpolates value(i) linearly in length between the curves around x.
func across(n int, x float64, length, value func(int) float64) float64 {
	if n == 0 {
		return 0
	}
	if x <= length(0) {
		return value(0)
	}
	for i := 1; i < n; i++ {
		if x <= length(i) {
			a, b := length(i-1), length(i)
			f := (x - a) / (b - a)
			return value(i-1)*(1-f) + value(i)*f
		}
	}
	return value(n - 1)
}

// atLatency is the highest throughput whose latency is at most target on a curve sorted by
// latency, interpolated between points.
func atLatency(n int, target float64, point func(int) (lat, tps float64)) float64 {
	best := 0.0
	for j := range n {
		lat, tps := point(j)
		if lat <= target {
			best = max(best, tps)
			continue
		}
		if j > 0 {
			l0, t0 := point(j - 1)
			if target > l0 && lat > l0 {
				best = max(best, t0+(tps-t0)*(target-l0)/(lat-l0))
			}
		}
		break
	}
	if best == 0 && n > 0 {
		_, best = point(0)
	}
	return best
}
