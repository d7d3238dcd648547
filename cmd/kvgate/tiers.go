package main

import (
	"github.com/spf13/cobra"

	"github.com/kvgate/kvgate/router"
)

// tierFlags configure how the router values the KV tiers and the cluster-wide cache
// (docs/ROUTER.md, "KV tiers and P2P pulls").
type tierFlags struct {
	credits string
	model   router.TierModel
	p2p     bool
	p2pMin  int
}

func (t *tierFlags) add(cmd *cobra.Command) {
	f := cmd.Flags()
	d := router.DefaultTierModel()
	f.StringVar(&t.credits, "tier-credits", router.TierCreditsFixed,
		"how CPU and disk cache hits are credited: fixed (1, 0.75, 0.25) or derived (the prefill time a block saves net of loading it, from the --tier-* speeds)")
	f.DurationVar(&t.model.PrefillTokenTime, "tier-prefill-token-time", d.PrefillTokenTime, "derived credits and P2P: the engines' prefill time per prompt token")
	f.IntVar(&t.model.KVBytesPerToken, "tier-kv-bytes-per-token", d.KVBytesPerToken, "derived credits and P2P: KV-cache bytes of one token (all layers, K and V)")
	f.Float64Var(&t.model.HostToDevice, "tier-host-to-device-bandwidth", d.HostToDevice, "derived credits: host-tier to GPU bandwidth, bytes/s")
	f.Float64Var(&t.model.DiskRead, "tier-disk-read-bandwidth", d.DiskRead, "derived credits: disk-tier read bandwidth, bytes/s")
	f.Float64Var(&t.model.Network, "tier-network-bandwidth", d.Network, "P2P: bandwidth of a pull from another engine's cache, bytes/s")
	f.DurationVar(&t.model.NetworkLatency, "tier-network-latency", d.NetworkLatency, "P2P: fixed cost of one pull")
	f.BoolVar(&t.p2p, "p2p", false, "cluster-wide cache: let a less-loaded engine pull a long prefix from a busy engine's cache (the decision names the source)")
	f.IntVar(&t.p2pMin, "p2p-min-tokens", 0, "P2P: pull only this many tokens more than the target holds, at least (0: the crossover where pulling beats recomputing, from the --tier-* speeds)")
}

func (t *tierFlags) apply(cfg *router.Config) {
	cfg.TierCredits = t.credits
	cfg.Tiers = t.model
	cfg.P2P = t.p2p
	cfg.P2PMinTokens = t.p2pMin
}
