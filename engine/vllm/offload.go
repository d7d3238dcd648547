package vllm

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
)

// Offloading backends.
const (
	// OffloadNative is vLLM's own CPU offloading: --kv-offloading-backend native with
	// --kv-offloading-size GiB, which vLLM turns into its OffloadingConnector (kv_both).
	OffloadNative = "native"
	// OffloadLMCache is LMCache's LMCacheConnectorV1 (--kv-transfer-config), sized by its
	// LMCACHE_* environment: a host tier and an optional local-disk tier.
	OffloadLMCache = "lmcache"
)

// LMCache's environment variables (LMCache's configuration reference; the seeds launch vLLM
// this way).
const (
	EnvLMCacheLocalCPU        = "LMCACHE_LOCAL_CPU"           // "True": keep a host tier
	EnvLMCacheMaxLocalCPUSize = "LMCACHE_MAX_LOCAL_CPU_SIZE"  // host tier size, GiB
	EnvLMCacheLocalDisk       = "LMCACHE_LOCAL_DISK"          // "file://<dir>/": disk tier
	EnvLMCacheMaxLocalDisk    = "LMCACHE_MAX_LOCAL_DISK_SIZE" // disk tier size, GiB
)

// Offload is KV-cache offloading below the GPU for one vLLM server. The zero value is off.
type Offload struct {
	Backend  string  // OffloadNative or OffloadLMCache; "" = OffloadNative
	CPUGiB   float64 // host tier size
	DiskPath string  // disk tier directory (LMCache only)
	DiskGiB  float64 // disk tier size (LMCache only)
}

// Enabled reports whether any tier is asked for.
func (o Offload) Enabled() bool { return o.CPUGiB > 0 || o.DiskGiB > 0 || o.DiskPath != "" }

func (o Offload) backend() string {
	if o.Backend == "" {
		return OffloadNative
	}
	return o.Backend
}

// Validate refuses what vLLM cannot do: an unknown backend, negative sizes, a disk tier
// without both its path and size, a disk tier with native offloading (its CLI has a host tier
// only), a backend named with no tier, and offloading on a P/D engine (NixlConnector already
// takes --kv-transfer-config; combining them needs vLLM's MultiConnector, not wired here).
func (o Offload) Validate(role string) error {
	var errs []error
	switch o.Backend {
	case "", OffloadNative, OffloadLMCache:
	default:
		return fmt.Errorf("offload %q: want %s or %s", o.Backend, OffloadNative, OffloadLMCache)
	}
	if o.CPUGiB < 0 || o.DiskGiB < 0 {
		errs = append(errs, errors.New("cpu_offload_gib and disk_offload_gib must not be negative"))
	}
	if (o.DiskGiB > 0) != (o.DiskPath != "") {
		errs = append(errs, errors.New("a disk tier needs both disk_offload_path and disk_offload_gib"))
	}
	if !o.Enabled() {
		if o.Backend != "" {
			errs = append(errs, fmt.Errorf("offload: %s without cpu_offload_gib or disk_offload_gib offloads nothing", o.Backend))
		}
		return errors.Join(errs...)
	}
	if o.backend() == OffloadNative {
		if o.DiskPath != "" || o.DiskGiB > 0 {
			errs = append(errs, errors.New("vLLM's native offloading has a host (CPU) tier only: for a disk tier use offload: lmcache"))
		}
		if o.CPUGiB <= 0 {
			errs = append(errs, errors.New("vLLM's native offloading needs cpu_offload_gib"))
		}
	}
	if Disaggregated(role) {
		errs = append(errs, fmt.Errorf("offloading on a %s engine is not supported: its NixlConnector already uses --kv-transfer-config", role))
	}
	return errors.Join(errs...)
}

// OffloadArgs are the command-line flags for o (none when off).
func OffloadArgs(o Offload) []string {
	if !o.Enabled() {
		return nil
	}
	if o.backend() == OffloadLMCache {
		b, _ := json.Marshal(struct {
			Connector string `json:"kv_connector"`
			Role      string `json:"kv_role"`
		}{"LMCacheConnectorV1", "kv_both"})
		return []string{"--kv-transfer-config", string(b)}
	}
	return []string{"--kv-offloading-backend", OffloadNative, "--kv-offloading-size", gib(o.CPUGiB)}
}

// OffloadEnv is the environment for o: LMCache's tier sizes (native offloading needs none).
func OffloadEnv(o Offload) []string {
	if !o.Enabled() || o.backend() != OffloadLMCache {
		return nil
	}
	env := []string{EnvLMCacheLocalCPU + "=" + pyBool(o.CPUGiB > 0)}
	if o.CPUGiB > 0 {
		env = append(env, EnvLMCacheMaxLocalCPUSize+"="+gib(o.CPUGiB))
	}
	if o.DiskPath != "" {
		dir := o.DiskPath
		if dir[len(dir)-1] != '/' {
			dir += "/"
		}
		env = append(env, EnvLMCacheLocalDisk+"=file://"+dir, EnvLMCacheMaxLocalDisk+"="+gib(o.DiskGiB))
	}
	return env
}

func gib(v float64) string { return strconv.FormatFloat(v, 'f', -1, 64) }

func pyBool(b bool) string {
	if b {
		return "True"
	}
	return "False"
}
