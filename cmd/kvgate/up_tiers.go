package main

import (
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/kvgate/kvgate/engine/sim"
)

// tierUpFlags are the host and disk KV tiers of kvgate up's simulated engines
// (docs/OFFLOAD.md): the same flags, and meaning, as kvgate sim's.
type tierUpFlags struct {
	cpuBlocks, diskBlocks int
	cpuGiB, diskGiB       float64
}

func (t *tierUpFlags) add(cmd *cobra.Command) {
	f := cmd.Flags()
	f.Float64Var(&t.cpuGiB, "cpu-cache-gib", 0, "host (CPU) KV tier of each simulated engine in GiB: GPU evictions are offloaded there and onboarded on a hit (0: none)")
	f.IntVar(&t.cpuBlocks, "cpu-cache-blocks", 0, "host (CPU) KV tier of each simulated engine in blocks, instead of --cpu-cache-gib")
	f.Float64Var(&t.diskGiB, "disk-cache-gib", 0, "disk KV tier of each simulated engine in GiB: host-tier evictions go there (0: none)")
	f.IntVar(&t.diskBlocks, "disk-cache-blocks", 0, "disk KV tier of each simulated engine in blocks, instead of --disk-cache-gib")
}

// apply sets the tiers on one simulated engine's config.
func (t *tierUpFlags) apply(c *sim.Config) {
	c.CPUBlocks, c.CPUCacheGiB = t.cpuBlocks, t.cpuGiB
	c.DiskBlocks, c.DiskCacheGiB = t.diskBlocks, t.diskGiB
}

// addP2PPortFlag registers --p2p-transfer-port, the front doors' P2PTransferPort.
func addP2PPortFlag(f *pflag.FlagSet, port *int) {
	f.IntVar(port, "p2p-transfer-port", 0, "with --p2p: the port engines serve KV block pulls on (as llm-d's --p2p-connector-port); a pulled request then also carries kv_transfer_params.remote_kv_source (0: the x-kv-cache-source-host-port header alone names the source)")
}
