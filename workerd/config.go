package workerd

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/kvgate/kvgate/configfile"
	"github.com/kvgate/kvgate/discovery"
	"github.com/kvgate/kvgate/tlsconfig"
)

// Engine kinds.
const (
	KindVLLM   = "vllm"
	KindSGLang = "sglang"
	KindSim    = "sim"
	// KindOllama is `ollama serve`; the model is an Ollama model name (pulled or created in
	// its OLLAMA_MODELS). KindLlamaCpp is llama.cpp's `llama-server`; the model is a GGUF
	// file. Both run on CPUs unless given GPUs and publish no KV events (workerd/llama.go).
	KindOllama   = "ollama"
	KindLlamaCpp = "llamacpp"
	KindTRTLLM   = "trtllm" // TensorRT-LLM's trtllm-serve (workerd/trtllm.go)
)

// Duration is a time.Duration written as a Go duration string ("30s") in YAML and JSON.
type Duration time.Duration

// UnmarshalJSON accepts "1m30s" or a number of nanoseconds.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err == nil {
		v, err := time.ParseDuration(s)
		if err != nil {
			return err
		}
		*d = Duration(v)
		return nil
	}
	var n int64
	if err := json.Unmarshal(b, &n); err != nil {
		return fmt.Errorf("duration: want a string like \"30s\", got %s", b)
	}
	*d = Duration(n)
	return nil
}

// MarshalJSON writes the duration as a string.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

// Config is workerd's configuration file. Zero fields take the defaults noted.
type Config struct {
	// Listen is the relay gRPC address ("127.0.0.1:0" picks a free port).
	Listen string `json:"listen,omitempty"`
	// Advertise is the relay address written to Consul ("" = Listen's bound address).
	Advertise string `json:"advertise,omitempty"`
	// Node prefixes engine instance names: "<node>-<engine name>" ("" = the hostname).
	Node string `json:"node,omitempty"`
	// Host is where engines listen and how routers reach them (127.0.0.1).
	Host   string        `json:"host,omitempty"`
	Consul *ConsulConfig `json:"consul,omitempty"`
	// TLS serves the relay over TLS; with a CA, routers must present a client certificate
	// signed by it (mutual TLS). Plaintext when empty.
	TLS tlsconfig.Files `json:"tls,omitempty"`
	// SidecarTLS serves the decode engines' P/D sidecars over HTTPS (mutual TLS with a CA).
	SidecarTLS tlsconfig.Files `json:"sidecar_tls,omitempty"`
	// PrefillEndpoints are prefill engines (host:port) on other nodes that this node's
	// sidecars may send prompts to, besides this node's own prefill engines and, with Consul,
	// the healthy prefill engines registered there (docs/DISAGG.md).
	PrefillEndpoints []string `json:"prefill_endpoints,omitempty"`

	ScrapeInterval Duration `json:"scrape_interval,omitempty"` // load scrape and health check period (1s)
	StartTimeout   Duration `json:"start_timeout,omitempty"`   // time to become healthy before a restart (10m)
	DrainTimeout   Duration `json:"drain_timeout,omitempty"`   // shutdown: wait for running requests to finish (30s)
	StopTimeout    Duration `json:"stop_timeout,omitempty"`    // SIGTERM to SIGKILL (20s)
	MinBackoff     Duration `json:"min_backoff,omitempty"`     // first restart delay (1s)
	MaxBackoff     Duration `json:"max_backoff,omitempty"`     // longest restart delay (30s)
	RingSize       int      `json:"ring_size,omitempty"`       // relay batches kept per engine for resuming routers (16384)

	// GPUs declares how many GPUs the node has when NVML finds none (no driver: a CPU
	// machine running sim templates against a virtual budget). 0 = the NVML inventory.
	GPUs int `json:"gpus,omitempty"`

	Engines []EngineSpec `json:"engines"`
	// Templates are engines the fleet API (api/fleet/v1) starts and stops on a planner's
	// orders, each between its min and max replicas (docs/FLEET.md).
	Templates []Template `json:"templates,omitempty"`
}

// ConsulConfig enables registration of every engine in Consul.
type ConsulConfig struct {
	Address            string   `json:"address,omitempty"` // agent HTTP address ("" = CONSUL_HTTP_ADDR or 127.0.0.1:8500)
	Service            string   `json:"service,omitempty"` // discovery.DefaultService
	Tag                string   `json:"tag,omitempty"`
	Datacenter         string   `json:"datacenter,omitempty"`
	Token              string   `json:"token,omitempty"`
	CheckInterval      Duration `json:"check_interval,omitempty"`      // HTTP check period (2s)
	DeregisterAfter    Duration `json:"deregister_after,omitempty"`    // Consul drops an instance critical this long (0 = never)
	ReregisterInterval Duration `json:"reregister_interval,omitempty"` // how often presence is checked (5s)
	// DeregisterGrace is how long shutdown waits after deregistering, for routers watching
	// Consul to stop sending, before it drains the engines (2s).
	DeregisterGrace Duration `json:"deregister_grace,omitempty"`
}

// EngineSpec is one engine workerd runs.
type EngineSpec struct {
	Name         string            `json:"name,omitempty"` // unique on the node ("<kind>-<index>")
	Kind         string            `json:"kind"`           // vllm, sglang, trtllm, sim, ollama, llamacpp
	Model        string            `json:"model"`          // model id or path
	ServedNames  []string          `json:"served_names,omitempty"`
	Role         string            `json:"role,omitempty"` // aggregated (default), prefill, decode
	GPUs         int               `json:"gpus,omitempty"` // GPUs to assign (CUDA_VISIBLE_DEVICES)
	Port         int               `json:"port,omitempty"` // OpenAI HTTP port (0 = a free one)
	KVEventsPort int               `json:"kv_events_port,omitempty"`
	BlockSize    int               `json:"block_size,omitempty"` // KV block size in tokens (16)
	Binary       string            `json:"binary,omitempty"`     // vllm: "vllm"; sglang: "python3"; trtllm: "trtllm-serve"; sim: this executable; ollama: "ollama"; llamacpp: "llama-server"
	Args         []string          `json:"args,omitempty"`       // appended to the engine's command line
	Env          map[string]string `json:"env,omitempty"`
	NoKVEvents   bool              `json:"no_kv_events,omitempty"` // do not ask for KV events
	// SidecarPort is where a decode engine's P/D sidecar listens (0 = a free port); the
	// sidecar's address is the one registered for the engine. NoSidecar registers the
	// engine itself (another proxy does remote prefills). Ignored for other roles.
	SidecarPort int  `json:"sidecar_port,omitempty"`
	NoSidecar   bool `json:"no_sidecar,omitempty"`
	// NixlPort is a vLLM P/D engine's NIXL side-channel port (0 = a free port).
	NixlPort int `json:"nixl_port,omitempty"`
	// KV offloading below the GPU (docs/OFFLOAD.md): a host tier of CPUOffloadGiB and a disk
	// tier of DiskOffloadGiB at DiskOffloadPath; Offload picks vLLM's backend (native, the
	// default, or lmcache). SGLang runs HiCache, the simulator its modelled tiers.
	CPUOffloadGiB   float64 `json:"cpu_offload_gib,omitempty"`
	DiskOffloadPath string  `json:"disk_offload_path,omitempty"`
	DiskOffloadGiB  float64 `json:"disk_offload_gib,omitempty"`
	Offload         string  `json:"offload,omitempty"`
}

// LoadConfig reads a YAML (or JSON) config file, as ParseConfig.
func LoadConfig(path string) (Config, []string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return Config{}, nil, err
	}
	return ParseConfig(b)
}

// ParseConfig parses YAML (or JSON) by configfile's rule: snake_case keys, an unknown key is
// an error naming its line, and a camelCase key is still read with a deprecation warning
// (returned, one per key, for the caller to log).
func ParseConfig(b []byte) (Config, []string, error) {
	var c Config
	meta, err := configfile.Decode(b, &c, nil)
	if err != nil {
		return Config{}, nil, fmt.Errorf("workerd config: %w", err)
	}
	return c, meta.Warnings, c.Validate()
}

// Validate checks what can be checked without the machine: kinds, roles, names, ports.
func (c *Config) Validate() error {
	var errs []error
	names := map[string]bool{}
	ports := map[int]string{}
	for i := range c.Engines {
		e := &c.Engines[i]
		if e.Name == "" {
			e.Name = fmt.Sprintf("%s-%d", e.Kind, i)
		}
		where := fmt.Sprintf("engine %q", e.Name)
		switch e.Kind {
		case KindVLLM, KindSGLang, KindSim:
		case KindTRTLLM:
			if err := e.validateTRTLLM(); err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", where, err))
			}
		case KindOllama, KindLlamaCpp:
			if e.Role == discovery.RolePrefill || e.Role == discovery.RoleDecode {
				errs = append(errs, fmt.Errorf("%s: %s has no KV transfer: role %q is for vllm, sglang or sim", where, e.Kind, e.Role))
			}
		case "":
			errs = append(errs, fmt.Errorf("%s: kind missing (vllm, sglang, trtllm, sim, ollama or llamacpp)", where))
		default:
			errs = append(errs, fmt.Errorf("%s: unknown kind %q (vllm, sglang, trtllm, sim, ollama or llamacpp)", where, e.Kind))
		}
		if e.Model == "" && e.Kind != KindSim {
			errs = append(errs, fmt.Errorf("%s: model missing", where))
		}
		switch e.Role {
		case "", discovery.RoleAggregated, discovery.RolePrefill, discovery.RoleDecode:
		default:
			errs = append(errs, fmt.Errorf("%s: unknown role %q (aggregated, prefill or decode)", where, e.Role))
		}
		if names[e.Name] {
			errs = append(errs, fmt.Errorf("%s: name used twice", where))
		}
		names[e.Name] = true
		if e.GPUs < 0 || e.BlockSize < 0 {
			errs = append(errs, fmt.Errorf("%s: negative gpus or block_size", where))
		}
		if err := e.validateOffload(); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", where, err))
		}
		for _, p := range []int{e.Port, e.KVEventsPort, e.SidecarPort, e.NixlPort} {
			if p < 0 || p > 65535 {
				errs = append(errs, fmt.Errorf("%s: port %d out of range", where, p))
			} else if p != 0 {
				if other, ok := ports[p]; ok {
					errs = append(errs, fmt.Errorf("%s: port %d already used by %s", where, p, other))
				}
				ports[p] = e.Name
			}
		}
	}
	errs = append(errs, c.validateTemplates(names)...)
	if c.GPUs < 0 {
		errs = append(errs, fmt.Errorf("gpus: %d is negative", c.GPUs))
	}
	for _, a := range c.PrefillEndpoints {
		if h, p, err := net.SplitHostPort(a); err != nil || h == "" || p == "" {
			errs = append(errs, fmt.Errorf("prefill_endpoints: %q is not host:port", a))
		}
	}
	if c.Listen != "" {
		if _, _, err := net.SplitHostPort(c.Listen); err != nil {
			errs = append(errs, fmt.Errorf("listen %q: %w", c.Listen, err))
		}
	}
	return errors.Join(errs...)
}

// ParseEngineFlag parses the --engine flag: comma-separated key=value pairs with the keys of
// EngineSpec (kind, model, name, role, gpus, port, kv_events_port, block_size, binary,
// sidecar_port, nixl_port, no_sidecar=true, cpu_offload_gib, disk_offload_gib,
// disk_offload_path, offload), e.g. "kind=sim,model=Qwen/Qwen3-0.6B,port=8001".
func ParseEngineFlag(s string) (EngineSpec, error) {
	var e EngineSpec
	if strings.TrimSpace(s) == "" {
		return e, errors.New("empty --engine")
	}
	for kv := range strings.SplitSeq(s, ",") {
		k, v, ok := strings.Cut(kv, "=")
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		if !ok || k == "" {
			return EngineSpec{}, fmt.Errorf("--engine %q: %q is not key=value", s, kv)
		}
		num := func() (int, error) {
			n, err := strconv.Atoi(v)
			if err != nil || n < 0 {
				return 0, fmt.Errorf("--engine %q: %s=%q is not a non-negative integer", s, k, v)
			}
			return n, nil
		}
		var err error
		switch k {
		case "kind":
			e.Kind = v
		case "model":
			e.Model = v
		case "name":
			e.Name = v
		case "role":
			e.Role = v
		case "binary":
			e.Binary = v
		case "gpus":
			e.GPUs, err = num()
		case "port":
			e.Port, err = num()
		case "kv_events_port":
			e.KVEventsPort, err = num()
		case "block_size":
			e.BlockSize, err = num()
		case "sidecar_port":
			e.SidecarPort, err = num()
		case "nixl_port":
			e.NixlPort, err = num()
		case "cpu_offload_gib", "disk_offload_gib":
			g, perr := strconv.ParseFloat(v, 64)
			if perr != nil || g < 0 {
				err = fmt.Errorf("--engine %q: %s=%q is not a non-negative number of GiB", s, k, v)
			} else if k == "cpu_offload_gib" {
				e.CPUOffloadGiB = g
			} else {
				e.DiskOffloadGiB = g
			}
		case "disk_offload_path":
			e.DiskOffloadPath = v
		case "offload":
			e.Offload = v
		case "no_sidecar":
			e.NoSidecar, err = strconv.ParseBool(v)
			if err != nil {
				err = fmt.Errorf("--engine %q: no_sidecar=%q is not a boolean", s, v)
			}
		default:
			err = fmt.Errorf("--engine %q: unknown key %q", s, k)
		}
		if err != nil {
			return EngineSpec{}, err
		}
	}
	return e, nil
}
