package gpu_test

import (
	"context"
	"path/filepath"
	"strings"
	"testing"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock"

	"github.com/kvgate/kvgate/gpu"
)

// A library that cannot be dlopened gives an empty inventory and a reason, not a panic.
func TestNVMLMissingLibrary(t *testing.T) {
	lib := nvml.New(nvml.WithLibraryPath(filepath.Join(t.TempDir(), "libnvidia-ml.so.1")))
	inv := gpu.NewNVMLFrom(lib).Inventory(context.Background())
	if len(inv.Devices) != 0 {
		t.Fatalf("devices = %v, want none", inv.Devices)
	}
	if !strings.Contains(inv.Reason, "not found") {
		t.Fatalf("reason = %q, want it to say the library was not found", inv.Reason)
	}
	if inv.At.IsZero() {
		t.Fatal("inventory has no timestamp")
	}
}

// The system library: on a node without a driver there is a reason; with one there are
// devices. Either way no panic, and exactly one of the two holds.
func TestNVMLSystem(t *testing.T) {
	n := gpu.NewNVML()
	for range 2 { // a second read after Shutdown must work the same
		inv := n.Inventory(context.Background())
		if (inv.Reason == "") == (len(inv.Devices) == 0) {
			t.Fatalf("inconsistent inventory: %d devices, reason %q", len(inv.Devices), inv.Reason)
		}
	}
}

func mockDevice(uuid, name string, mig int, migRet, tempRet nvml.Return) *mock.Device {
	return &mock.Device{
		GetUUIDFunc: func() (string, nvml.Return) { return uuid, nvml.SUCCESS },
		GetNameFunc: func() (string, nvml.Return) { return name, nvml.SUCCESS },
		GetMemoryInfoFunc: func() (nvml.Memory, nvml.Return) {
			return nvml.Memory{Total: 80 << 30, Used: 1 << 30, Free: 79 << 30}, nvml.SUCCESS
		},
		GetUtilizationRatesFunc: func() (nvml.Utilization, nvml.Return) {
			return nvml.Utilization{Gpu: 42, Memory: 7}, nvml.SUCCESS
		},
		GetTemperatureFunc: func(nvml.TemperatureSensors) (uint32, nvml.Return) { return 55, tempRet },
		GetMigModeFunc:     func() (int, int, nvml.Return) { return mig, mig, migRet },
	}
}

func TestNVMLMapping(t *testing.T) {
	devs := []nvml.Device{
		mockDevice("GPU-a", "NVIDIA H100 80GB HBM3", 0, nvml.ERROR_NOT_SUPPORTED, nvml.SUCCESS),
		mockDevice("GPU-b", "NVIDIA H100 80GB HBM3", nvml.DEVICE_MIG_ENABLE, nvml.SUCCESS, nvml.ERROR_UNKNOWN),
	}
	shutdowns := 0
	lib := &mock.Interface{
		InitFunc:                       func() nvml.Return { return nvml.SUCCESS },
		ShutdownFunc:                   func() nvml.Return { shutdowns++; return nvml.SUCCESS },
		SystemGetDriverVersionFunc:     func() (string, nvml.Return) { return "550.54.15", nvml.SUCCESS },
		SystemGetCudaDriverVersionFunc: func() (int, nvml.Return) { return 12040, nvml.SUCCESS },
		DeviceGetCountFunc:             func() (int, nvml.Return) { return len(devs), nvml.SUCCESS },
		DeviceGetHandleByIndexFunc: func(i int) (nvml.Device, nvml.Return) {
			return devs[i], nvml.SUCCESS
		},
	}
	inv := gpu.NewNVMLFrom(lib).Inventory(context.Background())
	if inv.Reason != "" || inv.Driver != "550.54.15" || inv.CUDA != "12.4" {
		t.Fatalf("inventory header = %+v", inv)
	}
	if shutdowns != 1 {
		t.Fatalf("Shutdown called %d times, want 1", shutdowns)
	}
	if len(inv.Devices) != 2 {
		t.Fatalf("devices = %d, want 2", len(inv.Devices))
	}
	a, b := inv.Devices[0], inv.Devices[1]
	if a.Index != 0 || a.UUID != "GPU-a" || a.MemoryTotal != 80<<30 || a.MemoryUsed != 1<<30 ||
		a.UtilizationGPU != 42 || a.UtilizationMemory != 7 || a.TemperatureC != 55 || a.MIG || len(a.Errors) != 0 {
		t.Fatalf("device 0 = %+v", a)
	}
	if b.Index != 1 || !b.MIG || len(b.Errors) != 1 || !strings.HasPrefix(b.Errors[0], "temperature") {
		t.Fatalf("device 1 = %+v", b)
	}
}

func TestNVMLInitFails(t *testing.T) {
	tests := []struct {
		name string
		ret  nvml.Return
		want string
	}{
		{"driver not loaded", nvml.ERROR_DRIVER_NOT_LOADED, "driver not loaded"},
		{"no permission", nvml.ERROR_NO_PERMISSION, "permission"},
		{"other", nvml.ERROR_UNKNOWN, "nvml error"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			lib := &mock.Interface{InitFunc: func() nvml.Return { return tc.ret }}
			inv := gpu.NewNVMLFrom(lib).Inventory(context.Background())
			if len(inv.Devices) != 0 || !strings.Contains(inv.Reason, tc.want) {
				t.Fatalf("inventory = %+v, want reason containing %q", inv, tc.want)
			}
		})
	}
}

// A library whose binding panics is contained.
func TestNVMLPanicContained(t *testing.T) {
	lib := &mock.Interface{
		InitFunc:     func() nvml.Return { return nvml.SUCCESS },
		ShutdownFunc: func() nvml.Return { return nvml.SUCCESS },
		// SystemGetDriverVersionFunc left nil: the mock panics when it is called.
	}
	inv := gpu.NewNVMLFrom(lib).Inventory(context.Background())
	if len(inv.Devices) != 0 || inv.Reason == "" {
		t.Fatalf("inventory = %+v, want a reason", inv)
	}
}
