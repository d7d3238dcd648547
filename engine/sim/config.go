package sim

import (
	"errors"
	"fmt"
	"time"

	"github.com/kvgate/kvgate/tokenizer"
)

// Shape is the part of a model's architecture the simulator needs: how many bytes of KV cache
// one token takes, and how many bytes of weights occupy GPU memory before the cache.
type Shape struct {
	Layers     int     // transformer layers
	KVHeads    int     // key/value heads (GQA)
	HeadDim    int     // dimension of one head
	DTypeBytes int     // bytes per element of the KV cache (2 for bf16)
	ParamsB    float64 // parameters, in billions (weights take ParamsB*1e9*DTypeBytes bytes)
}

// DefaultShape() returns Qwen3-8B's shape (tokenizer.DefaultModel): 36 layers, 8 KV heads of
// 128, bf16, 8.2B parameters.
func DefaultShape() Shape {
	return Shape{Layers: 36, KVHeads: 8, HeadDim: 128, DTypeBytes: 2, ParamsB: 8.2}
}

// KVBytesPerToken is 2 (K and V) * layers * kv_heads * head_dim * dtype bytes.
func (s Shape) KVBytesPerToken() int { return 2 * s.Layers * s.KVHeads * s.HeadDim * s.DTypeBytes }

// Config is one simulated engine. The zero value of every field means its default; call
// WithDefaults to see the effective values.
type Config struct {
	BlockSize           int  // tokens per KV block (16)
	NumBlocks           int  // KV cache capacity in blocks; 0 derives it from GPUMemoryGiB and Shape
	MaxNumSeqs          int  // running requests at most (256)
	MaxNumBatchedTokens int  // tokens scheduled in one step at most (8192)
	NoChunkedPrefill    bool // when set, a prompt is prefilled in one step or waits
	MaxModelLen         int  // prompt plus output tokens of one request at most (40960, Qwen3-8B's; at most the cache)
	Shape               Shape
	GPUMemoryGiB        float64 // simulated GPU memory (80)
	GPUMemoryUtil       float64 // fraction vLLM may use (0.9)
	Timing              Timing
	MaxLoRAs            int           // distinct adapters in one batch and GPU slots, vLLM's --max-loras (0: no limit)
	LoRALoad            time.Duration // moving an adapter into a GPU slot (DefaultLoRALoad), divided by Timing.Speed

	// Lower KV tiers, off by default. A block evicted from the GPU cache is offloaded to the
	// host (CPU) tier, the host tier's evictions go to the disk tier; a prompt whose prefix
	// continues in a lower tier onboards it when that beats recomputing. Capacities are in
	// blocks, or in GiB (converted with BlockBytes) when the block count is 0.
	CPUBlocks    int
	CPUCacheGiB  float64
	DiskBlocks   int
	DiskCacheGiB float64
	Tiers        TierTiming
}

// TierTiming is the bandwidth of the links between the tiers, in bytes per second. Defaults
// are in DefaultTierTiming; docs/SIM.md gives their sources.
type TierTiming struct {
	HostToDevice float64 // onboarding from the host tier (PCIe)
	DeviceToHost float64 // offloading to the host tier (PCIe), asynchronous
	DiskRead     float64 // onboarding from the disk tier (then HostToDevice)
	DiskWrite    float64 // host tier evictions written to disk, asynchronous
}

// DefaultTierTiming is PCIe Gen5 x16 between GPU and host and one NVMe Gen4 SSD.
func DefaultTierTiming() TierTiming {
	return TierTiming{HostToDevice: 50e9, DeviceToHost: 50e9, DiskRead: 7e9, DiskWrite: 6e9}
}

// HasTiers reports whether a host or disk tier is configured (after WithDefaults).
func (c Config) HasTiers() bool { return c.CPUBlocks > 0 || c.DiskBlocks > 0 }

// Timing is the step-time model: one engine step (one forward pass over the batch) takes
//
//	Base + PerToken*scheduled_tokens + PerSeq*scheduled_seqs + PerContextToken*sum(context)
//	     + PerAttnPair*sum(prefill_tokens*context)
//
// divided by Speed. Defaults are in DefaultTiming(); docs/SIM.md gives their sources.
type Timing struct {
	Base            time.Duration // fixed cost of a step: reading the weights once
	PerToken        time.Duration // per scheduled token (prefill or decode): the GEMMs
	PerSeq          time.Duration // per scheduled sequence: sampling, bookkeeping
	PerContextToken time.Duration // per token of context attended by a scheduled sequence: KV reads
	PerAttnPair     float64       // nanoseconds per (new token, context token) pair in prefill attention
	Speed           float64       // 10 makes every step 10x shorter; 0 means 1
}

// DefaultTiming() returns the timing of an 8B model in bf16 on one H100 SXM under vLLM.
func DefaultTiming() Timing {
	return Timing{
		Base:            6 * time.Millisecond,
		PerToken:        50 * time.Microsecond,
		PerSeq:          10 * time.Microsecond,
		PerContextToken: 40 * time.Nanosecond,
		PerAttnPair:     1.3,
		Speed:           1,
	}
}

// WithDefaults returns c with every zero field set to its default and NumBlocks derived.
func (c Config) WithDefaults() Config {
	if c.BlockSize == 0 {
		c.BlockSize = tokenizer.DefaultBlockSize
	}
	if c.MaxNumSeqs == 0 {
		c.MaxNumSeqs = 256
	}
	if c.MaxNumBatchedTokens == 0 {
		c.MaxNumBatchedTokens = 8192
	}
	if c.Shape == (Shape{}) {
		c.Shape = DefaultShape()
	}
	if c.GPUMemoryGiB == 0 {
		c.GPUMemoryGiB = 80
	}
	if c.GPUMemoryUtil == 0 {
		c.GPUMemoryUtil = 0.9
	}
	if c.Timing == (Timing{}) {
		c.Timing = DefaultTiming()
	}
	if c.Timing.Speed == 0 {
		c.Timing.Speed = 1
	}
	if c.NumBlocks == 0 {
		c.NumBlocks = c.derivedBlocks()
	}
	if c.LoRALoad == 0 {
		c.LoRALoad = DefaultLoRALoad
	}
	if bb := float64(c.BlockBytes()); bb > 0 {
		if c.CPUBlocks == 0 && c.CPUCacheGiB > 0 {
			c.CPUBlocks = int(c.CPUCacheGiB * (1 << 30) / bb)
		}
		if c.DiskBlocks == 0 && c.DiskCacheGiB > 0 {
			c.DiskBlocks = int(c.DiskCacheGiB * (1 << 30) / bb)
		}
	}
	def := DefaultTierTiming()
	if c.Tiers.HostToDevice == 0 {
		c.Tiers.HostToDevice = def.HostToDevice
	}
	if c.Tiers.DeviceToHost == 0 {
		c.Tiers.DeviceToHost = def.DeviceToHost
	}
	if c.Tiers.DiskRead == 0 {
		c.Tiers.DiskRead = def.DiskRead
	}
	if c.Tiers.DiskWrite == 0 {
		c.Tiers.DiskWrite = def.DiskWrite
	}
	if c.MaxModelLen == 0 || c.MaxModelLen > c.NumBlocks*c.BlockSize {
		c.MaxModelLen = min(40960, c.NumBlocks*c.BlockSize)
	}
	return c
}

// derivedBlocks is (memory * utilisation - weights) / bytes per block, as vLLM sizes its cache
// (less activation memory, which it profiles and we ignore).
func (c Config) derivedBlocks() int {
	perBlock := float64(c.Shape.KVBytesPerToken() * c.BlockSize)
	if perBlock <= 0 {
		return 0
	}
	free := c.GPUMemoryGiB*c.GPUMemoryUtil*(1<<30) - c.Shape.ParamsB*1e9*float64(c.Shape.DTypeBytes)
	if free <= 0 {
		return 0
	}
	return int(free / perBlock)
}

// BlockBytes is the size of one KV block on the wire of a P/D transfer.
func (c Config) BlockBytes() int { return c.Shape.KVBytesPerToken() * c.BlockSize }

// Validate reports a config that cannot run (after WithDefaults).
func (c Config) Validate() error {
	var errs []error
	if c.BlockSize <= 0 {
		errs = append(errs, fmt.Errorf("block size %d must be positive", c.BlockSize))
	}
	if c.NumBlocks <= 0 {
		errs = append(errs, fmt.Errorf("KV cache of %d blocks: give --num-blocks or enough GPU memory for the weights", c.NumBlocks))
	}
	if c.MaxModelLen < 0 {
		errs = append(errs, fmt.Errorf("max model len %d must be positive", c.MaxModelLen))
	}
	if c.MaxNumSeqs <= 0 {
		errs = append(errs, fmt.Errorf("max num seqs %d must be positive", c.MaxNumSeqs))
	}
	if c.MaxNumBatchedTokens <= 0 {
		errs = append(errs, fmt.Errorf("max num batched tokens %d must be positive", c.MaxNumBatchedTokens))
	}
	if c.Timing.Speed < 0 {
		errs = append(errs, fmt.Errorf("speed %v must be positive", c.Timing.Speed))
	}
	if c.Timing.Base < 0 || c.Timing.PerToken < 0 || c.Timing.PerSeq < 0 || c.Timing.PerContextToken < 0 || c.Timing.PerAttnPair < 0 {
		errs = append(errs, errors.New("timing coefficients must not be negative"))
	}
	if c.CPUBlocks < 0 || c.DiskBlocks < 0 || c.CPUCacheGiB < 0 || c.DiskCacheGiB < 0 {
		errs = append(errs, errors.New("CPU and disk tier capacities must not be negative"))
	}
	if (c.CPUCacheGiB > 0 && c.CPUBlocks == 0) || (c.DiskCacheGiB > 0 && c.DiskBlocks == 0) {
		errs = append(errs, fmt.Errorf("a CPU or disk tier smaller than one block of %d bytes", c.BlockBytes()))
	}
	if c.Tiers.HostToDevice < 0 || c.Tiers.DeviceToHost < 0 || c.Tiers.DiskRead < 0 || c.Tiers.DiskWrite < 0 {
		errs = append(errs, errors.New("tier bandwidths must not be negative"))
	}
	return errors.Join(errs...)
}

// transfer is how long moving n blocks at bw bytes per second takes, divided by Speed.
func (c Config) transfer(n int, bw float64) time.Duration {
	if n <= 0 || bw <= 0 {
		return 0
	}
	speed := c.Timing.Speed
	if speed <= 0 {
		speed = 1
	}
	return time.Duration(float64(n) * float64(c.BlockBytes()) / bw / speed * float64(time.Second))
}

// stepTime is the modelled duration of one step.
func (t Timing) stepTime(tokens, seqs, context int, attnPairs float64) time.Duration {
	ns := float64(t.Base) + float64(t.PerToken)*float64(tokens) + float64(t.PerSeq)*float64(seqs) +
		float64(t.PerContextToken)*float64(context) + t.PerAttnPair*attnPairs
	speed := t.Speed
	if speed <= 0 {
		speed = 1
	}
	d := time.Duration(ns / speed)
	if d <= 0 {
		d = 1
	}
	return d
}
