package router

import (
	"math"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Upper bounds (seconds) of the pool latency histograms' buckets; a last bucket holds what is
// above them.
var (
	ttftBounds = [...]float64{0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 2.5, 3, 4, 5, 7.5, 10, 15, 20, 30, 60}
	itlBounds  = [...]float64{0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1}
)

// latencyHist is a cumulative histogram safe for concurrent use.
type latencyHist struct {
	bounds []float64
	counts []atomic.Uint64 // per bucket (not cumulative), len(bounds)+1
	sumNs  atomic.Uint64
}

func newLatencyHist(bounds []float64) *latencyHist {
	return &latencyHist{bounds: bounds, counts: make([]atomic.Uint64, len(bounds)+1)}
}

func (h *latencyHist) observe(d time.Duration) {
	d = max(d, 0)
	s := d.Seconds()
	i := 0
	for i < len(h.bounds) && s > h.bounds[i] {
		i++
	}
	h.counts[i].Add(1)
	h.sumNs.Add(uint64(d))
}

// snapshot is the histogram now.
func (h *latencyHist) snapshot() *Histogram {
	out := &Histogram{Bounds: h.bounds, Counts: make([]uint64, len(h.counts))}
	for i := range h.counts {
		out.Counts[i] = h.counts[i].Load()
		out.Count += out.Counts[i]
	}
	out.Sum = float64(h.sumNs.Load()) / float64(time.Second)
	return out
}

// Histogram is a cumulative latency histogram in seconds, as GET /v1/pools reports it: Counts[i]
// observations were at most Bounds[i] and above the bound before; the last count is above
// every bound. A reader takes the difference of two reads for an interval's distribution.
type Histogram struct {
	Bounds []float64 `json:"bounds"`
	Counts []uint64  `json:"counts"`
	Count  uint64    `json:"count"`
	Sum    float64   `json:"sum"`
}

// Sub returns h minus an earlier read of the same histogram: the observations between the
// two. ok is false when the two do not match (other bounds, or a count went down: the router
// restarted).
func (h *Histogram) Sub(prev *Histogram) (d *Histogram, ok bool) {
	if h == nil {
		return nil, false
	}
	if prev == nil {
		return h, true
	}
	if len(h.Bounds) != len(prev.Bounds) || len(h.Counts) != len(prev.Counts) {
		return nil, false
	}
	d = &Histogram{Bounds: h.Bounds, Counts: make([]uint64, len(h.Counts))}
	for i := range h.Counts {
		if h.Counts[i] < prev.Counts[i] || (i < len(h.Bounds) && h.Bounds[i] != prev.Bounds[i]) {
			return nil, false
		}
		d.Counts[i] = h.Counts[i] - prev.Counts[i]
		d.Count += d.Counts[i]
	}
	d.Sum = max(0, h.Sum-prev.Sum)
	return d, true
}

// Add adds o's counts to h (the same pool seen by two routers). ok is false when the bounds
// differ.
func (h *Histogram) Add(o *Histogram) bool {
	if o == nil {
		return true
	}
	if len(h.Bounds) != len(o.Bounds) || len(h.Counts) != len(o.Counts) {
		return false
	}
	for i := range h.Bounds {
		if h.Bounds[i] != o.Bounds[i] {
			return false
		}
	}
	h.Counts = append([]uint64(nil), h.Counts...)
	for i := range o.Counts {
		h.Counts[i] += o.Counts[i]
	}
	h.Count += o.Count
	h.Sum += o.Sum
	return true
}

// Quantile is the q-quantile (0..1) of the histogram, interpolated linearly within its
// bucket (from 0 for the first); a quantile in the last bucket is the last bound. 0 when
// empty or malformed.
func (h *Histogram) Quantile(q float64) float64 {
	if h == nil || h.Count == 0 || len(h.Counts) != len(h.Bounds)+1 || len(h.Bounds) == 0 || math.IsNaN(q) {
		return 0
	}
	rank := math.Min(1, math.Max(0, q)) * float64(h.Count)
	var seen float64
	for i, c := range h.Counts {
		if c == 0 {
			continue
		}
		if seen+float64(c) >= rank {
			if i == len(h.Bounds) {
				return h.Bounds[len(h.Bounds)-1]
			}
			lo := 0.0
			if i > 0 {
				lo = h.Bounds[i-1]
			}
			return lo + (h.Bounds[i]-lo)*math.Max(0, rank-seen)/float64(c)
		}
		seen += float64(c)
	}
	return h.Bounds[len(h.Bounds)-1]
}

// constHistogram turns a snapshot into a Prometheus histogram with cumulative buckets.
func constHistogram(d *prometheus.Desc, h *Histogram, labels ...string) prometheus.Metric {
	buckets := make(map[float64]uint64, len(h.Bounds))
	var cum uint64
	for i, b := range h.Bounds {
		cum += h.Counts[i]
		buckets[b] = cum
	}
	return prometheus.MustNewConstHistogram(d, h.Count, h.Sum, buckets, labels...)
}
