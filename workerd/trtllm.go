package workerd

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"github.com/kvgate/kvgate/discovery"
	"github.com/kvgate/kvgate/engine"
	"github.com/kvgate/kvgate/engine/trtllm"
	"github.com/kvgate/kvgate/engine/vllm"
)

// planFile is a file an engine's command line names, written before the engine starts.
type planFile struct {
	path string
	data []byte
	perm os.FileMode
}

// write writes f, creating its directory.
func (f planFile) write() error {
	if err := os.MkdirAll(filepath.Dir(f.path), 0o700); err != nil {
		return err
	}
	return os.WriteFile(f.path, f.data, f.perm)
}

// trtllmOptionsDir is where workerd writes trtllm-serve's LLM API options files.
func trtllmOptionsDir() string { return filepath.Join(os.TempDir(), "kvgate-workerd") }

// trtllmEvents is the KV-event "endpoint" of a trtllm-serve at addr: its HTTP
// /kv_cache_events, which workerd polls (engine/trtllm.Poller).
func trtllmEvents(addr string) string { return "http://" + addr + trtllm.EventsPath }

// validateTRTLLM refuses what workerd does not run TensorRT-LLM with.
func (e *EngineSpec) validateTRTLLM() error {
	switch e.Role {
	case "", discovery.RoleAggregated:
	default:
		return fmt.Errorf("role %s: workerd runs trtllm-serve aggregated only (TRT-LLM's disaggregated serving has its own launcher)", e.Role)
	}
	if e.KVEventsPort != 0 {
		return errors.New("kv_events_port: trtllm-serve serves KV-cache events on its HTTP port (/kv_cache_events); leave it unset")
	}
	return nil
}

// trtllmOffloadErr: TRT-LLM offloads to a host-memory pool of its own (host_cache_size).
func (e *EngineSpec) trtllmOffloadErr() error {
	var errs []error
	if e.Offload != "" && e.Offload != vllm.OffloadNative {
		errs = append(errs, fmt.Errorf("offload: %s is vLLM's; TRT-LLM offloads to its own host pool (leave offload empty)", e.Offload))
	}
	if e.DiskOffloadGiB > 0 || e.DiskOffloadPath != "" {
		errs = append(errs, errors.New("disk_offload_path/disk_offload_gib: workerd gives TRT-LLM a host-memory tier only (cpu_offload_gib)"))
	}
	return errors.Join(errs...)
}

// trtllmCommand builds trtllm-serve's argv and its options file.
func (p *plan) trtllmCommand(host string, ep enginePorts) []error {
	s := p.spec
	o := trtllm.Options{
		Binary: s.Binary, Model: s.Model, Host: host, Port: ep.http, TPSize: len(p.gpus),
		TokensPerBlock: p.blockSize, HostCacheBytes: int64(s.CPUOffloadGiB * (1 << 30)),
		OptionsFile: filepath.Join(trtllmOptionsDir(), p.instance+"-llm-api-options.yaml"),
		Extra:       s.Args,
	}
	if !s.NoKVEvents {
		o.EventBuffer = trtllm.DefaultEventBuffer
	}
	p.argv = trtllm.Command(o)
	p.files = append(p.files, planFile{path: o.OptionsFile, data: trtllm.OptionsYAML(o), perm: 0o600})
	if err := lookPath(p.argv[0]); err != nil {
		return []error{fmt.Errorf("trtllm-serve executable %q not found (%v): install TensorRT-LLM (pip install tensorrt_llm) or set binary", p.argv[0], err)}
	}
	return nil
}

// eventSource is what workerd reads an engine's KV events from: trtllm-serve's
// /kv_cache_events (polled) or the engine's ZMQ publisher.
func eventSource(p *plan, log *slog.Logger, zmq *engine.ZMQMetrics) interface {
	Run(context.Context, engine.Handler) error
} {
	if strings.HasPrefix(p.kvEvents, "http://") || strings.HasPrefix(p.kvEvents, "https://") {
		return trtllm.NewPoller(trtllm.PollerConfig{URL: p.kvEvents, BlockSize: p.blockSize, Logger: log})
	}
	return engine.NewSubscriber(engine.SubscriberConfig{Endpoint: p.kvEvents, ReplayEndpoint: p.kvReplay, Logger: log, Metrics: zmq})
}
