package bench

import (
	"math"
	"slices"
	"time"
)

// Dist summarises a distribution of durations, in milliseconds.
type Dist struct {
	N    int     `json:"n"`
	Mean float64 `json:"mean_ms"`
	P50  float64 `json:"p50_ms"`
	P90  float64 `json:"p90_ms"`
	P99  float64 `json:"p99_ms"`
	Max  float64 `json:"max_ms"`
}

// Summarize sorts xs in place and returns its distribution.
func Summarize(xs []time.Duration) Dist {
	if len(xs) == 0 {
		return Dist{}
	}
	slices.Sort(xs)
	var sum float64
	for _, x := range xs {
		sum += ms(x)
	}
	return Dist{
		N:    len(xs),
		Mean: round3(sum / float64(len(xs))),
		P50:  round3(ms(Percentile(xs, 0.50))),
		P90:  round3(ms(Percentile(xs, 0.90))),
		P99:  round3(ms(Percentile(xs, 0.99))),
		Max:  round3(ms(xs[len(xs)-1])),
	}
}

// Percentile returns the q-quantile (0..1) of sorted xs by the nearest-rank method.
func Percentile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(math.Ceil(q*float64(len(sorted)))) - 1
	return sorted[max(0, min(i, len(sorted)-1))]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func round3(x float64) float64 { return math.Round(x*1000) / 1000 }
