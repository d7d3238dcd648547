package workerd

import (
	"errors"

	"github.com/spf13/pflag"

	"github.com/kvgate/kvgate/tlsconfig"
)

// DefaultListen is the relay's default gRPC address: loopback, so serving routers on other
// hosts is a choice (--listen 0.0.0.0:7070 with --tls-*).
const DefaultListen = "127.0.0.1:7070"

// Flags are kvgate workerd's command-line settings. Config merges them over the YAML file:
// a flag given on the command line wins over the file's field; engines from --engine are
// added to the file's.
type Flags struct {
	ConfigFile string
	Listen     string
	Advertise  string
	Node       string
	Host       string
	Consul     string
	NoConsul   bool
	Engines    []string // --engine values, key=value pairs (ParseEngineFlag)
	TLS        tlsconfig.Files
	SidecarTLS tlsconfig.Files
	Prefills   []string
	GPUs       int

	fs *pflag.FlagSet
}

// Register adds the flags to fs; Config reads which of them were given there.
func (f *Flags) Register(fs *pflag.FlagSet) {
	f.fs = fs
	fs.StringVar(&f.ConfigFile, "config", "", "YAML config file (docs/WORKERD.md); flags override its fields")
	fs.StringVar(&f.Listen, "listen", DefaultListen, "relay gRPC listen address")
	fs.StringVar(&f.Advertise, "advertise", "", "relay address written to Consul (default: the bound --listen address)")
	fs.StringVar(&f.Node, "node", "", "node name prefixed to engine instance names (default: hostname)")
	fs.StringVar(&f.Host, "host", "", "address engines listen on and are reached at (default 127.0.0.1)")
	fs.StringVar(&f.Consul, "consul", "", "Consul agent HTTP address; enables registration")
	fs.BoolVar(&f.NoConsul, "no-consul", false, "do not register in Consul even if the config says so")
	fs.StringArrayVar(&f.Engines, "engine", nil, "engine as key=value pairs: kind=sim|vllm|sglang|trtllm|ollama|llamacpp,model=M[,name=,role=,gpus=,port=,kv_events_port=,block_size=,binary=,cpu_offload_gib=,disk_offload_path=,disk_offload_gib=,offload=native|lmcache] (repeatable; docs/OFFLOAD.md, docs/OLLAMA.md)")
	f.TLS.AddServerFlags(fs, "", "the relay (gRPC)")
	f.SidecarTLS.AddServerFlags(fs, "sidecar-", "the P/D sidecars (HTTPS)")
	fs.IntVar(&f.GPUs, "gpus", 0, "GPUs this node has when NVML finds none (a virtual budget for sim templates; 0 = NVML's)")
	fs.StringSliceVar(&f.Prefills, "prefill", nil, "prefill engine (host:port) on another node the sidecars may use, besides this node's and Consul's (repeatable)")
}

// Config loads --config (when given) and applies the flags over it. It returns the
// deprecation warnings of the file (camelCase keys) beside the merged configuration.
func (f *Flags) Config() (Config, []string, error) {
	var (
		cfg      Config
		warnings []string
	)
	if f.ConfigFile != "" {
		var err error
		if cfg, warnings, err = LoadConfig(f.ConfigFile); err != nil {
			return Config{}, nil, err
		}
	}
	changed := func(name string) bool { return f.fs != nil && f.fs.Changed(name) }
	set := func(name string, dst *string, v string) {
		if changed(name) {
			*dst = v
		}
	}
	set("listen", &cfg.Listen, f.Listen)
	set("advertise", &cfg.Advertise, f.Advertise)
	set("node", &cfg.Node, f.Node)
	set("host", &cfg.Host, f.Host)
	if changed("gpus") {
		cfg.GPUs = f.GPUs
	}
	if cfg.Listen == "" {
		cfg.Listen = f.Listen
	}
	if cfg.Listen == "" {
		cfg.Listen = DefaultListen
	}
	if f.Consul != "" {
		if cfg.Consul == nil {
			cfg.Consul = &ConsulConfig{}
		}
		cfg.Consul.Address = f.Consul
	}
	if f.NoConsul {
		cfg.Consul = nil
	}
	if f.TLS.Enabled() {
		cfg.TLS = f.TLS
	}
	if f.SidecarTLS.Enabled() {
		cfg.SidecarTLS = f.SidecarTLS
	}
	cfg.PrefillEndpoints = append(cfg.PrefillEndpoints, f.Prefills...)
	for _, s := range f.Engines {
		e, err := ParseEngineFlag(s)
		if err != nil {
			return Config{}, nil, err
		}
		cfg.Engines = append(cfg.Engines, e)
	}
	if len(cfg.Engines) == 0 && len(cfg.Templates) == 0 {
		return Config{}, nil, errors.New("workerd: no engines: give --config (engines or templates) or --engine")
	}
	return cfg, warnings, nil
}
