package kube_test

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/kvgate/kvgate/discovery"
	"github.com/kvgate/kvgate/discovery/kube"
	"github.com/kvgate/kvgate/kubetest"
	"github.com/kvgate/kvgate/polltest"
	"github.com/kvgate/kvgate/tlsconfig"
	"github.com/kvgate/kvgate/tlsconfig/tlsconfigtest"
)

// cluster is the API the tests change objects through: kubetest's in-memory server (fake), or
// a real kube-apiserver (kubetest/apiserver). A method that cannot make the change fails t.
type cluster interface {
	SetPod(t testing.TB, p kubetest.Pod)
	DeletePod(t testing.TB, namespace, name string) bool
	SetInferencePool(t testing.TB, p kubetest.InferencePool)
	DeleteInferencePool(t testing.TB, namespace, name string) bool
}

// fake is kubetest's server as a cluster: its changes cannot fail.
type fake struct{ s *kubetest.Server }

func (f fake) SetPod(_ testing.TB, p kubetest.Pod) { f.s.SetPod(p) }
func (f fake) DeletePod(_ testing.TB, namespace, name string) bool {
	return f.s.DeletePod(namespace, name)
}
func (f fake) SetInferencePool(_ testing.TB, p kubetest.InferencePool) { f.s.SetInferencePool(p) }
func (f fake) DeleteInferencePool(_ testing.TB, namespace, name string) bool {
	return f.s.DeleteInferencePool(namespace, name)
}

var _ cluster = fake{}

// syncBuffer is a log sink safe for the informers' goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func startKubetest(t *testing.T, tls bool) (*kubetest.Server, string) {
	t.Helper()
	s := kubetest.New()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	var server, client tlsconfig.Files
	if tls {
		ca := tlsconfigtest.New(t)
		server, client = ca.Server, ca.Client
	}
	if err := s.Start(ctx, server); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	kc, err := s.WriteKubeconfig(t.TempDir(), client)
	if err != nil {
		t.Fatal(err)
	}
	return s, kc
}

// watcher follows a Source and keeps the latest set it sent.
type watcher struct {
	mu     sync.Mutex
	latest []discovery.Endpoint
	sets   int
	src    *kube.Source
}

func watch(t *testing.T, cfg kube.Config, log *slog.Logger) *watcher {
	t.Helper()
	src, err := kube.New(cfg, log)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	w := &watcher{src: src}
	ch := src.Watch(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for eps := range ch {
			w.mu.Lock()
			w.latest, w.sets = eps, w.sets+1
			w.mu.Unlock()
		}
	}()
	t.Cleanup(func() { cancel(); <-done })
	return w
}

// until waits for a set that passes cond, failing with the last set seen.
func (w *watcher) until(t *testing.T, what string, cond func([]discovery.Endpoint) bool) []discovery.Endpoint {
	t.Helper()
	var (
		eps []discovery.Endpoint
		n   int
	)
	if !polltest.Wait(20*time.Second, func() bool {
		w.mu.Lock()
		eps, n = w.latest, w.sets
		w.mu.Unlock()
		return n > 0 && cond(eps)
	}) {
		t.Fatalf("timed out waiting for %s; last set (%d sent): %s", what, n, describe(eps))
	}
	return eps
}

func describe(eps []discovery.Endpoint) string {
	var parts []string
	for _, e := range eps {
		parts = append(parts, fmt.Sprintf("%s@%s healthy=%v role=%s models=%v kv=%s", e.Name, e.Address, e.Healthy, e.Role, e.Models, e.KVEvents))
	}
	return "[" + strings.Join(parts, "; ") + "]"
}

// healthy returns the addresses of the healthy endpoints, in order.
func healthy(eps []discovery.Endpoint) string {
	var out []string
	for _, e := range eps {
		if e.Healthy {
			out = append(out, e.Address)
		}
	}
	return strings.Join(out, ",")
}

func engine(name, ip string, lbl map[string]string) kubetest.Pod {
	return kubetest.Pod{Namespace: "llm", Name: name, IP: ip, Labels: lbl}
}

// testDiscovery is the suite every API (kubetest, a real kube-apiserver) passes.
func testDiscovery(t *testing.T, c cluster, kubeconfig string) {
	app := map[string]string{"app": "engine"}
	c.SetPod(t, engine("a", "127.0.0.11", app))
	c.SetPod(t, engine("b", "127.0.0.12", map[string]string{"app": "engine", "llm-d.ai/role": "decode"}))
	c.SetPod(t, engine("other", "127.0.0.13", map[string]string{"app": "other"}))
	log := &syncBuffer{}
	w := watch(t, kube.Config{Kubeconfig: kubeconfig, PoolName: "pool", PoolNamespace: "llm", Models: []string{"m"}, KVEventsPort: 5557},
		slog.New(slog.NewTextHandler(log, nil)))

	t.Run("no pool is an empty set, and a warning", func(t *testing.T) {
		select {
		case <-w.src.Synced():
		case <-time.After(20 * time.Second):
			t.Fatal("informers never synced")
		}
		w.until(t, "an empty set", func(eps []discovery.Endpoint) bool { return len(eps) == 0 })
		if !strings.Contains(log.String(), "InferencePool not found") {
			t.Fatalf("no warning about the missing pool in:\n%s", log)
		}
	})
	t.Run("the pool's ready Pods, one endpoint each", func(t *testing.T) {
		c.SetInferencePool(t, kubetest.InferencePool{Namespace: "llm", Name: "pool", Selector: app, TargetPorts: []int{8000}, EPPName: "epp", EPPPort: 9002})
		eps := w.until(t, "a and b", func(eps []discovery.Endpoint) bool { return healthy(eps) == "127.0.0.11:8000,127.0.0.12:8000" })
		a, b := eps[0], eps[1]
		if a.Name != "llm/a" || a.Role != discovery.RoleAggregated || a.KVEvents != "tcp://127.0.0.11:5557" || a.Models[0] != "m" ||
			a.Meta[kube.MetaPod] != "a" || a.Meta[kube.MetaPool] != "pool" {
			t.Fatalf("a: %+v", a)
		}
		if b.Name != "llm/b" || b.Role != discovery.RoleDecode {
			t.Fatalf("b: %+v", b)
		}
	})
	t.Run("a Pod that goes unready is unhealthy, one deleted leaves", func(t *testing.T) {
		p := engine("a", "127.0.0.11", app)
		p.NotReady = true
		c.SetPod(t, p)
		eps := w.until(t, "a unready", func(eps []discovery.Endpoint) bool { return healthy(eps) == "127.0.0.12:8000" })
		if len(eps) != 2 || eps[0].Name != "llm/a" || eps[0].Healthy {
			t.Fatalf("a should be listed unhealthy: %s", describe(eps))
		}
		c.DeletePod(t, "llm", "b")
		w.until(t, "b gone", func(eps []discovery.Endpoint) bool { return len(eps) == 1 && eps[0].Name == "llm/a" })
		c.SetPod(t, engine("a", "127.0.0.11", app))
		w.until(t, "a ready again", func(eps []discovery.Endpoint) bool { return healthy(eps) == "127.0.0.11:8000" })
	})
	t.Run("annotations name models, events and block size", func(t *testing.T) {
		p := engine("c", "127.0.0.14", map[string]string{"app": "engine", "llm-d.ai/role": "prefill"})
		p.Annotations = map[string]string{kube.AnnotationModels: "Qwen/Qwen3-8B, lora-a", kube.AnnotationKVEventsPort: "6000",
			kube.AnnotationBlockSize: "32", kube.AnnotationWorkerd: "7070"}
		c.SetPod(t, p)
		eps := w.until(t, "c", func(eps []discovery.Endpoint) bool { return healthy(eps) == "127.0.0.11:8000,127.0.0.14:8000" })
		got := eps[1]
		if got.Role != discovery.RolePrefill || strings.Join(got.Models, ",") != "Qwen/Qwen3-8B,lora-a" ||
			got.KVEvents != "tcp://127.0.0.14:6000" || got.BlockSize != 32 || got.Workerd != "127.0.0.14:7070" {
			t.Fatalf("c: %+v", got)
		}
		c.DeletePod(t, "llm", "c")
		w.until(t, "c gone", func(eps []discovery.Endpoint) bool { return healthy(eps) == "127.0.0.11:8000" })
	})
	t.Run("a terminating Pod leaves before it is gone", func(t *testing.T) {
		c.SetPod(t, engine("d", "127.0.0.15", app))
		w.until(t, "d", func(eps []discovery.Endpoint) bool { return healthy(eps) == "127.0.0.11:8000,127.0.0.15:8000" })
		p := engine("d", "127.0.0.15", app)
		p.Deleting = true
		c.SetPod(t, p)
		w.until(t, "d out", func(eps []discovery.Endpoint) bool { return len(eps) == 1 && healthy(eps) == "127.0.0.11:8000" })
		if !c.DeletePod(t, "llm", "d") {
			t.Fatal("d was gone before DeletePod: it should have stayed, terminating")
		}
	})
	t.Run("a selector change moves the set", func(t *testing.T) {
		c.SetInferencePool(t, kubetest.InferencePool{Namespace: "llm", Name: "pool", Selector: map[string]string{"app": "other"},
			TargetPorts: []int{8000}, EPPName: "epp", EPPPort: 9002})
		w.until(t, "other only", func(eps []discovery.Endpoint) bool { return healthy(eps) == "127.0.0.13:8000" })
	})
	t.Run("several target ports are one endpoint each, events offset per port", func(t *testing.T) {
		c.SetInferencePool(t, kubetest.InferencePool{Namespace: "llm", Name: "pool", Selector: map[string]string{"app": "other"},
			TargetPorts: []int{8000, 8001}, EPPName: "epp", EPPPort: 9002, AppProtocol: "http"})
		eps := w.until(t, "two ports", func(eps []discovery.Endpoint) bool { return healthy(eps) == "127.0.0.13:8000,127.0.0.13:8001" })
		if eps[0].Name != "llm/other:8000" || eps[1].KVEvents != "tcp://127.0.0.13:5558" || eps[1].Meta[kube.MetaAppProtocol] != "http" {
			t.Fatalf("%s", describe(eps))
		}
	})
	t.Run("the pool deleted empties the set", func(t *testing.T) {
		c.DeleteInferencePool(t, "llm", "pool")
		w.until(t, "an empty set", func(eps []discovery.Endpoint) bool { return len(eps) == 0 })
	})
}

// noLeaks checks, after every cleanup of t, that nothing the test started still runs. client-go
// keeps its transports (and their idle connections) in a process-wide cache, so those are
// not counted. A cached transport with client-certificate files also runs a certificate
// reloader that client-go stops only when the garbage collector finds the transport
// unreachable: collect first, or the reloader of a transport the test dropped counts (a CI
// run saw it, on a machine too busy for a collection during goleak's retries).
func noLeaks(t *testing.T) {
	ignore := goleak.IgnoreCurrent()
	t.Cleanup(func() {
		runtime.GC()
		goleak.VerifyNone(t, ignore, goleak.IgnoreTopFunction("net/http.(*persistConn).readLoop"),
			goleak.IgnoreTopFunction("net/http.(*persistConn).writeLoop"))
	})
}

func TestKubetest(t *testing.T) {
	noLeaks(t)
	s, kc := startKubetest(t, true)
	testDiscovery(t, fake{s}, kc)
}

// TestForbidden: an API that refuses the Pods (RBAC) leaves the source unsynced, and the log
// says which resource and namespace need which verbs; once allowed, it syncs.
func TestForbidden(t *testing.T) {
	noLeaks(t)
	s, kc := startKubetest(t, false)
	s.Forbid("pods")
	log := &syncBuffer{}
	w := watch(t, kube.Config{Kubeconfig: kc, PoolName: "pool", PoolNamespace: "llm", Models: []string{"m"}},
		slog.New(slog.NewTextHandler(log, nil)))
	if !polltest.Wait(20*time.Second, func() bool { return strings.Contains(log.String(), "forbidden by RBAC") }) {
		t.Fatalf("no RBAC error logged:\n%s", log)
	}
	if l := log.String(); !strings.Contains(l, "get, list and watch on pods in namespace llm") {
		t.Fatalf("the error does not say what to grant:\n%s", l)
	}
	select {
	case <-w.src.Synced():
		t.Fatal("synced although the Pods cannot be listed")
	default:
	}
	s.Allow("pods")
	select {
	case <-w.src.Synced():
	case <-time.After(30 * time.Second):
		t.Fatal("never synced once allowed")
	}
}

func TestConfigErrors(t *testing.T) {
	_, kc := startKubetest(t, false)
	for _, tc := range []struct {
		name string
		cfg  kube.Config
		want string
	}{
		{"no pool", kube.Config{Kubeconfig: kc}, "--pool-name"},
		{"bad group", kube.Config{Kubeconfig: kc, PoolName: "p", PoolGroup: "example.com"}, "pool group"},
		{"bad port", kube.Config{Kubeconfig: kc, PoolName: "p", KVEventsPort: 70000}, "out of range"},
		{"no kubeconfig", kube.Config{Kubeconfig: "/nonexistent/kubeconfig", PoolName: "p"}, "kubeconfig"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := kube.New(tc.cfg, slog.New(slog.DiscardHandler))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want it to mention %q", err, tc.want)
			}
		})
	}
}
