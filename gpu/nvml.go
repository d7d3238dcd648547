package gpu

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
)

// NVML is the Source backed by the NVIDIA Management Library. The library is opened with
// dlopen on every read, so a node without a driver gets an inventory whose Reason names the
// failure, and a driver installed later is picked up.
type NVML struct {
	mu  sync.Mutex // NVML calls are serialised; Init/Shutdown are refcounted per library.
	lib nvml.Interface
}

var _ Source = (*NVML)(nil)

// NewNVML returns a Source over the system's libnvidia-ml.so.1.
func NewNVML() *NVML { return &NVML{lib: nvml.New()} }

// NewNVMLFrom returns a Source over the given NVML implementation: a library opened with
// nvml.New(nvml.WithLibraryPath(...)) or a mock.
func NewNVMLFrom(lib nvml.Interface) *NVML { return &NVML{lib: lib} }

// Inventory reads every device. It never panics: a missing library, a driver that refuses
// Init, or a failing device query shows up in Reason or Device.Errors.
func (n *NVML) Inventory(ctx context.Context) (inv Inventory) {
	n.mu.Lock()
	defer n.mu.Unlock()
	inv.At = time.Now()
	inv.Devices = []Device{}
	defer func() {
		// go-nvml's generated bindings call into C; a broken library must not take the
		// daemon down with it.
		if r := recover(); r != nil {
			inv.Devices = []Device{}
			inv.Reason = fmt.Sprintf("nvml: %v", r)
		}
	}()
	if ret := n.lib.Init(); ret != nvml.SUCCESS {
		inv.Reason = "nvml init: " + n.errString(ret)
		return inv
	}
	defer n.lib.Shutdown()

	if v, ret := n.lib.SystemGetDriverVersion(); ret == nvml.SUCCESS {
		inv.Driver = v
	}
	if v, ret := n.lib.SystemGetCudaDriverVersion(); ret == nvml.SUCCESS {
		inv.CUDA = cudaVersion(v)
	}
	count, ret := n.lib.DeviceGetCount()
	if ret != nvml.SUCCESS {
		inv.Reason = "nvml device count: " + n.errString(ret)
		return inv
	}
	for i := range count {
		if ctx.Err() != nil {
			inv.Reason = "nvml: " + ctx.Err().Error()
			return inv
		}
		inv.Devices = append(inv.Devices, n.device(i))
	}
	if count == 0 {
		inv.Reason = "nvml: driver reports no devices"
	}
	return inv
}

func (n *NVML) device(i int) Device {
	d := Device{Index: i}
	h, ret := n.lib.DeviceGetHandleByIndex(i)
	if ret != nvml.SUCCESS {
		d.Errors = append(d.Errors, "handle: "+n.errString(ret))
		return d
	}
	fail := func(what string, ret nvml.Return) {
		if ret != nvml.SUCCESS {
			d.Errors = append(d.Errors, what+": "+n.errString(ret))
		}
	}
	var r nvml.Return
	d.UUID, r = h.GetUUID()
	fail("uuid", r)
	d.Name, r = h.GetName()
	fail("name", r)
	mem, r := h.GetMemoryInfo()
	fail("memory", r)
	d.MemoryTotal, d.MemoryUsed = mem.Total, mem.Used
	util, r := h.GetUtilizationRates()
	fail("utilization", r)
	d.UtilizationGPU, d.UtilizationMemory = util.Gpu, util.Memory
	d.TemperatureC, r = h.GetTemperature(nvml.TEMPERATURE_GPU)
	fail("temperature", r)
	cur, _, r := h.GetMigMode()
	if r != nvml.ERROR_NOT_SUPPORTED { // GPUs without MIG answer NOT_SUPPORTED: that is "off"
		fail("mig", r)
	}
	d.MIG = r == nvml.SUCCESS && cur == nvml.DEVICE_MIG_ENABLE
	return d
}

// errString names a Return without calling into a library that may not be loaded.
func (n *NVML) errString(ret nvml.Return) string {
	switch ret {
	case nvml.ERROR_LIBRARY_NOT_FOUND:
		return "libnvidia-ml.so.1 not found (no NVIDIA driver on this node)"
	case nvml.ERROR_DRIVER_NOT_LOADED:
		return "NVIDIA driver not loaded"
	case nvml.ERROR_NO_PERMISSION:
		return "no permission to talk to the NVIDIA driver"
	case nvml.ERROR_NOT_SUPPORTED:
		return "not supported"
	}
	return fmt.Sprintf("nvml error %d", int32(ret))
}
