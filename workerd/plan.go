package workerd

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"time"

	"github.com/kvgate/kvgate/discovery"
	"github.com/kvgate/kvgate/engine/sglang"
	"github.com/kvgate/kvgate/engine/vllm"
	"github.com/kvgate/kvgate/gpu"
	"github.com/kvgate/kvgate/tokenizer"
)

// plan is one engine ready to start: its command line, environment and addresses.
type plan struct {
	spec      EngineSpec
	instance  string   // Consul service ID and relay engine name: "<node>-<name>"
	argv      []string // argv[0] is a path or a PATH name
	env       []string // added to workerd's environment
	gpus      []int
	addr      string // host:port of the OpenAI server
	kvEvents  string // ZMQ endpoint workerd subscribes to, "" = none
	kvReplay  string // ZMQ replay endpoint that fills gaps, "" = none
	blockSize int
	role      string
	models    []string
	sidecar   string // host:port of the decode engine's P/D sidecar (port 0: any), "" = none
	health    string // path of the engine's health check ("/health")

	// files are written before the engine starts (trtllm-serve's LLM API options).
	files []planFile
}

// ports hands out free loopback ports for one New: each stays bound until release, so two
// picks (an engine's HTTP, KV-event, replay and NIXL ports, and every engine's) are never the
// same port. Released, a port is free; an engine that binds it later may in rare cases lose a
// race to another process, and then restarts on the same port.
type ports struct {
	host string
	held []net.Listener
}

func (p *ports) pick() (int, error) {
	l, err := net.Listen("tcp", net.JoinHostPort(p.host, "0"))
	if err != nil {
		return 0, err
	}
	p.held = append(p.held, l)
	return l.Addr().(*net.TCPAddr).Port, nil
}

// or returns want when it is set, else a free port.
func (p *ports) or(want int) (int, error) {
	if want != 0 {
		return want, nil
	}
	return p.pick()
}

func (p *ports) release() {
	for _, l := range p.held {
		l.Close()
	}
	p.held = nil
}

// makePlans checks every spec against the machine (binaries, GPUs) and builds its command
// line. Every problem is reported, joined.
// used holds the GPUs already taken and gets the new plans' GPUs.
func makePlans(ctx context.Context, cfg Config, specs []EngineSpec, inv gpu.Inventory, used map[int]bool, simCmd []string) ([]plan, error) {
	host := cfg.Host
	if host == "" {
		host = "127.0.0.1"
	}
	free := &ports{host: host}
	defer free.release()
	var errs []error
	plans := make([]plan, 0, len(specs))
	for _, s := range specs {
		p := newPlan(cfg.Node, s)
		where := fmt.Sprintf("engine %q (%s)", s.Name, s.Kind)
		fail := func(err error) { errs = append(errs, fmt.Errorf("%s: %w", where, err)) }
		if err := p.assignGPUs(inv, used); err != nil {
			fail(err)
		}
		ep, err := p.assignAddresses(host, free)
		if err != nil {
			fail(err)
		}
		for _, err := range p.command(ctx, host, ep, simCmd, free) {
			fail(err)
		}
		for _, k := range slices.Sorted(maps.Keys(s.Env)) {
			p.env = append(p.env, k+"="+s.Env[k])
		}
		plans = append(plans, p)
	}
	return plans, errors.Join(errs...)
}

// newPlan is the engine's identity: instance name, role, block size and served models.
func newPlan(node string, s EngineSpec) plan {
	p := plan{spec: s, instance: s.Name, role: s.Role, blockSize: s.BlockSize, models: s.ServedNames, health: healthPathDefault}
	if s.Kind == KindOllama {
		p.health = healthPathOllama
	}
	if node != "" {
		p.instance = node + "-" + s.Name
	}
	if p.role == "" {
		p.role = discovery.RoleAggregated
	}
	if p.blockSize == 0 {
		p.blockSize = tokenizer.DefaultBlockSize
	}
	if len(p.models) == 0 && s.Model != "" {
		p.models = []string{s.Model}
	}
	return p
}

// assignGPUs takes the GPUs the engine needs from those not yet used (vLLM and SGLang need
// at least one) and sets CUDA_VISIBLE_DEVICES.
func (p *plan) assignGPUs(inv gpu.Inventory, used map[int]bool) error {
	want := p.spec.GPUs
	if want == 0 && !cpuKind(p.spec.Kind) {
		want = 1
	}
	if want == 0 {
		return nil
	}
	idx, err := gpu.Assign(inv, want, used)
	for _, i := range idx {
		used[i] = true
	}
	p.gpus = idx
	p.env = append(p.env, "CUDA_VISIBLE_DEVICES="+gpu.VisibleDevices(idx))
	return err
}

// enginePorts are the ports an engine's command line names.
type enginePorts struct{ http, kvEvents, replay int }

// assignAddresses fixes the engine's HTTP address, its KV-event and replay endpoints (unless
// it publishes none) and its sidecar's address, taking free ports where the spec names none.
func (p *plan) assignAddresses(host string, free *ports) (enginePorts, error) {
	s := p.spec
	var ep enginePorts
	var errs []error
	var err error
	if ep.http, err = free.or(s.Port); err != nil {
		errs = append(errs, err)
	}
	p.addr = net.JoinHostPort(host, strconv.Itoa(ep.http))
	if !s.NoKVEvents && s.Kind == KindTRTLLM {
		// trtllm-serve serves its KV-cache events on its HTTP port (workerd/trtllm.go).
		p.kvEvents = trtllmEvents(p.addr)
	} else if !s.NoKVEvents && !eventlessKind(s.Kind) {
		if ep.kvEvents, err = free.or(s.KVEventsPort); err != nil {
			errs = append(errs, err)
		}
		if ep.replay, err = free.pick(); err != nil {
			errs = append(errs, err)
		}
		p.kvEvents = "tcp://" + net.JoinHostPort(host, strconv.Itoa(ep.kvEvents))
		p.kvReplay = "tcp://" + net.JoinHostPort(host, strconv.Itoa(ep.replay))
	}
	if p.role == discovery.RoleDecode && !s.NoSidecar {
		p.sidecar = net.JoinHostPort(host, strconv.Itoa(s.SidecarPort))
	}
	return ep, errors.Join(errs...)
}

// command builds the engine's argv (and a P/D engine's NIXL environment) for its kind and
// checks that the binary is there.
func (p *plan) command(ctx context.Context, host string, ep enginePorts, simCmd []string, free *ports) []error {
	s := p.spec
	var errs []error
	switch s.Kind {
	case KindVLLM:
		p.argv = vllm.Command(vllm.Options{
			Binary: s.Binary, Model: s.Model, ServedNames: s.ServedNames, Host: host, Port: ep.http,
			BlockSize: p.blockSize, KVEventsPort: ep.kvEvents, ReplayPort: ep.replay, Role: s.Role, Extra: s.Args,
			Offload: s.vllmOffload(),
		})
		p.env = append(p.env, vllm.OffloadEnv(s.vllmOffload())...)
		if err := lookPath(p.argv[0]); err != nil {
			errs = append(errs, fmt.Errorf("vLLM executable %q not found (%v): install vLLM or set binary", p.argv[0], err))
		}
		if vllm.Disaggregated(s.Role) {
			nixl, err := free.or(s.NixlPort)
			if err != nil {
				errs = append(errs, err)
			}
			p.env = append(p.env, vllm.NixlEnv(s.Role, host, nixl)...)
		}
	case KindSGLang:
		served := ""
		if len(s.ServedNames) > 0 {
			served = s.ServedNames[0]
		}
		p.argv = sglang.Command(sglang.Options{
			Python: s.Binary, Model: s.Model, ServedName: served, Host: host, Port: ep.http,
			PageSize: p.blockSize, KVEventsPort: ep.kvEvents, ReplayPort: ep.replay, Role: s.Role, Extra: s.Args,
			HiCache: s.hiCache(),
		})
		p.env = append(p.env, s.hiCache().Env()...)
		if err := lookPath(p.argv[0]); err != nil {
			errs = append(errs, fmt.Errorf("python %q not found (%v): install SGLang or set binary", p.argv[0], err))
		} else if err := hasPythonModule(ctx, p.argv[0], "sglang"); err != nil {
			errs = append(errs, fmt.Errorf("%v: install SGLang (pip install sglang) or set binary", err))
		}
	case KindOllama, KindLlamaCpp:
		errs = append(errs, p.llamaCommand(host, ep.http)...)
	case KindTRTLLM:
		errs = append(errs, p.trtllmCommand(host, ep)...)
	case KindSim:
		base := simCmd
		if s.Binary != "" {
			base = []string{s.Binary, "sim"}
		}
		if len(base) == 0 {
			return append(errs, errors.New("no simulator command"))
		}
		p.argv = append(slices.Clone(base), SimArgs(host, ep.http, s.Model, p.kvEvents, p.kvReplay, p.blockSize)...)
		p.argv = append(p.argv, simOffloadArgs(s)...)
		p.argv = append(p.argv, s.Args...)
		if err := lookPath(p.argv[0]); err != nil {
			errs = append(errs, fmt.Errorf("simulator %q not found: %v", p.argv[0], err))
		}
	}
	return errs
}

// SimArgs are the `kvgate sim` flags workerd passes to a simulated engine: listen on
// host:port, publish KV events on kvEvents ("" turns them off) with a replay socket on replay
// ("" none), blocks of blockSize tokens.
func SimArgs(host string, port int, model, kvEvents, replay string, blockSize int) []string {
	args := []string{"--host", host, "--port", strconv.Itoa(port), "--kv-events", kvEvents, "--kv-events-replay", replay}
	if model != "" {
		args = append(args, "--model", model)
	}
	if blockSize > 0 {
		args = append(args, "--block-size", strconv.Itoa(blockSize))
	}
	return args
}

func lookPath(bin string) error {
	if bin == "" {
		return errors.New("empty")
	}
	_, err := exec.LookPath(bin)
	return err
}

func hasPythonModule(ctx context.Context, python, module string) error {
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, python, "-c",
		"import importlib.util,sys; sys.exit(0 if importlib.util.find_spec(sys.argv[1]) else 3)", module)
	cmd.Env = os.Environ()
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("python module %q not importable with %s (%v)", module, python, err)
	}
	return nil
}
