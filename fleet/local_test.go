package fleet

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/kvgate/kvgate/polltest"
	"github.com/kvgate/kvgate/router"
)

type fakeLocal struct {
	name    string
	busy    atomic.Int64
	stopped atomic.Bool
}

func (f *fakeLocal) Endpoint() router.Endpoint {
	return router.Endpoint{Name: f.name, Address: f.name + ":1"}
}
func (f *fakeLocal) Busy() int { return int(f.busy.Load()) }
func (f *fakeLocal) Stop()     { f.stopped.Store(true) }

// LocalNode: min engines at start, starts within the GPUs, a drain that leaves the router at
// once and stops the engine only when its requests are done, the minimum kept, Close.
func TestLocalNode(t *testing.T) {
	var mu sync.Mutex
	engines := map[string]*fakeLocal{}
	var published []router.Endpoint
	n, err := NewLocalNode(LocalNodeConfig{
		Name: "local", GPUs: 2, Template: "sim", Model: "m", Min: 1,
		Start: func(name string) (LocalEngine, error) {
			mu.Lock()
			defer mu.Unlock()
			e := &fakeLocal{name: name}
			engines[name] = e
			return e, nil
		},
		Publish: func(eps []router.Endpoint) { mu.Lock(); published = eps; mu.Unlock() },
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	st, _ := n.State(ctx)
	if len(st.GetEngines()) != 1 || st.GetGpusFree() != 1 || st.GetTemplates()[0].GetReplicas() != 1 {
		t.Fatalf("state %v", st)
	}
	if _, err := n.Start(ctx, "sim", 2); status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("start past the GPUs: %v", err)
	}
	names, err := n.Start(ctx, "sim", 1)
	if err != nil || len(names) != 1 || names[0] != "sim-1" {
		t.Fatalf("start: %v %v", names, err)
	}
	mu.Lock()
	if len(published) != 2 {
		t.Fatalf("published %v", published)
	}
	e1 := engines["sim-1"]
	mu.Unlock()
	e1.busy.Store(1)
	if err := n.Drain(ctx, []string{"sim-1"}, time.Minute); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	if len(published) != 1 || published[0].Name != "sim-0" {
		t.Fatalf("published while draining: %v", published)
	}
	mu.Unlock()
	if st, _ := n.State(ctx); st.GetEngines()[1].GetState() != stateDraining || e1.stopped.Load() {
		t.Fatalf("draining engine: %v, stopped %v", st.GetEngines()[1], e1.stopped.Load())
	}
	if err := n.Drain(ctx, []string{"sim-0"}, 0); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("drain below the minimum: %v", err)
	}
	e1.busy.Store(0)
	polltest.Until(t, 10*time.Second, "the drained engine stopped", func() bool {
		st, _ := n.State(ctx)
		return e1.stopped.Load() && len(st.GetEngines()) == 1
	})
	n.Close()
	if !engines["sim-0"].stopped.Load() {
		t.Fatal("Close left an engine running")
	}
}
