package xds_test

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/kvgate/kvgate/discovery"
	"github.com/kvgate/kvgate/xds"
	"github.com/kvgate/kvgate/xds/xdstest"
)

// TestServerFileSource: editing the endpoints file reaches an Envoy-like node as a new EDS
// version.
func TestServerFileSource(t *testing.T) {
	path := filepath.Join(t.TempDir(), "engines.yaml")
	if err := os.WriteFile(path, []byte("- {address: \"127.0.0.31:8000\", models: [m]}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	src, err := discovery.NewFile(path, 20*time.Millisecond, nil)
	if err != nil {
		t.Fatal(err)
	}
	_, addr := startServer(t, xds.Config{Source: src})
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
