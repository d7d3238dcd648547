package main

import (
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/kvgate/kvgate/engine"
	"github.com/kvgate/kvgate/engine/sim"
	"github.com/kvgate/kvgate/tlsconfig"
	"github.com/kvgate/kvgate/tokenizer"
)

func init() { register(newSimCmd) }

// runtimeLoRAEnv reads vLLM's VLLM_ALLOW_RUNTIME_LORA_UPDATING.
func runtimeLoRAEnv() bool {
	v := strings.ToLower(os.Getenv("VLLM_ALLOW_RUNTIME_LORA_UPDATING"))
	return v == "true" || v == "1"
}

// newSimCmd serves one simulated vLLM engine.
func newSimCmd(g *globals) *cobra.Command {
	var (
		cfg        sim.ServerConfig
		host       string
		port       int
		hashFormat string
		shape      string
		speed      float64
		loras      []string
		timing     = sim.DefaultTiming()
		srvTLS     tlsconfig.Files // the OpenAI API and the transfer listener
		peerTLS    tlsconfig.Files // this engine's pulls from other engines
	)
	var tierGBps [4]float64 // host-to-device, device-to-host, disk read, disk write
	cmd := &cobra.Command{
		Use:   "sim",
		Short: "Serve a simulated vLLM engine (OpenAI API, KV events, vLLM metrics) without a GPU",
		Long: `kvgate sim is a vLLM-compatible simulated engine: the same HTTP API, the same KV-event wire
format on ZMQ, the same metric names, a paged KV cache with prefix caching and eviction, and a
step-time model of an 8B model on one H100. Every socket listens on loopback unless told
otherwise (--host 0.0.0.0, --kv-events tcp://*:5557). See docs/SIM.md.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg.Addr = net.JoinHostPort(host, strconv.Itoa(port))
			var err error
			if cfg.TLS, err = srvTLS.Server(); err != nil {
				return fmt.Errorf("--tls-*: %w", err)
			}
			if cfg.PeerTLS, err = peerTLS.Client(); err != nil {
				return fmt.Errorf("--peer-tls-*: %w", err)
			}
			switch hashFormat {
			case "int":
				cfg.HashFormat = engine.HashInt
			case "bytes":
				cfg.HashFormat = engine.HashBytes
			default:
				return fmt.Errorf("--hash-format %q: want int or bytes", hashFormat)
			}
			switch shape {
			case "map":
				cfg.EventShape = engine.ShapeMap
			case "array":
				cfg.EventShape = engine.ShapeArray
			default:
				return fmt.Errorf("--event-shape %q: want map or array", shape)
			}
			for _, l := range loras { // vLLM's name=path; the simulator needs only the name
				name, _, _ := strings.Cut(l, "=")
				cfg.LoRAs = append(cfg.LoRAs, name)
			}
			timing.Speed = speed
			cfg.Engine.Timing = timing
			cfg.Engine.Tiers = sim.TierTiming{HostToDevice: tierGBps[0] * 1e9, DeviceToHost: tierGBps[1] * 1e9, DiskRead: tierGBps[2] * 1e9, DiskWrite: tierGBps[3] * 1e9}
			reg := newRegistry()
			s, err := sim.NewServer(cfg, g.log, reg)
			if err != nil {
				return err
			}
			return s.Run(cmd.Context())
		},
	}
	f := cmd.Flags()
	f.StringVar(&host, "host", "127.0.0.1", "HTTP listen host (0.0.0.0 for every interface)")
	f.IntVar(&port, "port", 8100, "HTTP listen port (0 picks a free one)")
	f.StringVar(&cfg.Model, "model", tokenizer.DefaultModel, "served model name")
	f.StringSliceVar(&loras, "lora-modules", nil, "LoRA adapters served beside --model, as name or name=path (comma-separated)")
	f.BoolVar(&cfg.ChainOutput, "chain-output", false, "answer with the output words in a fixed cyclic order, continuing after the prompt's last word: a request continued elsewhere gets the rest of the same answer, so a repeated or lost token is visible (tests of request migration)")
	f.BoolVar(&cfg.RuntimeLoRA, "allow-runtime-lora-updating", runtimeLoRAEnv(), "serve vLLM's /v1/load_lora_adapter and /v1/unload_lora_adapter (default: true when VLLM_ALLOW_RUNTIME_LORA_UPDATING is true or 1, as vLLM)")
	f.IntVar(&cfg.Engine.MaxLoRAs, "max-loras", 0, "distinct LoRA adapters in one batch (and GPU slots), as vLLM's --max-loras; a request whose adapter would exceed it waits (0: no limit)")
	f.DurationVar(&cfg.Engine.LoRALoad, "lora-load-time", sim.DefaultLoRALoad, "time to read an adapter on /v1/load_lora_adapter, and to move one into a GPU slot on its first request there")
	f.StringVar(&cfg.TokenizerDir, "tokenizer", "", "directory with tokenizer.json (default: the embedded Qwen3 tokenizer)")
	f.StringVar(&cfg.KVEvents, "kv-events", engine.DefaultEndpoint, "ZMQ endpoint of the KV-event PUB socket, loopback by default (tcp://*:5557 binds every interface; \"\" disables events)")
	f.BoolVar(&cfg.KVEventsDial, "kv-events-dial", false, "connect the PUB socket to --kv-events instead of binding it")
	f.StringVar(&cfg.KVEventsTopic, "kv-events-topic", "", "topic frame of every KV-event message")
	f.StringVar(&cfg.KVEventsReplay, "kv-events-replay", engine.DefaultReplayEndpoint, "ZMQ ROUTER endpoint that replays buffered batches (\"\" disables)")
	f.Int64Var(&cfg.KVEventsLimits.MaxMessage, "kv-events-max-message", engine.DefaultMaxZMQMessage, "largest ZMQ message (and frame) a KV-event peer may send, in bytes; a peer sending more is disconnected")
	f.StringVar(&hashFormat, "hash-format", "int", "block hashes in events: int (64-bit) or bytes (32-byte sha256)")
	f.IntVar(&cfg.DataParallelRank, "data-parallel-rank", 0, "data-parallel rank stamped on every KV-event batch, as vLLM's publisher does")
	f.StringVar(&shape, "event-shape", "map", "event encoding: map (current vLLM) or array (positional, older vLLM and SGLang)")
	f.IntVar(&cfg.Engine.BlockSize, "block-size", tokenizer.DefaultBlockSize, "tokens per KV block")
	f.IntVar(&cfg.Engine.NumBlocks, "num-blocks", 0, "KV cache capacity in blocks (0: derived from --gpu-memory-gib and the model shape)")
	f.Float64Var(&cfg.Engine.GPUMemoryGiB, "gpu-memory-gib", 80, "simulated GPU memory")
	f.Float64Var(&cfg.Engine.GPUMemoryUtil, "gpu-memory-utilization", 0.9, "fraction of GPU memory the engine may use")
	f.IntVar(&cfg.Engine.MaxNumSeqs, "max-num-seqs", 256, "running requests at most")
	f.IntVar(&cfg.Engine.MaxNumBatchedTokens, "max-num-batched-tokens", 8192, "tokens per engine step at most")
	f.IntVar(&cfg.Engine.MaxModelLen, "max-model-len", 40960, "prompt plus output tokens of one request at most (capped by the cache)")
	f.BoolVar(&cfg.Engine.NoChunkedPrefill, "no-chunked-prefill", false, "prefill a prompt in one step or not at all")
	f.IntVar(&cfg.Engine.Shape.Layers, "layers", sim.DefaultShape().Layers, "model layers (KV size per token)")
	f.IntVar(&cfg.Engine.Shape.KVHeads, "kv-heads", sim.DefaultShape().KVHeads, "model KV heads")
	f.IntVar(&cfg.Engine.Shape.HeadDim, "head-dim", sim.DefaultShape().HeadDim, "model head dimension")
	f.IntVar(&cfg.Engine.Shape.DTypeBytes, "kv-dtype-bytes", sim.DefaultShape().DTypeBytes, "bytes per KV element")
	f.Float64Var(&cfg.Engine.Shape.ParamsB, "params-b", sim.DefaultShape().ParamsB, "model parameters in billions (weights memory)")
	f.Float64Var(&speed, "speed", 1, "time scale: 10 runs every step 10x faster than modelled")
	f.DurationVar(&timing.Base, "step-base", sim.DefaultTiming().Base, "fixed time of one engine step")
	f.DurationVar(&timing.PerToken, "step-per-token", sim.DefaultTiming().PerToken, "step time per scheduled token")
	f.DurationVar(&timing.PerSeq, "step-per-seq", sim.DefaultTiming().PerSeq, "step time per scheduled sequence")
	f.DurationVar(&timing.PerContextToken, "step-per-context-token", sim.DefaultTiming().PerContextToken, "step time per token of attended context")
	f.Float64Var(&timing.PerAttnPair, "step-per-attn-pair-ns", sim.DefaultTiming().PerAttnPair, "nanoseconds per (new token, context token) pair in prefill attention")
	f.StringVar(&cfg.TransferAddr, "transfer-addr", "", "P/D block-transfer listen address (default: HTTP host, a free port)")
	f.StringVar(&cfg.AdvertiseHost, "advertise-host", "", "remote_host given to decode engines (default: the transfer listener's host)")
	f.IntVar(&cfg.BlockBytes, "block-bytes", 0, "bytes per KV block on a P/D transfer (0: derived from the model shape)")
	f.DurationVar(&cfg.HoldTimeout, "kv-hold-timeout", 480*time.Second, "how long prefilled blocks wait to be pulled")
	f.StringVar(&cfg.EngineID, "engine-id", "", "remote_engine_id in kv_transfer_params (default: sim-<transfer port>)")
	f.IntVar(&cfg.Engine.CPUBlocks, "cpu-cache-blocks", 0, "host (CPU) KV tier in blocks: GPU evictions are offloaded there and onboarded on a hit (0: none, or --cpu-cache-gib)")
	f.Float64Var(&cfg.Engine.CPUCacheGiB, "cpu-cache-gib", 0, "host (CPU) KV tier in GiB, when --cpu-cache-blocks is 0 (0: none)")
	f.IntVar(&cfg.Engine.DiskBlocks, "disk-cache-blocks", 0, "disk KV tier in blocks: host-tier evictions go there (0: none, or --disk-cache-gib)")
	f.Float64Var(&cfg.Engine.DiskCacheGiB, "disk-cache-gib", 0, "disk KV tier in GiB, when --disk-cache-blocks is 0 (0: none)")
	f.Float64Var(&tierGBps[0], "h2d-gbps", sim.DefaultTierTiming().HostToDevice/1e9, "host-to-device bandwidth in GB/s (onboarding from the CPU tier; PCIe Gen5 x16)")
	f.Float64Var(&tierGBps[1], "d2h-gbps", sim.DefaultTierTiming().DeviceToHost/1e9, "device-to-host bandwidth in GB/s (asynchronous offload to the CPU tier)")
	f.Float64Var(&tierGBps[2], "disk-read-gbps", sim.DefaultTierTiming().DiskRead/1e9, "disk read bandwidth in GB/s (onboarding from the disk tier; NVMe Gen4)")
	f.Float64Var(&tierGBps[3], "disk-write-gbps", sim.DefaultTierTiming().DiskWrite/1e9, "disk write bandwidth in GB/s (asynchronous CPU-tier evictions to disk)")
	srvTLS.AddServerFlags(f, "", "the OpenAI API and the P/D block-transfer listener")
	peerTLS.AddClientFlags(f, "peer-", "a peer engine") // P/D and P2P pulls, and a P2P lookup
	return cmd
}
