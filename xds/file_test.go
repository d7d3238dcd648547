package xds_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/kvgate/kvgate/discovery"
	"github.com/kvgate/kvgate/xds"
	"github.com/kvgate/kvgate/xds/xdstest"
)

func next(t *testing.T, ch <-chan []discovery.Endpoint) []discovery.Endpoint {
	t.Helper()
	select {
	case eps, ok := <-ch:
		if !ok {
			t.Fatal("watch closed")
		}
		return eps
	case <-time.After(5 * time.Second):
		t.Fatal("no report")
	}
	return nil
}

// TestFileSource: the file's engines are reported at once and again after each edit; an
// invalid edit keeps the last good set; the channel closes with the context.
func TestFileSource(t *testing.T) {
	path := filepath.Join(t.TempDir(), "engines.yaml")
	write := func(s string) {
		t.Helper()
		tmp := path + ".tmp"
		if err := os.WriteFile(tmp, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, path); err != nil {
			t.Fatal(err)
		}
	}
	write("- {address: \"10.0.0.1:8000\", models: [m]}\n")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ch := (&xds.FileSource{Path: path, Interval: 10 * time.Millisecond}).Watch(ctx)
	if eps := next(t, ch); len(eps) != 1 || eps[0].Address != "10.0.0.1:8000" {
		t.Fatalf("first report = %+v", eps)
	}
	write("- {address: \"10.0.0.1:8000\", models: [m]}\n- {address: \"10.0.0.2:8000\", models: [m]}\n")
	if eps := next(t, ch); len(eps) != 2 {
		t.Fatalf("after the edit: %+v", eps)
	}
	write("- {address: \"10.0.0.3:8000\"}\n") // invalid: no models
	write("- {address: \"10.0.0.3:8000\", models: [m]}\n")
	if eps := next(t, ch); len(eps) != 1 || eps[0].Address != "10.0.0.3:8000" {
		t.Fatalf("after an invalid then a valid edit: %+v", eps)
	}
	cancel()
	for range ch {
	}
}

// TestServerFileSource: editing the endpoints file reaches an Envoy-like node as a new EDS
// version.
func TestServerFileSource(t *testing.T) {
	path := filepath.Join(t.TempDir(), "engines.yaml")
	if err := os.WriteFile(path, []byte("- {address: \"127.0.0.31:8000\", models: [m]}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, addr := startServer(t, xds.Config{Source: &xds.FileSource{Path: path, Interval: 20 * time.Millisecond}})
	c := xdstest.Dial(t, dial(t, addr), "envoy-file", "edge", false)
	c.WaitFor(5*time.Second, "the file's engine", func(s xdstest.State) bool {
		return len(addresses(t, s, xds.ModelCluster("m"))) == 1
	})
	if err := os.WriteFile(path, []byte("- {address: \"127.0.0.31:8000\", models: [m]}\n- {address: \"127.0.0.32:8000\", models: [m]}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	c.WaitFor(time.Second, "the added engine", func(s xdstest.State) bool {
		return len(addresses(t, s, xds.ModelCluster("m"))) == 2
	})
}
