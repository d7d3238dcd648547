package discovery_test

import (
	"context"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kvgate/kvgate/discovery"
	"github.com/kvgate/kvgate/discovery/consultest"
	"github.com/kvgate/kvgate/polltest"
)

// engine is an HTTP server whose /health answers 200 or 503 on demand.
type engine struct {
	srv     *httptest.Server
	healthy atomic.Bool
}

func newEngine(t *testing.T) *engine {
	e := &engine{}
	e.healthy.Store(true)
	e.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/health" && e.healthy.Load() {
			w.WriteHeader(http.StatusOK)
			return
		}
		w.WriteHeader(http.StatusServiceUnavailable)
	}))
	t.Cleanup(e.srv.Close)
	return e
}

func (e *engine) addr() string { return strings.TrimPrefix(e.srv.URL, "http://") }

func newConsul(t *testing.T, addr string, wait time.Duration) *discovery.Consul {
	t.Helper()
	c, err := discovery.NewConsul(discovery.ConsulConfig{
		Address: addr, WaitTime: wait, MinBackoff: 50 * time.Millisecond, MaxBackoff: 500 * time.Millisecond,
	}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// until reads sets until ok accepts one, or fails after d.
func until(t *testing.T, ch <-chan []discovery.Endpoint, d time.Duration, what string, ok func([]discovery.Endpoint) bool) []discovery.Endpoint {
	t.Helper()
	deadline := time.After(d)
	for {
		select {
		case eps, open := <-ch:
			if !open {
				t.Fatalf("watch closed while waiting for %s", what)
			}
			if ok(eps) {
				return eps
			}
		case <-deadline:
			t.Fatalf("no set with %s within %v", what, d)
		}
	}
}

func TestConsulRegisterWatchHealthDeregister(t *testing.T) {
	agent := consultest.Start(t)
	eng := newEngine(t)
	// A short wait makes the watch re-query often, so "no set while nothing changes" is
	// checked against many answers.
	c := newConsul(t, agent.Addr, 200*time.Millisecond)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	ch := c.Watch(ctx)
	if first := recv(t, ch, 10*time.Second); len(first) != 0 {
		t.Fatalf("first set = %+v, want empty", first)
	}

	reg := discovery.Registration{
		Endpoint: discovery.Endpoint{
			Name: "node1-engine0", Address: eng.addr(), Models: []string{"Qwen/Qwen3-0.6B", "alias"},
			Role: discovery.RoleDecode, BlockSize: 16, KVEvents: "tcp://127.0.0.1:5557", KVReplay: "tcp://127.0.0.1:5558",
			Workerd: "127.0.0.1:7000", Meta: map[string]string{"zone": "a"},
		},
		Kind:          "sim",
		CheckInterval: time.Second,
	}
	if err := c.Register(ctx, reg); err != nil {
		t.Fatal(err)
	}
	eps := until(t, ch, 60*time.Second, "a healthy instance", func(eps []discovery.Endpoint) bool {
		return len(eps) == 1 && eps[0].Healthy
	})
	got := eps[0]
	if got.Name != "node1-engine0" || got.Address != eng.addr() || got.Role != discovery.RoleDecode ||
		got.BlockSize != 16 || got.KVEvents != "tcp://127.0.0.1:5557" || got.KVReplay != "tcp://127.0.0.1:5558" || got.Workerd != "127.0.0.1:7000" ||
		len(got.Models) != 2 || got.Models[0] != "Qwen/Qwen3-0.6B" || got.Meta["zone"] != "a" ||
		got.Meta[discovery.MetaEngine] != "sim" {
		t.Fatalf("endpoint = %+v", got)
	}
	if ok, err := c.Registered(ctx, "node1-engine0"); err != nil || !ok {
		t.Fatalf("Registered = %v, %v", ok, err)
	}

	// Nothing changes: many blocking queries answer, no set is sent.
	quiet(t, ch, 1500*time.Millisecond)

	eng.healthy.Store(false)
	until(t, ch, 60*time.Second, "the instance unhealthy", func(eps []discovery.Endpoint) bool {
		return len(eps) == 1 && !eps[0].Healthy
	})
	eng.healthy.Store(true)
	until(t, ch, 60*time.Second, "the instance healthy again", func(eps []discovery.Endpoint) bool {
		return len(eps) == 1 && eps[0].Healthy
	})

	// Another service's change wakes no set for ours.
	other, err := discovery.NewConsul(discovery.ConsulConfig{Address: agent.Addr, Service: "other"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := other.Register(ctx, discovery.Registration{Endpoint: discovery.Endpoint{Name: "o1", Address: "127.0.0.1:1"}}); err != nil {
		t.Fatal(err)
	}
	quiet(t, ch, 1000*time.Millisecond)

	if err := c.Deregister(ctx, "node1-engine0"); err != nil {
		t.Fatal(err)
	}
	until(t, ch, 60*time.Second, "no instances", func(eps []discovery.Endpoint) bool { return len(eps) == 0 })
	if err := c.Deregister(ctx, "node1-engine0"); err != nil {
		t.Fatalf("second deregister: %v", err)
	}

	cancel()
	for range ch { // drains and ends: the channel closes on cancel
	}
}

func TestConsulRegistrationRefused(t *testing.T) {
	c := newConsul(t, "127.0.0.1:1", time.Second) // never contacted: validation comes first
	tests := []struct {
		name string
		reg  discovery.Registration
		want string
	}{
		{"no name", discovery.Registration{Endpoint: discovery.Endpoint{Address: "127.0.0.1:80"}}, "without a name"},
		{"no port", discovery.Registration{Endpoint: discovery.Endpoint{Name: "a", Address: "127.0.0.1"}}, "address"},
		{"bad port", discovery.Registration{Endpoint: discovery.Endpoint{Name: "a", Address: "127.0.0.1:99999"}}, "bad port"},
		{"bad meta key", discovery.Registration{Endpoint: discovery.Endpoint{Name: "a", Address: "127.0.0.1:80", Meta: map[string]string{"a.b": "x"}}}, "meta key"},
		{"long meta", discovery.Registration{Endpoint: discovery.Endpoint{Name: "a", Address: "127.0.0.1:80", Meta: map[string]string{"k": strings.Repeat("x", 513)}}}, "512"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := c.Register(context.Background(), tc.reg)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
			if err := c.Keep(context.Background(), tc.reg, time.Second); err == nil {
				t.Fatal("Keep accepted an invalid registration")
			}
		})
	}
}

// The agent restarts (dev mode: it forgets everything): the watch recovers, and Keep puts
// the instance back; when Keep's context ends the instance leaves Consul.
func TestConsulKeepAcrossAgentRestart(t *testing.T) {
	agent := consultest.Start(t)
	eng := newEngine(t)
	c := newConsul(t, agent.Addr, 2*time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	ch := c.Watch(ctx)
	recv(t, ch, 10*time.Second)

	keepCtx, stopKeep := context.WithCancel(ctx)
	kept := make(chan error, 1)
	reg := discovery.Registration{Endpoint: discovery.Endpoint{Name: "e0", Address: eng.addr(), Models: []string{"m"}}, CheckInterval: time.Second}
	go func() { kept <- c.Keep(keepCtx, reg, 200*time.Millisecond) }()
	until(t, ch, 60*time.Second, "e0 healthy", func(eps []discovery.Endpoint) bool {
		return len(eps) == 1 && eps[0].Name == "e0" && eps[0].Healthy
	})

	agent.Restart()
	// Keep puts e0 back in the new agent's catalog. The watch may or may not have seen it
	// missing in between (it sends only changes, and a fast restart shows none), so the
	// catalog is asked directly, and the watch is shown alive by a change after the restart.
	polltest.Until(t, 30*time.Second, "e0 back in consul, passing, after the agent restart", func() bool {
		entries, _, err := agent.Client.Health().Service(discovery.DefaultService, "", true, nil)
		return err == nil && len(entries) == 1 && entries[0].Service.ID == "e0"
	})
	eng.healthy.Store(false)
	until(t, ch, 30*time.Second, "e0 unhealthy, seen by the watch after the restart", func(eps []discovery.Endpoint) bool {
		return len(eps) == 1 && eps[0].Name == "e0" && !eps[0].Healthy
	})
	eng.healthy.Store(true)
	until(t, ch, 30*time.Second, "e0 healthy again", func(eps []discovery.Endpoint) bool {
		return len(eps) == 1 && eps[0].Name == "e0" && eps[0].Healthy
	})

	stopKeep()
	select {
	case err := <-kept:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Keep did not return after cancel")
	}
	until(t, ch, 60*time.Second, "e0 gone", func(eps []discovery.Endpoint) bool { return len(eps) == 0 })
	if ok, err := c.Registered(ctx, "e0"); err != nil || ok {
		t.Fatalf("Registered after Keep ended = %v, %v", ok, err)
	}
}

// With no agent at all, Watch sends nothing, does not spin, and closes on cancel.
func TestConsulWatchNoAgent(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	c := newConsul(t, addr, time.Second)
	ctx, cancel := context.WithCancel(context.Background())
	ch := c.Watch(ctx)
	quiet(t, ch, 500*time.Millisecond)
	cancel()
	select {
	case _, ok := <-ch:
		if ok {
			t.Fatal("set without an agent")
		}
	case <-time.After(2 * time.Second):
		t.Fatal("channel not closed after cancel")
	}
}
