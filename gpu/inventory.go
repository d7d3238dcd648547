// Package gpu reads the node's GPU inventory and telemetry through NVML.
// It owns no step of a request or of a KV event: workerd assigns GPUs with it.
package gpu

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"
)

// Device is one GPU as NVML reports it at one instant.
type Device struct {
	Index       int    `json:"index"`
	UUID        string `json:"uuid"`
	Name        string `json:"name"`
	MemoryTotal uint64 `json:"memory_total_bytes"`
	MemoryUsed  uint64 `json:"memory_used_bytes"`
	// UtilizationGPU and UtilizationMemory are percentages (0-100) over NVML's last sample
	// period.
	UtilizationGPU    uint32 `json:"utilization_gpu_percent"`
	UtilizationMemory uint32 `json:"utilization_memory_percent"`
	TemperatureC      uint32 `json:"temperature_celsius"`
	// MIG is true when multi-instance GPU mode is enabled (current mode).
	MIG bool `json:"mig_enabled"`
	// Errors lists the queries that failed for this device (an old driver may lack some);
	// the fields they would have filled stay zero.
	Errors []string `json:"errors,omitempty"`
}

// Inventory is the node's GPU set. An empty Devices with a non-empty Reason means the node
// has no usable GPU and says why (no driver, NVML library missing, ...).
type Inventory struct {
	Devices []Device `json:"devices"`
	// Driver is the NVIDIA driver version, e.g. "550.54.15".
	Driver string `json:"driver_version,omitempty"`
	// CUDA is the highest CUDA version the driver supports, e.g. "12.4".
	CUDA string `json:"cuda_version,omitempty"`
	// Reason says why Devices is empty; "" when NVML answered.
	Reason string    `json:"reason,omitempty"`
	At     time.Time `json:"at"`
}

// Source reads the inventory. Implementations are safe for concurrent use; an unavailable
// NVML is reported through Inventory.Reason, never as a panic. The returned Inventory is
// owned by the caller.
type Source interface {
	Inventory(ctx context.Context) Inventory
}

// Device returns the device with the given index.
func (inv Inventory) Device(index int) (Device, bool) {
	for _, d := range inv.Devices {
		if d.Index == index {
			return d, true
		}
	}
	return Device{}, false
}

// Indexes returns the device indexes in ascending order.
func (inv Inventory) Indexes() []int {
	out := make([]int, 0, len(inv.Devices))
	for _, d := range inv.Devices {
		out = append(out, d.Index)
	}
	slices.Sort(out)
	return out
}

// cudaVersion formats NVML's CUDA driver version integer (1000*major + 10*minor).
func cudaVersion(v int) string {
	if v <= 0 {
		return ""
	}
	return fmt.Sprintf("%d.%d", v/1000, (v%1000)/10)
}

// Fake is a Source that returns a settable inventory; placement tests use it. It is safe
// for concurrent use.
type Fake struct {
	mu  sync.Mutex
	inv Inventory
}

var _ Source = (*Fake)(nil)

// NewFake returns a Fake answering inv.
func NewFake(inv Inventory) *Fake { return &Fake{inv: inv} }

// FakeInventory returns an inventory of n identical devices with the given name and memory
// in bytes, indexes 0..n-1.
func FakeInventory(n int, name string, memory uint64) Inventory {
	inv := Inventory{Driver: "fake", CUDA: "12.4", Devices: []Device{}}
	for i := range n {
		inv.Devices = append(inv.Devices, Device{
			Index: i, UUID: fmt.Sprintf("GPU-fake-%04d", i), Name: name, MemoryTotal: memory,
		})
	}
	return inv
}

// Set replaces the inventory later reads return.
func (f *Fake) Set(inv Inventory) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.inv = inv
	f.inv.Devices = slices.Clone(inv.Devices)
}

// Inventory returns a copy of the inventory stamped with the current time.
func (f *Fake) Inventory(context.Context) Inventory {
	f.mu.Lock()
	defer f.mu.Unlock()
	inv := f.inv
	inv.Devices = slices.Clone(f.inv.Devices)
	inv.At = time.Now()
	return inv
}
