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
}

// DefaultBlockSize is the KV block size assumed when a spec names none.
const DefaultBlockSize = 16

// freePort asks the kernel for a free loopback port. It is free when returned; an engine
// that binds it later may in rare cases lose a race, and then restarts on the same port.
func freePort(host string) (int, error) {
	l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// makePlans checks every spec against the machine (binaries, GPUs) and builds its command
// line. Every problem is reported, joined.
func makePlans(ctx context.Context, cfg Config, inv gpu.Inventory, simCmd []string) ([]plan, error) {
	host := cfg.Host
	if host == "" {
		host = "127.0.0.1"
	}
	var errs []error
	used := map[int]bool{}
	plans := make([]plan, 0, len(cfg.Engines))
	for _, s := range cfg.Engines {
		p := plan{spec: s, instance: s.Name, role: s.Role, blockSize: s.BlockSize}
		if cfg.Node != "" {
			p.instance = cfg.Node + "-" + s.Name
		}
		if p.role == "" {
			p.role = discovery.RoleAggregated
		}
		if p.blockSize == 0 {
			p.blockSize = DefaultBlockSize
		}
		p.models = s.ServedNames
		if len(p.models) == 0 && s.Model != "" {
			p.models = []string{s.Model}
		}
		where := fmt.Sprintf("engine %q (%s)", s.Name, s.Kind)

		want := s.GPUs
		if want == 0 && s.Kind != KindSim {
			want = 1 // vLLM and SGLang need a GPU
		}
		if want > 0 {
			idx, err := gpu.Assign(inv, want, used)
			if err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", where, err))
			}
			for _, i := range idx {
				used[i] = true
			}
			p.gpus = idx
			p.env = append(p.env, "CUDA_VISIBLE_DEVICES="+gpu.VisibleDevices(idx))
		}

		port := s.Port
		if port == 0 {
			var err error
			if port, err = freePort(host); err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", where, err))
			}
		}
		p.addr = net.JoinHostPort(host, strconv.Itoa(port))
		kvPort, replayPort := 0, 0
		if !s.NoKVEvents {
			kvPort = s.KVEventsPort
			if kvPort == 0 {
				var err error
				if kvPort, err = freePort(host); err != nil {
					errs = append(errs, fmt.Errorf("%s: %w", where, err))
				}
			}
			p.kvEvents = "tcp://" + net.JoinHostPort(host, strconv.Itoa(kvPort))
			var err error
			if replayPort, err = freePort(host); err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", where, err))
			}
			p.kvReplay = "tcp://" + net.JoinHostPort(host, strconv.Itoa(replayPort))
		}

		if p.role == discovery.RoleDecode && !s.NoSidecar {
			p.sidecar = net.JoinHostPort(host, strconv.Itoa(s.SidecarPort))
		}

		switch s.Kind {
		case KindVLLM:
			p.argv = vllm.Command(vllm.Options{
				Binary: s.Binary, Model: s.Model, ServedNames: s.ServedNames, Host: host, Port: port,
				BlockSize: p.blockSize, KVEventsPort: kvPort, ReplayPort: replayPort, Role: s.Role, Extra: s.Args,
			})
			if err := lookPath(p.argv[0]); err != nil {
				errs = append(errs, fmt.Errorf("%s: vLLM executable %q not found (%v): install vLLM or set binary", where, p.argv[0], err))
			}
			if vllm.Disaggregated(s.Role) {
				nixl := s.NixlPort
				if nixl == 0 {
					var err error
					if nixl, err = freePort(host); err != nil {
						errs = append(errs, fmt.Errorf("%s: %w", where, err))
					}
				}
				p.env = append(p.env, vllm.NixlEnv(s.Role, host, nixl)...)
			}
		case KindSGLang:
			served := ""
			if len(s.ServedNames) > 0 {
				served = s.ServedNames[0]
			}
			p.argv = sglang.Command(sglang.Options{
				Python: s.Binary, Model: s.Model, ServedName: served, Host: host, Port: port,
				PageSize: p.blockSize, KVEventsPort: kvPort, ReplayPort: replayPort, Role: s.Role, Extra: s.Args,
			})
			if err := lookPath(p.argv[0]); err != nil {
				errs = append(errs, fmt.Errorf("%s: python %q not found (%v): install SGLang or set binary", where, p.argv[0], err))
			} else if err := hasPythonModule(ctx, p.argv[0], "sglang"); err != nil {
				errs = append(errs, fmt.Errorf("%s: %v: install SGLang (pip install sglang) or set binary", where, err))
			}
		case KindSim:
			base := simCmd
			if s.Binary != "" {
				base = []string{s.Binary, "sim"}
			}
			if len(base) == 0 {
				errs = append(errs, fmt.Errorf("%s: no simulator command", where))
				break
			}
			p.argv = append(slices.Clone(base), SimArgs(host, port, s.Model, p.kvEvents, p.kvReplay, p.blockSize)...)
			p.argv = append(p.argv, s.Args...)
			if err := lookPath(p.argv[0]); err != nil {
				errs = append(errs, fmt.Errorf("%s: simulator %q not found: %v", where, p.argv[0], err))
			}
		}
		for _, k := range slices.Sorted(maps.Keys(s.Env)) {
			p.env = append(p.env, k+"="+s.Env[k])
		}
		plans = append(plans, p)
	}
	return plans, errors.Join(errs...)
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
