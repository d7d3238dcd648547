package fleet

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	fleetv1 "github.com/kvgate/kvgate/api/fleet/v1"
	"github.com/kvgate/kvgate/router"
)

// LocalEngine is an engine a LocalNode runs in-process (kvgate up's simulators).
type LocalEngine interface {
	Endpoint() router.Endpoint
	Busy() int // requests running or waiting
	Stop()     // stops it and waits until it has
}

// LocalNodeConfig is one in-process node with a virtual GPU count and one template.
type LocalNodeConfig struct {
	Name       string
	GPUs       int // virtual GPUs; each engine holds one
	Template   string
	Model      string
	Role       string // aggregated when empty
	Min, Max   int    // replicas; Max 0 = GPUs
	DrainLimit time.Duration
	// Start makes engine name; Publish receives the serving engines' endpoints whenever they
	// change (the router's SetEndpoints). Both are called with no lock of the node held.
	Start   func(name string) (LocalEngine, error)
	Publish func([]router.Endpoint)
	Log     *slog.Logger
}

// LocalNode is a Node whose engines run in this process. It is safe for concurrent use.
type LocalNode struct {
	cfg LocalNodeConfig
	log *slog.Logger
	wg  sync.WaitGroup

	mu      sync.Mutex
	engines []*localEngine
	next    int
	closed  bool
}

type localEngine struct {
	name     string
	e        LocalEngine
	draining bool
}

var _ Node = (*LocalNode)(nil)

// NewLocalNode starts the template's Min engines and returns the node; Endpoints lists them.
func NewLocalNode(cfg LocalNodeConfig) (*LocalNode, error) {
	if cfg.Start == nil || cfg.Publish == nil || cfg.GPUs < 1 {
		return nil, errors.New("fleet: a local node needs Start, Publish and at least one GPU")
	}
	if cfg.Max == 0 || cfg.Max > cfg.GPUs {
		cfg.Max = cfg.GPUs
	}
	if cfg.Role == "" {
		cfg.Role = string(router.RoleAggregated)
	}
	if cfg.DrainLimit <= 0 {
		cfg.DrainLimit = 30 * time.Second
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	n := &LocalNode{cfg: cfg, log: cfg.Log.With("component", "local-node")}
	if cfg.Min > 0 {
		if _, err := n.start(cfg.Min, false); err != nil {
			n.Close()
			return nil, err
		}
	}
	return n, nil
}

// Name is the node's name.
func (n *LocalNode) Name() string { return n.cfg.Name }

// Endpoints are the serving (not draining) engines' endpoints.
func (n *LocalNode) Endpoints() []router.Endpoint {
	n.mu.Lock()
	defer n.mu.Unlock()
	var out []router.Endpoint
	for _, e := range n.engines {
		if !e.draining {
			out = append(out, e.e.Endpoint())
		}
	}
	return out
}

// State reports the node like a workerd's Node call.
func (n *LocalNode) State(context.Context) (*fleetv1.NodeResponse, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	reps := 0
	resp := &fleetv1.NodeResponse{Node: n.cfg.Name, GpusTotal: int32(n.cfg.GPUs), GpusFree: int32(n.cfg.GPUs - len(n.engines))}
	for i, e := range n.engines {
		state := stateRunning
		if e.draining {
			state = stateDraining
		} else {
			reps++
		}
		ep := e.e.Endpoint()
		resp.Engines = append(resp.Engines, &fleetv1.Engine{Name: e.name, Template: n.cfg.Template, Kind: "sim", Models: ep.Models,
			Role: n.cfg.Role, Address: ep.Address, State: state, Gpus: []int32{int32(i)}, Running: uint32(e.e.Busy())})
	}
	resp.Templates = []*fleetv1.Template{{Name: n.cfg.Template, Kind: "sim", Model: n.cfg.Model, Role: n.cfg.Role, GpusPerEngine: 1,
		MinReplicas: int32(n.cfg.Min), MaxReplicas: int32(n.cfg.Max), Replicas: int32(reps)}}
	return resp, nil
}

// Start starts count engines of the node's template.
func (n *LocalNode) Start(_ context.Context, template string, count int) ([]string, error) {
	if template != n.cfg.Template {
		return nil, status.Errorf(codes.NotFound, "no template %q", template)
	}
	return n.start(count, true)
}

func (n *LocalNode) start(count int, publish bool) ([]string, error) {
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		return nil, status.Error(codes.Unavailable, "node closed")
	}
	if count < 1 || len(n.engines)+count > n.cfg.GPUs || n.replicasLocked()+count > n.cfg.Max {
		n.mu.Unlock()
		return nil, status.Errorf(codes.ResourceExhausted, "%d more engine(s) do not fit: %d of %d GPUs held, max %d", count, len(n.engines), n.cfg.GPUs, n.cfg.Max)
	}
	names := make([]string, count)
	for i := range names {
		names[i] = n.cfg.Template + "-" + strconv.Itoa(n.next)
		n.next++
	}
	n.mu.Unlock()
	var started []string
	for _, name := range names {
		e, err := n.cfg.Start(name)
		if err != nil {
			return started, status.Errorf(codes.Internal, "engine %s: %v", name, err)
		}
		n.mu.Lock()
		n.engines = append(n.engines, &localEngine{name: name, e: e})
		n.mu.Unlock()
		started = append(started, name)
		n.log.Info("engine started", "engine", name, "addr", e.Endpoint().Address)
	}
	if publish {
		n.cfg.Publish(n.Endpoints())
	}
	return started, nil
}

func (n *LocalNode) replicasLocked() int {
	k := 0
	for _, e := range n.engines {
		if !e.draining {
			k++
		}
	}
	return k
}

// Drain takes the engines out of the router, waits for their requests (at most timeout,
// 0: DrainLimit) and stops them, in the background.
func (n *LocalNode) Drain(_ context.Context, names []string, timeout time.Duration) error {
	if timeout <= 0 {
		timeout = n.cfg.DrainLimit
	}
	n.mu.Lock()
	var victims []*localEngine
	for _, name := range names {
		i := slices.IndexFunc(n.engines, func(e *localEngine) bool { return e.name == name })
		if i < 0 {
			n.mu.Unlock()
			return status.Errorf(codes.NotFound, "no engine %q", name)
		}
		if !n.engines[i].draining {
			victims = append(victims, n.engines[i])
		}
	}
	if n.replicasLocked()-len(victims) < n.cfg.Min {
		n.mu.Unlock()
		return status.Errorf(codes.FailedPrecondition, "draining %d would pass min_replicas %d", len(victims), n.cfg.Min)
	}
	for _, e := range victims {
		e.draining = true
	}
	n.mu.Unlock()
	n.cfg.Publish(n.Endpoints())
	for _, e := range victims {
		n.wg.Go(func() { n.drain(e, timeout) })
	}
	return nil
}

func (n *LocalNode) drain(e *localEngine, timeout time.Duration) {
	deadline := time.Now().Add(timeout)
	for e.e.Busy() > 0 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if b := e.e.Busy(); b > 0 {
		n.log.Warn("drain timeout; stopping the engine with requests in flight", "engine", e.name, "requests", b)
	}
	e.e.Stop()
	n.mu.Lock()
	n.engines = slices.DeleteFunc(n.engines, func(x *localEngine) bool { return x == e })
	n.mu.Unlock()
	n.log.Info("engine drained and stopped", "engine", e.name)
}

// Close stops every engine (draining ones after their drain) and waits.
func (n *LocalNode) Close() {
	n.mu.Lock()
	n.closed = true
	n.mu.Unlock()
	n.wg.Wait()
	n.mu.Lock()
	engines := n.engines
	n.engines = nil
	n.mu.Unlock()
	for _, e := range engines {
		e.e.Stop()
	}
}

// String names the node in logs.
func (n *LocalNode) String() string { return fmt.Sprintf("local node %s", n.cfg.Name) }
