package discovery_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/kvgate/kvgate/discovery"
)

// recv returns the next set or fails after d.
func recv(t *testing.T, ch <-chan []discovery.Endpoint, d time.Duration) []discovery.Endpoint {
	t.Helper()
	select {
	case eps, ok := <-ch:
		if !ok {
			t.Fatal("watch channel closed")
		}
		return eps
	case <-time.After(d):
		t.Fatalf("no endpoint set within %v", d)
	}
	return nil
}

// quiet fails if a set arrives within d.
func quiet(t *testing.T, ch <-chan []discovery.Endpoint, d time.Duration) {
	t.Helper()
	select {
	case eps := <-ch:
		t.Fatalf("unexpected set %+v", eps)
	case <-time.After(d):
	}
}

func names(eps []discovery.Endpoint) []string {
	out := []string{}
	for _, e := range eps {
		out = append(out, e.Name)
	}
	return out
}

func TestStatic(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	s := discovery.NewStatic([]discovery.Endpoint{
		{Name: "b", Address: "127.0.0.1:2", Healthy: true},
		{Name: "a", Address: "127.0.0.1:1", Healthy: true, Models: []string{"m"}},
	})
	ch := s.Watch(ctx)
	first := recv(t, ch, time.Second)
	if got := names(first); len(got) != 2 || got[0] != "a" || got[1] != "b" {
		t.Fatalf("first set = %v, want sorted [a b]", got)
	}
	first[0].Models[0] = "mutated" // the receiver owns what it got
	if s.Endpoints()[0].Models[0] != "m" {
		t.Fatal("receiver's slice aliases the source's")
	}

	s.Set(s.Endpoints()) // no change: nothing sent
	quiet(t, ch, 100*time.Millisecond)

	eps := s.Endpoints()
	eps[1].Healthy = false
	s.Set(eps)
	if got := recv(t, ch, time.Second); got[1].Healthy {
		t.Fatal("health change not sent")
	}

	// A reader that falls behind gets the newest set, not a backlog: at most the one set
	// already handed to the forwarder, then the last.
	for i := range 5 {
		s.Set([]discovery.Endpoint{{Name: "x", BlockSize: i + 1}})
	}
	for n := 1; ; n++ {
		got := recv(t, ch, time.Second)
		if len(got) == 1 && got[0].BlockSize == 5 {
			break
		}
		if n >= 2 {
			t.Fatalf("set %d after the burst is %+v: a backlog, not the latest", n, got)
		}
	}
	quiet(t, ch, 50*time.Millisecond)

	cancel()
	select {
	case _, ok := <-ch:
		if ok {
			t.Fatal("set after cancel")
		}
	case <-time.After(time.Second):
		t.Fatal("channel not closed after cancel")
	}
}

func TestEndpointEqual(t *testing.T) {
	base := discovery.Endpoint{Name: "a", Address: "x:1", Models: []string{"m"}, Meta: map[string]string{"k": "v"}}
	tests := []struct {
		name   string
		mutate func(*discovery.Endpoint)
		equal  bool
	}{
		{"same", func(*discovery.Endpoint) {}, true},
		{"address", func(e *discovery.Endpoint) { e.Address = "x:2" }, false},
		{"models", func(e *discovery.Endpoint) { e.Models = []string{"m", "n"} }, false},
		{"healthy", func(e *discovery.Endpoint) { e.Healthy = true }, false},
		{"meta", func(e *discovery.Endpoint) { e.Meta = map[string]string{"k": "w"} }, false},
		{"workerd", func(e *discovery.Endpoint) { e.Workerd = "127.0.0.1:9" }, false},
		{"kv replay", func(e *discovery.Endpoint) { e.KVReplay = "tcp://127.0.0.1:9" }, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			o := base
			o.Models = append([]string(nil), base.Models...)
			o.Meta = map[string]string{"k": "v"}
			tc.mutate(&o)
			if got := base.Equal(o); got != tc.equal {
				t.Fatalf("Equal = %v, want %v", got, tc.equal)
			}
		})
	}
}

func TestParseModels(t *testing.T) {
	tests := []struct {
		meta map[string]string
		want []string
	}{
		{map[string]string{}, nil},
		{map[string]string{discovery.MetaModel: "a"}, []string{"a"}},
		{map[string]string{discovery.MetaModel: "a", discovery.MetaModels: "a, b,,c"}, []string{"a", "b", "c"}},
	}
	for _, tc := range tests {
		got := discovery.ParseModels(tc.meta)
		if len(got) != len(tc.want) {
			t.Fatalf("ParseModels(%v) = %v, want %v", tc.meta, got, tc.want)
		}
		for i := range got {
			if got[i] != tc.want[i] {
				t.Fatalf("ParseModels(%v) = %v, want %v", tc.meta, got, tc.want)
			}
		}
	}
}

func FuzzParseModels(f *testing.F) {
	f.Add("a,b", "c")
	f.Add(",,", "")
	f.Fuzz(func(t *testing.T, models, model string) {
		for _, m := range discovery.ParseModels(map[string]string{discovery.MetaModels: models, discovery.MetaModel: model}) {
			if m == "" {
				t.Fatal("empty model name")
			}
		}
	})
}

// TestJoin: the joined set follows each source, and a source that never reports (an
// unreachable Consul) does not hold back the others.
func TestJoin(t *testing.T) {
	a := discovery.NewStatic([]discovery.Endpoint{{Name: "a1", Address: "127.0.0.1:1"}})
	b := discovery.NewStatic([]discovery.Endpoint{{Name: "b1", Address: "127.0.0.1:2"}})
	ctx, cancel := context.WithCancel(context.Background())
	ch := discovery.Join{a, b, silent{}}.Watch(ctx)
	waitSet := func(want ...string) {
		t.Helper()
		for {
			got := names(recv(t, ch, 5*time.Second))
			if strings.Join(got, ",") == strings.Join(want, ",") {
				return
			}
		}
	}
	waitSet("a1", "b1")
	b.Set([]discovery.Endpoint{{Name: "b2", Address: "127.0.0.1:3"}, {Name: "0b", Address: "127.0.0.1:4"}})
	waitSet("0b", "a1", "b2")
	a.Set(nil)
	waitSet("0b", "b2")
	cancel()
	for range ch {
	}
}

// silent is a source that never reports.
type silent struct{}

func (silent) Watch(ctx context.Context) <-chan []discovery.Endpoint {
	ch := make(chan []discovery.Endpoint)
	go func() { <-ctx.Done(); close(ch) }()
	return ch
}
