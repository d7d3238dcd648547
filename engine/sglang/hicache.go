package sglang

import "strconv"

// EnvHiCacheFileDir is where HiCache's "file" storage backend keeps its pages (SGLang's
// HiCacheFile reads it; /tmp/hicache when unset).
const EnvHiCacheFileDir = "SGLANG_HICACHE_FILE_BACKEND_STORAGE_DIR"

// HiCache is SGLang's hierarchical KV cache: a host-memory tier of HostGiB below the GPU's
// radix cache and, with DiskPath, the "file" storage backend below that. The zero value is off.
type HiCache struct {
	HostGiB  float64
	DiskPath string
}

// Args are the launch flags: --enable-hierarchical-cache --hicache-size GiB (which overrides
// --hicache-ratio), and --hicache-storage-backend file for a disk tier. None when HostGiB is 0.
func (h HiCache) Args() []string {
	if h.HostGiB <= 0 {
		return nil
	}
	args := []string{"--enable-hierarchical-cache", "--hicache-size", strconv.FormatFloat(h.HostGiB, 'f', -1, 64)}
	if h.DiskPath != "" {
		args = append(args, "--hicache-storage-backend", "file")
	}
	return args
}

// Env is the environment: the file backend's directory.
func (h HiCache) Env() []string {
	if h.HostGiB <= 0 || h.DiskPath == "" {
		return nil
	}
	return []string{EnvHiCacheFileDir + "=" + h.DiskPath}
}
