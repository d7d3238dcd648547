package router

import (
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/kvgate/kvgate/kvindex"
)

// The tier-credit modes (Config.TierCredits).
const (
	// TierCreditsDerived credits each tier with the prefill time a block there saves net of
	// bringing it to the GPU (Config.Tiers).
	TierCreditsDerived = "derived"
	// TierCreditsFixed keeps Scoring.TierCredit as given (1, 0.75, 0.25 by default).
	TierCreditsFixed = "fixed"
)

// TierModel is what the router knows about the speed of an engine and of the links its KV
// blocks travel over: enough to value a cached block by tier and to decide when pulling a
// prefix from another engine beats recomputing it. DefaultTierModel is the sim's timing model
// (an 8B model in bf16 on one H100, PCIe Gen5 host link, one NVMe Gen4 SSD, a 200 Gb/s NIC).
type TierModel struct {
	// PrefillTokenTime is the engine's prefill time per prompt token (the recompute cost).
	PrefillTokenTime time.Duration
	// KVBytesPerToken is the size of one token's KV cache (all layers, K and V).
	KVBytesPerToken int
	// HostToDevice and DiskRead are the bandwidths, in bytes per second, of onboarding from
	// the host tier and of reading the disk tier (a disk block then crosses HostToDevice too).
	HostToDevice float64
	DiskRead     float64
	// Network is the bandwidth, in bytes per second, of a pull from another engine's cache
	// (Config.P2P), and NetworkLatency the fixed cost of one pull.
	Network        float64
	NetworkLatency time.Duration
}

// DefaultTierModel returns the sim's defaults: 50 µs of prefill per token, 144 KiB of KV per
// token (Qwen3-8B in bf16), host-to-device 50 GB/s, disk reads 7 GB/s, pulls over 25 GB/s
// with 1 ms of latency.
func DefaultTierModel() TierModel {
	return TierModel{
		PrefillTokenTime: 50 * time.Microsecond,
		KVBytesPerToken:  2 * 36 * 8 * 128 * 2,
		HostToDevice:     50e9,
		DiskRead:         7e9,
		Network:          25e9,
		NetworkLatency:   time.Millisecond,
	}
}

func (m TierModel) validate() error {
	if m.PrefillTokenTime <= 0 || m.KVBytesPerToken <= 0 || m.HostToDevice <= 0 || m.DiskRead <= 0 ||
		m.Network <= 0 || m.NetworkLatency < 0 {
		return fmt.Errorf("router: tier model needs a positive prefill time per token, KV bytes per token and bandwidths: %+v", m)
	}
	return nil
}

// loadTime is how long bringing one token's KV to the GPU over links of the given bandwidths
// (one after another) takes, in seconds.
func (m TierModel) loadTime(bws ...float64) float64 {
	var s float64
	for _, bw := range bws {
		s += float64(m.KVBytesPerToken) / bw
	}
	return s
}

// credit is 1 less the share of a token's prefill time that loading it takes, clamped to
// [0, 1].
func (m TierModel) credit(load float64) float64 {
	return math.Max(0, math.Min(1, 1-load/m.PrefillTokenTime.Seconds()))
}

// Credits returns the derived tier credits: for each tier, the share of a block's prefill time
// that having it there saves, net of loading it (GPU 1; CPU over HostToDevice; disk over
// DiskRead then HostToDevice).
func (m TierModel) Credits() [kvindex.NumTiers]float64 {
	return [kvindex.NumTiers]float64{
		kvindex.TierGPU:  1,
		kvindex.TierCPU:  m.credit(m.loadTime(m.HostToDevice)),
		kvindex.TierDisk: m.credit(m.loadTime(m.DiskRead, m.HostToDevice)),
	}
}

// RemoteCredit is the share of a block's prefill time that pulling it from another engine
// saves, net of the network transfer (the fixed latency aside: see PullCrossover).
func (m TierModel) RemoteCredit() float64 { return m.credit(m.loadTime(m.Network)) }

// PullCrossover is the shortest pull, in tokens, that beats recomputing them: the network
// latency has to be paid back by the per-token saving. It is -1 when no pull ever pays.
func (m TierModel) PullCrossover() int {
	save := m.PrefillTokenTime.Seconds() - m.loadTime(m.Network)
	if save <= 0 {
		return -1
	}
	return int(math.Ceil(m.NetworkLatency.Seconds() / save))
}

// Pull tells the target to fetch the prompt's leading blocks from another engine's KV cache
// instead of prefilling them (cluster-wide cache, Config.P2P).
type Pull struct {
	// From is the endpoint holding the blocks (its Address is its OpenAI server; the front
	// door maps it to the source's transfer address).
	From Endpoint
	// Blocks is how many leading full prompt blocks to pull, counted from the start of the
	// prompt (the target's own cached prefix included); Tokens is Blocks times the block size.
	Blocks int
	Tokens int
	// Tiers is where the source holds those blocks (GPU, CPU, disk), as the index saw them.
	Tiers [kvindex.NumTiers]int
}

// applyTiers sets the scoring credits from the tier-credit mode and checks the P2P settings.
func (c *Config) applyTiers() error {
	if c.Tiers == (TierModel{}) {
		c.Tiers = DefaultTierModel()
	}
	switch c.TierCredits {
	case "":
		c.TierCredits = TierCreditsFixed
	case TierCreditsDerived, TierCreditsFixed:
	default:
		return fmt.Errorf("router: unknown tier credits %q (want %s or %s)", c.TierCredits, TierCreditsDerived, TierCreditsFixed)
	}
	if c.TierCredits == TierCreditsDerived || c.P2P {
		if err := c.Tiers.validate(); err != nil {
			return err
		}
	}
	if c.TierCredits == TierCreditsDerived {
		c.Scoring.TierCredit = c.Tiers.Credits()
	}
	if c.P2PMinTokens < 0 {
		return errors.New("router: the P2P minimum pull must not be negative")
	}
	if c.P2P {
		// A pulled block is worth what the model says relative to a block in the host tier:
		// the derived remote credit itself, or under fixed credits the fixed host credit
		// scaled by the same ratio (so a pull never ties with the holder's own host tier).
		c.Scoring.RemoteCredit = c.Tiers.RemoteCredit()
		if cpu := c.Tiers.Credits()[kvindex.TierCPU]; cpu > 0 {
			c.Scoring.RemoteCredit = min(1, c.Scoring.TierCredit[kvindex.TierCPU]*c.Scoring.RemoteCredit/cpu)
		}
		if c.P2PMinTokens == 0 {
			c.P2PMinTokens = c.Tiers.PullCrossover()
			if c.P2PMinTokens < 0 {
				return fmt.Errorf("router: P2P: a pull over %.3g bytes/s never beats a %v per-token prefill", c.Tiers.Network, c.Tiers.PrefillTokenTime)
			}
		}
		c.P2PMinTokens = max(c.P2PMinTokens, 1)
	}
	return nil
}
