package metricstest_test

import (
	"errors"
	"math"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/kvgate/kvgate/metricstest"
)

func TestValue(t *testing.T) {
	reg := prometheus.NewRegistry()
	c := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "c_total", Help: "c"}, []string{"code", "path"})
	g := prometheus.NewGauge(prometheus.GaugeOpts{Name: "g", Help: "g"})
	h := prometheus.NewHistogram(prometheus.HistogramOpts{Name: "h", Help: "h"})
	reg.MustRegister(c, g, h)
	c.WithLabelValues("200", "/a").Add(2)
	c.WithLabelValues("200", "/b").Add(3)
	c.WithLabelValues("500", "/a").Add(5)
	g.Set(-1.5)
	h.Observe(1)
	h.Observe(2)

	for _, tt := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"c_total", nil, 10},
		{"c_total", []string{"code", "200"}, 5},
		{"c_total", []string{"code", "200", "path", "/a"}, 2},
		{"c_total", []string{"code", "404"}, 0},
		{"g", nil, -1.5},
		{"h", nil, 2},
		{"absent", nil, 0},
	} {
		if got := metricstest.Value(reg, tt.name, tt.labels...); got != tt.want {
			t.Errorf("Value(%s, %v) = %v, want %v", tt.name, tt.labels, got, tt.want)
		}
	}
	if n := metricstest.Series(reg, "c_total"); n != 3 {
		t.Errorf("Series(c_total) = %d, want 3", n)
	}
	if n := metricstest.Series(reg, "absent"); n != 0 {
		t.Errorf("Series(absent) = %d, want 0", n)
	}
}

type failing struct{}

func (failing) Gather() ([]*dto.MetricFamily, error) { return nil, errors.New("broken") }

// TestGatherError: a registry that fails reads as NaN and -1, never as a value a test could
// be waiting for.
func TestGatherError(t *testing.T) {
	if v := metricstest.Value(failing{}, "x"); !math.IsNaN(v) {
		t.Errorf("Value = %v, want NaN", v)
	}
	if n := metricstest.Series(failing{}, "x"); n != -1 {
		t.Errorf("Series = %d, want -1", n)
	}
}
