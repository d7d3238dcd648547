package router_test

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/kvgate/kvgate/engine"
	"github.com/kvgate/kvgate/router"
)

// TestAdapterAndSaltIsolation: blocks stored under a LoRA adapter or a cache salt match only
// requests for that adapter or with that salt, as the engine's cache does.
func TestAdapterAndSaltIsolation(t *testing.T) {
	eps := endpoints(3)
	for i := range eps {
		eps[i].Models = []string{model, "sql-lora"}
	}
	r, _ := newRouter(t, eps, func(c *router.Config) { c.Adapters = map[string]string{"sql-lora": model} })
	content := longText("iso", 150)
	tokens := chatTokens(t, content)
	base := stored(tokens, 16, 1, "")
	lora := stored(tokens, 16, 1000, "")
	lora.Events[0].LoRAName = "sql-lora"
	salted := stored(tokens, 16, 2000, "")
	salted.Events[0].ExtraKeys = []string{"tenant-a"}
	r.ApplyEvents("e0", base)
	r.ApplyEvents("e1", lora)
	r.ApplyEvents("e2", salted)

	body := func(model string, salt string) []byte {
		m := map[string]any{"model": model, "messages": []map[string]string{{"role": "user", "content": content}}}
		if salt != "" {
			m["cache_salt"] = salt
		}
		b, _ := json.Marshal(m)
		return b
	}
	tests := []struct {
		name, model, salt, want string
	}{
		{"base model", model, "", "e0"},
		{"adapter", "sql-lora", "", "e1"},
		{"salted", model, "tenant-a", "e2"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := route(t, r, "/v1/chat/completions", body(tt.model, tt.salt))
			defer d.Done(nil, nil)
			if d.Endpoint.Name != tt.want || d.CachedBlocks != len(tokens)/16 {
				t.Errorf("picked %s with %d cached, want %s with %d", d.Endpoint.Name, d.CachedBlocks, tt.want, len(tokens)/16)
			}
		})
	}
	// Another salt matches nothing.
	d := route(t, r, "/v1/chat/completions", body(model, "tenant-b"))
	defer d.Done(nil, nil)
	if d.CachedBlocks != 0 {
		t.Errorf("foreign salt saw %d cached blocks on %s", d.CachedBlocks, d.Endpoint.Name)
	}
}

// TestSetEndpointsWhileRunning: an endpoint added by discovery while the router runs gets its
// KV-event subscription at once; a removed one is forgotten.
func TestSetEndpointsWhileRunning(t *testing.T) {
	eps := endpoints(2)
	r, _ := newRouter(t, eps[:1], nil)
	run(t, r)
	p, err := engine.NewPublisher(engine.PublisherConfig{Endpoint: "tcp://127.0.0.1:0", Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Close() })
	eps[1].KVEvents = p.Addr()
	r.SetEndpoints(eps)
	content := longText("late", 100)
	tokens := chatTokens(t, content)
	eventually(t, "events from the added endpoint", func() bool {
		if _, err := p.Publish(stored(tokens, 16, 1, "")); err != nil {
			t.Fatal(err)
		}
		return loadOf(r, "e1").CachedBlocks == len(tokens)/16
	})
	d := route(t, r, "/v1/chat/completions", chatBody(content, false))
	d.Done(nil, nil)
	if d.Endpoint.Name != "e1" {
		t.Errorf("picked %s", d.Endpoint.Name)
	}
	r.SetEndpoints(eps[:1])
	if len(r.Endpoints()) != 1 || loadOf(r, "e1").Name != "" {
		t.Errorf("e1 not removed: %v", r.Endpoints())
	}
}

func TestRunTwice(t *testing.T) {
	r, _ := newRouter(t, endpoints(1), nil)
	ctx, cancel := context.WithCancel(context.Background())
	first := make(chan error, 1)
	go func() { first <- r.Run(ctx) }()
	done, stop := context.WithCancel(context.Background())
	stop()
	// A probe (a Run on a done context) that gets there before the first Run takes the slot
	// for a moment and may make the first one be refused (a CI run saw it): start that again.
	eventually(t, "a second Run refused", func() bool {
		select {
		case err := <-first:
			if err == nil {
				t.Fatal("the first Run returned before its context ended")
			}
			go func() { first <- r.Run(ctx) }()
			return false
		default:
		}
		return r.Run(done) != nil
	})
	cancel()
	select {
	case err := <-first:
		if err != nil {
			t.Fatalf("the first Run: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the first Run did not return")
	}
}
