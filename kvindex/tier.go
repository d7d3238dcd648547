package kvindex

import (
	"strconv"
	"strings"
)

// Tier is the memory a cached block lives in. Lower is faster.
type Tier uint8

// The tiers, fastest first. NumTiers sizes per-tier arrays.
const (
	TierGPU Tier = iota
	TierCPU
	TierDisk
	NumTiers
)

// TierFromMedium maps vLLM's KV-event "medium" to a Tier: "", "GPU" and
// "cuda" (any case, "cuda:N" too) are GPU; "CPU" is CPU; anything else is
// some slower storage and counts as disk.
func TierFromMedium(medium string) Tier {
	switch {
	case medium == "", strings.EqualFold(medium, "gpu"), len(medium) >= 4 && strings.EqualFold(medium[:4], "cuda"):
		return TierGPU
	case strings.EqualFold(medium, "cpu"):
		return TierCPU
	default:
		return TierDisk
	}
}

// String returns "gpu", "cpu", "disk", or "tier(N)" for an invalid tier.
func (t Tier) String() string {
	switch t {
	case TierGPU:
		return "gpu"
	case TierCPU:
		return "cpu"
	case TierDisk:
		return "disk"
	}
	return "tier(" + strconv.Itoa(int(t)) + ")"
}
