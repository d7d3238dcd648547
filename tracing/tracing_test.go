package tracing_test

import (
	"context"
	"testing"
	"time"

	"go.opentelemetry.io/otel/trace"
	"go.uber.org/goleak"

	"github.com/kvgate/kvgate/tlsconfig/tlsconfigtest"
	"github.com/kvgate/kvgate/tracing"
	"github.com/kvgate/kvgate/tracing/tracingtest"
)

// clearEnv unsets the OTEL_* variables New reads, so the machine's cannot leak into a test.
func clearEnv(t *testing.T) {
	for _, k := range []string{"OTEL_SDK_DISABLED", "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
		"OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_SERVICE_NAME", "OTEL_TRACES_SAMPLER",
		"OTEL_RESOURCE_ATTRIBUTES", "OTEL_EXPORTER_OTLP_INSECURE", "OTEL_EXPORTER_OTLP_TRACES_INSECURE"} {
		t.Setenv(k, "")
	}
}

// emit records one span named name through p and flushes it with Shutdown.
func emit(t *testing.T, p *tracing.Provider, ctx context.Context, name string) {
	t.Helper()
	tr := p.Tracer("test")
	if tr == nil {
		t.Fatal("tracing is on but the tracer is nil")
	}
	_, span := tr.Start(ctx, name)
	span.End()
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := p.Shutdown(sctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
}

func TestOffByDefault(t *testing.T) {
	clearEnv(t)
	p, err := tracing.New(context.Background(), tracing.Config{SampleRatio: 1, ServiceName: "kvgate-router"})
	if err != nil {
		t.Fatal(err)
	}
	if p.Enabled() || p.Tracer("x") != nil {
		t.Fatal("tracing is on without an endpoint")
	}
	if err := p.Shutdown(context.Background()); err != nil {
		t.Fatalf("Shutdown of an off provider: %v", err)
	}
	// OTEL_SDK_DISABLED wins over an endpoint.
	t.Setenv("OTEL_SDK_DISABLED", "true")
	p, err = tracing.New(context.Background(), tracing.Config{Endpoint: "127.0.0.1:1", Insecure: true})
	if err != nil || p.Enabled() {
		t.Fatalf("OTEL_SDK_DISABLED=true: enabled=%v err=%v", p.Enabled(), err)
	}
}

func TestExport(t *testing.T) {
	for _, tc := range []struct {
		name     string
		protocol string
		start    func(testing.TB) *tracingtest.Collector
	}{
		{"grpc", tracing.ProtocolGRPC, tracingtest.New},
		{"http", tracing.ProtocolHTTP, tracingtest.NewHTTP},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clearEnv(t)
			col := tc.start(t)
			// Shutdown stops the exporter: its connection and batching goroutines are gone.
			// (The HTTP exporter's client keeps its idle keep-alive connection until the
			// process ends; Shutdown runs at exit.)
			if tc.protocol == tracing.ProtocolGRPC {
				defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
			}
			p, err := tracing.New(context.Background(), tracing.Config{
				Endpoint: col.Addr(), Protocol: tc.protocol, Insecure: true, SampleRatio: 1, ServiceName: "kvgate-test",
			})
			if err != nil {
				t.Fatal(err)
			}
			emit(t, p, context.Background(), "one")
			s, ok := col.Find("one") // Shutdown flushed: no wait needed
			if !ok {
				t.Fatalf("span not at the collector after Shutdown; got %v", col.Spans())
			}
			if s.Service != "kvgate-test" {
				t.Errorf("service.name = %q, want kvgate-test", s.Service)
			}
		})
	}
}

func TestTLS(t *testing.T) {
	clearEnv(t)
	pki := tlsconfigtest.New(t)
	stc, err := pki.Server.Server() // mutual TLS: the collector requires the client certificate
	if err != nil {
		t.Fatal(err)
	}
	col := tracingtest.NewTLS(t, stc)
	p, err := tracing.New(context.Background(), tracing.Config{Endpoint: col.Addr(), TLS: pki.Client, SampleRatio: 1})
	if err != nil {
		t.Fatal(err)
	}
	emit(t, p, context.Background(), "over-tls")
	if _, ok := col.Find("over-tls"); !ok {
		t.Fatal("span not received over mTLS")
	}

	// Plaintext to a TLS collector fails: Shutdown reports the spans it could not send.
	col2 := tracingtest.NewTLS(t, stc)
	p2, err := tracing.New(context.Background(), tracing.Config{Endpoint: col2.Addr(), Insecure: true, SampleRatio: 1})
	if err != nil {
		t.Fatal(err)
	}
	_, span := p2.Tracer("test").Start(context.Background(), "lost")
	span.End()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if err := p2.Shutdown(ctx); err == nil {
		t.Error("Shutdown succeeded although the spans could not be sent")
	}
	if len(col2.Spans()) != 0 {
		t.Error("a plaintext exporter reached a TLS collector")
	}
}

func TestEnvironment(t *testing.T) {
	clearEnv(t)
	col := tracingtest.New(t)
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://"+col.Addr())
	t.Setenv("OTEL_SERVICE_NAME", "from-env")
	c := tracing.Config{SampleRatio: 1, ServiceName: "kvgate-gateway"}
	if !c.Enabled() {
		t.Fatal("OTEL_EXPORTER_OTLP_ENDPOINT does not turn tracing on")
	}
	p, err := tracing.New(context.Background(), c)
	if err != nil {
		t.Fatal(err)
	}
	emit(t, p, context.Background(), "env")
	s, ok := col.Find("env")
	if !ok {
		t.Fatal("span not received at the OTEL_EXPORTER_OTLP_ENDPOINT collector")
	}
	if s.Service != "from-env" {
		t.Errorf("service.name = %q, want OTEL_SERVICE_NAME's from-env", s.Service)
	}
}

func TestSampling(t *testing.T) {
	clearEnv(t)
	col := tracingtest.New(t)
	p, err := tracing.New(context.Background(), tracing.Config{Endpoint: col.Addr(), Insecure: true, SampleRatio: 0})
	if err != nil {
		t.Fatal(err)
	}
	tr := p.Tracer("test")
	_, dropped := tr.Start(context.Background(), "unsampled")
	dropped.End()
	// A parent that was sampled upstream is followed although the ratio is 0.
	parent := trace.NewSpanContext(trace.SpanContextConfig{
		TraceID: trace.TraceID{1}, SpanID: trace.SpanID{2}, TraceFlags: trace.FlagsSampled, Remote: true,
	})
	emit(t, p, trace.ContextWithRemoteSpanContext(context.Background(), parent), "child")
	s, ok := col.Find("child")
	if !ok {
		t.Fatal("the child of a sampled parent was not recorded")
	}
	if s.TraceID != parent.TraceID().String() || s.ParentID != parent.SpanID().String() {
		t.Errorf("child trace/parent = %s/%s, want %s/%s", s.TraceID, s.ParentID, parent.TraceID(), parent.SpanID())
	}
	if _, ok := col.Find("unsampled"); ok {
		t.Error("a new trace was recorded at sample ratio 0")
	}
}

func TestBadConfig(t *testing.T) {
	clearEnv(t)
	for _, tc := range []struct {
		name string
		c    tracing.Config
	}{
		{"protocol", tracing.Config{Endpoint: "127.0.0.1:4317", Protocol: "http/json", SampleRatio: 1}},
		{"ratio", tracing.Config{Endpoint: "127.0.0.1:4317", SampleRatio: 1.5}},
		{"insecure and TLS", tracing.Config{Endpoint: "127.0.0.1:4317", Insecure: true, SampleRatio: 1,
			TLS: tlsconfigtest.New(t).Client}},
		{"missing CA file", tracing.Config{Endpoint: "127.0.0.1:4317", SampleRatio: 1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.name == "missing CA file" {
				tc.c.TLS.CA = "/nonexistent/ca.pem"
			}
			if _, err := tracing.New(context.Background(), tc.c); err == nil {
				t.Fatal("New accepted a bad configuration")
			}
		})
	}
}
