package gpu_test

import (
	"context"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kvgate/kvgate/gpu"
)

func gauge(t *testing.T, reg *prometheus.Registry, name, gpuLabel string) (float64, bool) {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			match := gpuLabel == ""
			for _, l := range m.GetLabel() {
				if l.GetName() == "gpu" && l.GetValue() == gpuLabel {
					match = true
				}
			}
			if match {
				return m.GetGauge().GetValue(), true
			}
		}
	}
	return 0, false
}

func TestMonitorExportsAndRefreshes(t *testing.T) {
	inv := gpu.FakeInventory(2, "H100", 80<<30)
	inv.Devices[1].UtilizationGPU = 50
	inv.Devices[1].TemperatureC = 61
	fake := gpu.NewFake(inv)
	reg := prometheus.NewRegistry()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	m, err := gpu.NewMonitor(ctx, fake, 10*time.Millisecond, reg, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name, gpu string
		want      float64
	}{
		{gpu.MetricDevices, "", 2},
		{gpu.MetricInventoryHealthy, "", 1},
		{gpu.MetricMemoryTotal, "0", 80 << 30},
		{gpu.MetricUtilization, "1", 0.5},
		{gpu.MetricTemperature, "1", 61},
	} {
		if v, ok := gauge(t, reg, c.name, c.gpu); !ok || v != c.want {
			t.Errorf("%s{gpu=%q} = %v (present %v), want %v", c.name, c.gpu, v, ok, c.want)
		}
	}
	if got := len(m.Latest().Devices); got != 2 {
		t.Fatalf("Latest has %d devices", got)
	}

	// The node loses its driver: the refresh loop reports it and drops the per-GPU series.
	done := make(chan struct{})
	go func() { defer close(done); _ = m.Run(ctx) }()
	fake.Set(gpu.Inventory{Reason: "nvml init: libnvidia-ml.so.1 not found"})
	deadline := time.Now().Add(5 * time.Second)
	for m.Latest().Reason == "" {
		if time.Now().After(deadline) {
			t.Fatal("monitor never refreshed")
		}
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	<-done
	if v, _ := gauge(t, reg, gpu.MetricInventoryHealthy, ""); v != 0 {
		t.Fatalf("inventory_ok = %v after driver loss", v)
	}
	if _, ok := gauge(t, reg, gpu.MetricMemoryTotal, "0"); ok {
		t.Fatal("per-GPU series survived the driver loss")
	}
}

func TestMonitorDuplicateRegistration(t *testing.T) {
	reg := prometheus.NewRegistry()
	ctx := context.Background()
	if _, err := gpu.NewMonitor(ctx, gpu.NewFake(gpu.FakeInventory(1, "x", 1)), time.Second, reg, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := gpu.NewMonitor(ctx, gpu.NewFake(gpu.FakeInventory(1, "x", 1)), time.Second, reg, nil); err == nil {
		t.Fatal("second registration on the same registry succeeded")
	}
}
