package main

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/kvgate/kvgate/polltest"
	"github.com/kvgate/kvgate/porttest"
	"github.com/kvgate/kvgate/tokenizer"
	"github.com/kvgate/kvgate/xds"
	"github.com/kvgate/kvgate/xds/xdstest"
)

// runCmd runs a kvgate subcommand with args until the test ends; it must then return nil.
func runCmd(t *testing.T, newCmd func(*globals) *cobra.Command, args ...string) {
	t.Helper()
	cmd := newCmd(&globals{log: slog.New(slog.DiscardHandler)})
	cmd.SetArgs(args)
	cmd.SetOut(io.Discard)
	cmd.SilenceUsage, cmd.SilenceErrors = true, true
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- cmd.ExecuteContext(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("%s: %v", cmd.Name(), err)
		}
	})
}

func get(url string) string {
	resp, err := http.Get(url)
	if err != nil {
		return ""
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	polltest.Until(t, 10*time.Second, what, cond)
}

// edsBlockSizes returns address -> block_size metadata of the model's EDS pool.
func edsBlockSizes(t *testing.T, s xdstest.State, model string) map[string]float64 {
	a := s.Resources[xdstest.EndpointType][xds.ModelCluster(model)]
	if a == nil {
		return nil
	}
	var cla endpoint.ClusterLoadAssignment
	if err := a.UnmarshalTo(&cla); err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, l := range cla.GetEndpoints() {
		for _, e := range l.GetLbEndpoints() {
			sa := e.GetEndpoint().GetAddress().GetSocketAddress()
			md := e.GetMetadata().GetFilterMetadata()["kvgate"].GetFields()["block_size"]
			out[sa.GetAddress()] = md.GetNumberValue()
		}
	}
	return out
}

// TestEndpointsFileFeedsRouterAndXDS: one endpoints file, in the spelling 'kvgate xds' used
// to read (blockSize), feeds both 'kvgate router' and 'kvgate xds'; an edit reaches the
// router (its /metrics and /v1/models) and Envoy (EDS over ADS) without a restart.
func TestEndpointsFileFeedsRouterAndXDS(t *testing.T) {
	model := tokenizer.DefaultModel
	path := filepath.Join(t.TempDir(), "engines.yaml")
	write := func(s string) {
		t.Helper()
		if err := os.WriteFile(path+".tmp", []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(path+".tmp", path); err != nil {
			t.Fatal(err)
		}
	}
	write("- {name: e1, address: \"127.0.0.11:8000\", models: [\"" + model + "\"], blockSize: 32}\n")

	httpAddr, metricsAddr, xdsAddr := porttest.Addr(t), porttest.Addr(t), porttest.Addr(t)
	runCmd(t, newRouterCmd, "--endpoints", path, "--grpc", "127.0.0.1:0", "--http", httpAddr, "--metrics", metricsAddr)
	runCmd(t, newXDSCmd, "--endpoints", path, "--router", "127.0.0.1:9002", "--listen", xdsAddr)

	waitFor(t, "the router to route to e1", func() bool {
		return strings.Contains(get("http://"+metricsAddr+"/metrics"), `endpoint="e1"`)
	})
	waitFor(t, "xds to listen", func() bool {
		c, err := net.Dial("tcp", xdsAddr)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	conn, err := grpc.NewClient(xdsAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	c := xdstest.Dial(t, conn, "envoy-0", "edge", false)
	c.WaitFor(10*time.Second, "e1 with block size 32", func(s xdstest.State) bool {
		return edsBlockSizes(t, s, model)["127.0.0.11"] == 32
	})

	write("- {name: e1, address: \"127.0.0.11:8000\", models: [\"" + model + "\"], block_size: 32}\n" +
		"- {name: e2, address: \"127.0.0.12:8000\", models: [\"" + model + "\", extra], block_size: 16}\n")
	waitFor(t, "the router to pick up e2", func() bool {
		return strings.Contains(get("http://"+metricsAddr+"/metrics"), `endpoint="e2"`) &&
			strings.Contains(get("http://"+httpAddr+"/v1/models"), `"extra"`)
	})
	c.WaitFor(10*time.Second, "e2 in EDS", func(s xdstest.State) bool {
		b := edsBlockSizes(t, s, model)
		return b["127.0.0.11"] == 32 && b["127.0.0.12"] == 16
	})
}

// TestEndpointsFileStrict: a key the schema does not know stops the router at start with its
// line, instead of being ignored (block size silently 16, events silently off).
func TestEndpointsFileStrict(t *testing.T) {
	path := filepath.Join(t.TempDir(), "engines.yaml")
	if err := os.WriteFile(path, []byte("- address: 127.0.0.1:8000\n  models: [m]\n  kv_event: tcp://127.0.0.1:5557\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		newCmd func(*globals) *cobra.Command
		args   []string
	}{
		{newRouterCmd, []string{"--endpoints", path, "--grpc", "127.0.0.1:0"}},
		{newXDSCmd, []string{"--endpoints", path, "--router", "127.0.0.1:9002", "--listen", "127.0.0.1:0"}},
	} {
		cmd := tc.newCmd(&globals{log: slog.New(slog.DiscardHandler)})
		cmd.SetArgs(tc.args)
		cmd.SilenceUsage, cmd.SilenceErrors = true, true
		err := cmd.ExecuteContext(context.Background())
		if err == nil || !strings.Contains(err.Error(), `line 3: [0]: unknown field "kv_event"`) {
			t.Errorf("%s: err = %v", cmd.Name(), err)
		}
	}
}
