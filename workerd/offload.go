package workerd

import (
	"errors"
	"fmt"
	"strconv"

	"github.com/kvgate/kvgate/engine/sglang"
	"github.com/kvgate/kvgate/engine/vllm"
)

// vllmOffload is the spec's offloading in engine/vllm's terms.
func (e *EngineSpec) vllmOffload() vllm.Offload {
	return vllm.Offload{Backend: e.Offload, CPUGiB: e.CPUOffloadGiB, DiskPath: e.DiskOffloadPath, DiskGiB: e.DiskOffloadGiB}
}

// hiCache is the spec's offloading in engine/sglang's terms.
func (e *EngineSpec) hiCache() sglang.HiCache {
	return sglang.HiCache{HostGiB: e.CPUOffloadGiB, DiskPath: e.DiskOffloadPath}
}

// validateOffload refuses the offloading fields an engine kind cannot honour
// (docs/OFFLOAD.md has the mapping).
func (e *EngineSpec) validateOffload() error {
	if e.CPUOffloadGiB < 0 || e.DiskOffloadGiB < 0 {
		return errors.New("cpu_offload_gib and disk_offload_gib must not be negative")
	}
	switch e.Kind {
	case KindVLLM:
		return e.vllmOffload().Validate(e.Role)
	case KindSGLang:
		var errs []error
		if e.Offload != "" && e.Offload != vllm.OffloadNative {
			errs = append(errs, fmt.Errorf("offload: %s is vLLM's; SGLang offloads with its own HiCache (leave offload empty)", e.Offload))
		}
		if e.DiskOffloadGiB > 0 {
			errs = append(errs, errors.New("disk_offload_gib: SGLang's file storage backend takes no size (its filesystem bounds it); set disk_offload_path only"))
		}
		if e.DiskOffloadPath != "" && e.CPUOffloadGiB <= 0 {
			errs = append(errs, errors.New("disk_offload_path: HiCache's storage tier sits below its host tier; set cpu_offload_gib too"))
		}
		return errors.Join(errs...)
	case KindTRTLLM:
		return e.trtllmOffloadErr()
	case KindSim:
		switch e.Offload {
		case "", vllm.OffloadNative, vllm.OffloadLMCache:
		default:
			return fmt.Errorf("offload %q: want %s or %s", e.Offload, vllm.OffloadNative, vllm.OffloadLMCache)
		}
		if e.DiskOffloadPath != "" {
			return errors.New("disk_offload_path: the simulator's disk tier is modelled, not written; set disk_offload_gib only")
		}
	}
	return nil
}

// simOffloadArgs are `kvgate sim`'s tier flags for the spec.
func simOffloadArgs(e EngineSpec) []string {
	var args []string
	if e.CPUOffloadGiB > 0 {
		args = append(args, "--cpu-cache-gib", strconv.FormatFloat(e.CPUOffloadGiB, 'f', -1, 64))
	}
	if e.DiskOffloadGiB > 0 {
		args = append(args, "--disk-cache-gib", strconv.FormatFloat(e.DiskOffloadGiB, 'f', -1, 64))
	}
	return args
}
