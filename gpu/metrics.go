package gpu

import (
	"context"
	"log/slog"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Metric names exported by Monitor.
const (
	MetricDevices          = "kvgate_gpu_devices"
	MetricMemoryTotal      = "kvgate_gpu_memory_total_bytes"
	MetricMemoryUsed       = "kvgate_gpu_memory_used_bytes"
	MetricUtilization      = "kvgate_gpu_utilization_ratio"
	MetricMemUtilization   = "kvgate_gpu_memory_utilization_ratio"
	MetricTemperature      = "kvgate_gpu_temperature_celsius"
	MetricMIGEnabled       = "kvgate_gpu_mig_enabled"
	MetricInventoryHealthy = "kvgate_gpu_inventory_ok"
)

// Monitor refreshes the inventory on an interval, keeps the latest copy and exports it as
// Prometheus gauges labelled by gpu index and uuid. It is safe for concurrent use.
type Monitor struct {
	src      Source
	interval time.Duration
	log      *slog.Logger

	mu     sync.RWMutex
	latest Inventory

	devices                          prometheus.Gauge
	ok                               prometheus.Gauge
	memTotal, memUsed, util, memUtil *prometheus.GaugeVec
	temp, mig                        *prometheus.GaugeVec
}

// NewMonitor registers the gauges on reg (nil: not exported) and reads the inventory once.
func NewMonitor(ctx context.Context, src Source, interval time.Duration, reg prometheus.Registerer, log *slog.Logger) (*Monitor, error) {
	if interval <= 0 {
		interval = 10 * time.Second
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	labels := []string{"gpu", "uuid"}
	vec := func(name, help string) *prometheus.GaugeVec {
		return prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: name, Help: help}, labels)
	}
	m := &Monitor{
		src: src, interval: interval, log: log,
		devices:  prometheus.NewGauge(prometheus.GaugeOpts{Name: MetricDevices, Help: "GPUs NVML reports on this node."}),
		ok:       prometheus.NewGauge(prometheus.GaugeOpts{Name: MetricInventoryHealthy, Help: "1 when the last NVML read succeeded, 0 when it reported a reason."}),
		memTotal: vec(MetricMemoryTotal, "GPU memory in bytes."),
		memUsed:  vec(MetricMemoryUsed, "GPU memory in use in bytes."),
		util:     vec(MetricUtilization, "GPU compute utilization over NVML's sample period (0-1)."),
		memUtil:  vec(MetricMemUtilization, "GPU memory bandwidth utilization over NVML's sample period (0-1)."),
		temp:     vec(MetricTemperature, "GPU core temperature."),
		mig:      vec(MetricMIGEnabled, "1 when MIG mode is enabled."),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.devices, m.ok, m.memTotal, m.memUsed, m.util, m.memUtil, m.temp, m.mig} {
			if err := reg.Register(c); err != nil {
				return nil, err
			}
		}
	}
	m.refresh(ctx)
	return m, nil
}

// Latest returns the last inventory read. The caller owns the returned value's Devices.
func (m *Monitor) Latest() Inventory {
	m.mu.RLock()
	defer m.mu.RUnlock()
	inv := m.latest
	inv.Devices = append([]Device(nil), m.latest.Devices...)
	return inv
}

// Inventory makes Monitor a Source that answers from its cache.
func (m *Monitor) Inventory(context.Context) Inventory { return m.Latest() }

var _ Source = (*Monitor)(nil)

// Run refreshes until ctx ends.
func (m *Monitor) Run(ctx context.Context) error {
	t := time.NewTicker(m.interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			m.refresh(ctx)
		}
	}
}

func (m *Monitor) refresh(ctx context.Context) {
	inv := m.src.Inventory(ctx)
	m.mu.Lock()
	prevReason := m.latest.Reason
	m.latest = inv
	m.mu.Unlock()
	if inv.Reason != "" && inv.Reason != prevReason {
		m.log.Info("gpu inventory unavailable", "reason", inv.Reason)
	}
	for _, v := range []*prometheus.GaugeVec{m.memTotal, m.memUsed, m.util, m.memUtil, m.temp, m.mig} {
		v.Reset()
	}
	m.devices.Set(float64(len(inv.Devices)))
	if inv.Reason == "" {
		m.ok.Set(1)
	} else {
		m.ok.Set(0)
	}
	for _, d := range inv.Devices {
		l := prometheus.Labels{"gpu": strconv.Itoa(d.Index), "uuid": d.UUID}
		m.memTotal.With(l).Set(float64(d.MemoryTotal))
		m.memUsed.With(l).Set(float64(d.MemoryUsed))
		m.util.With(l).Set(float64(d.UtilizationGPU) / 100)
		m.memUtil.With(l).Set(float64(d.UtilizationMemory) / 100)
		m.temp.With(l).Set(float64(d.TemperatureC))
		b := 0.0
		if d.MIG {
			b = 1
		}
		m.mig.With(l).Set(b)
	}
}
