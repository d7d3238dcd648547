package main

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"

	"github.com/kvgate/kvgate/polltest"
	"github.com/kvgate/kvgate/porttest"
	"github.com/kvgate/kvgate/router"
	"github.com/kvgate/kvgate/tracing/tracingtest"
)

// TestUpTracing: kvgate up with --otlp-endpoint sends the gateway's and the router's spans of a
// request, under the service name kvgate, to the collector.
func TestUpTracing(t *testing.T) {
	col := tracingtest.New(t)
	t.Setenv("OTEL_SDK_DISABLED", "")
	t.Setenv("OTEL_BSP_SCHEDULE_DELAY", "50") // the batcher sends every 50 ms instead of 5 s
	addr := porttest.Addr(t)
	runCmd(t, newUpCmd, "--engines", "1", "--sim-speed", "100", "--http", addr,
		"--otlp-endpoint", col.Addr(), "--otlp-insecure")
	polltest.Until(t, 60*time.Second, "the gateway", func() bool { return strings.Contains(get("http://"+addr+"/health"), "ok") })
	resp, err := http.Post("http://"+addr+"/v1/chat/completions", "application/json",
		strings.NewReader(`{"max_tokens":2,"messages":[{"role":"user","content":"hi"}]}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d", resp.StatusCode)
	}
	srv := col.Wait(t, 20*time.Second, "POST /v1/chat/completions")
	route := col.Wait(t, 20*time.Second, router.SpanRoute)
	if route.TraceID != srv.TraceID || route.ParentID != srv.SpanID {
		t.Errorf("route span (trace %s parent %s) is not under the server span (%s %s)", route.TraceID, route.ParentID, srv.TraceID, srv.SpanID)
	}
	if srv.Service != "kvgate" {
		t.Errorf("service.name %q, want kvgate", srv.Service)
	}
}

// TestTracingFlagErrors: a bad tracing flag stops each serving command before it starts
// anything, with an error that names the problem.
func TestTracingFlagErrors(t *testing.T) {
	t.Setenv("OTEL_SDK_DISABLED", "")
	for _, tc := range []struct {
		name   string
		newCmd func(*globals) *cobra.Command
		args   []string
		want   string
	}{
		{"up protocol", newUpCmd, []string{"--otlp-endpoint", "127.0.0.1:4317", "--otlp-protocol", "http/json"}, "OTLP protocol"},
		{"up ratio", newUpCmd, []string{"--otlp-endpoint", "127.0.0.1:4317", "--trace-sample-ratio", "2"}, "sample ratio"},
		{"router CA", newRouterCmd, []string{"--endpoint", "127.0.0.1:1", "--served-model", "m", "--otlp-endpoint", "127.0.0.1:4317", "--otlp-tls-ca", "/nonexistent.pem"}, "tls CA"},
		{"gateway insecure and TLS", newGatewayCmd, []string{"--epp", "127.0.0.1:1", "--endpoint", "127.0.0.1:2", "--served-model", "m", "--otlp-endpoint", "127.0.0.1:4317", "--otlp-insecure", "--otlp-tls-ca", "/nonexistent.pem"}, "tls CA"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cmd := tc.newCmd(&globals{log: slog.New(slog.DiscardHandler)})
			cmd.SetArgs(tc.args)
			cmd.SetOut(io.Discard)
			cmd.SilenceUsage, cmd.SilenceErrors = true, true
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			err := cmd.ExecuteContext(ctx)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want one about %q", err, tc.want)
			}
		})
	}
}
