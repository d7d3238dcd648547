// Package tracingtest is an OTLP trace collector for tests: a real gRPC TraceService (or
// OTLP/HTTP endpoint) on loopback, optionally over TLS, that keeps every span it receives.
package tracingtest

import (
	"context"
	"crypto/tls"
	"encoding/hex"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/protobuf/proto"

	"github.com/kvgate/kvgate/polltest"
)

// Span is one received span, flattened for assertions.
type Span struct {
	Name     string
	Kind     tracepb.Span_SpanKind
	TraceID  string // hex
	SpanID   string // hex
	ParentID string // hex; "" for a root span
	Service  string // the resource's service.name
	Attrs    map[string]any
	Events   []string
	Status   tracepb.Status_StatusCode
}

// Collector is a running OTLP/gRPC trace collector. Safe for concurrent use.
type Collector struct {
	coltracepb.UnimplementedTraceServiceServer

	addr  string
	conns atomic.Int64
	mu    sync.Mutex
	spans []Span
}

// New starts a plaintext collector on 127.0.0.1:0, stopped when t ends.
func New(t testing.TB) *Collector { return NewTLS(t, nil) }

// NewTLS starts a collector serving TLS with tc (nil: plaintext), stopped when t ends.
func NewTLS(t testing.TB, tc *tls.Config) *Collector {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	c := &Collector{addr: lis.Addr().String()}
	var opts []grpc.ServerOption
	if tc != nil {
		opts = append(opts, grpc.Creds(credentials.NewTLS(tc)))
	}
	srv := grpc.NewServer(opts...)
	coltracepb.RegisterTraceServiceServer(srv, c)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(countingListener{lis, &c.conns})
	}()
	t.Cleanup(func() {
		srv.Stop()
		<-done
	})
	return c
}

// NewHTTP starts a plaintext OTLP/HTTP collector (protobuf bodies on /v1/traces) on
// 127.0.0.1:0, stopped when t ends.
func NewHTTP(t testing.TB) *Collector {
	t.Helper()
	c := &Collector{}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/traces", func(w http.ResponseWriter, r *http.Request) {
		b, err := io.ReadAll(io.LimitReader(r.Body, 64<<20))
		var req coltracepb.ExportTraceServiceRequest
		if err == nil {
			err = proto.Unmarshal(b, &req)
		}
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		resp, _ := c.Export(r.Context(), &req)
		out, _ := proto.Marshal(resp)
		w.Header().Set("Content-Type", "application/x-protobuf")
		_, _ = w.Write(out)
	})
	srv := httptest.NewUnstartedServer(mux)
	srv.Listener = countingListener{srv.Listener, &c.conns}
	srv.Start()
	t.Cleanup(srv.Close)
	c.addr = srv.Listener.Addr().String()
	return c
}

// Addr is the collector's host:port.
func (c *Collector) Addr() string { return c.addr }

// Conns is the number of connections accepted so far.
func (c *Collector) Conns() int64 { return c.conns.Load() }

// Export implements the OTLP TraceService.
func (c *Collector) Export(_ context.Context, req *coltracepb.ExportTraceServiceRequest) (*coltracepb.ExportTraceServiceResponse, error) {
	var got []Span
	for _, rs := range req.GetResourceSpans() {
		service, _ := value(attrValue(rs.GetResource().GetAttributes(), "service.name")).(string)
		for _, ss := range rs.GetScopeSpans() {
			for _, s := range ss.GetSpans() {
				sp := Span{
					Name: s.GetName(), Kind: s.GetKind(), Service: service,
					TraceID: hex.EncodeToString(s.GetTraceId()), SpanID: hex.EncodeToString(s.GetSpanId()),
					Attrs: map[string]any{}, Status: s.GetStatus().GetCode(),
				}
				if len(s.GetParentSpanId()) > 0 {
					sp.ParentID = hex.EncodeToString(s.GetParentSpanId())
				}
				for _, kv := range s.GetAttributes() {
					sp.Attrs[kv.GetKey()] = value(kv.GetValue())
				}
				for _, e := range s.GetEvents() {
					sp.Events = append(sp.Events, e.GetName())
				}
				got = append(got, sp)
			}
		}
	}
	c.mu.Lock()
	c.spans = append(c.spans, got...)
	c.mu.Unlock()
	return &coltracepb.ExportTraceServiceResponse{}, nil
}

// Spans returns a copy of the spans received so far.
func (c *Collector) Spans() []Span {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]Span(nil), c.spans...)
}

// Find returns the first span received with name, if any.
func (c *Collector) Find(name string) (Span, bool) {
	for _, s := range c.Spans() {
		if s.Name == name {
			return s, true
		}
	}
	return Span{}, false
}

// Wait waits until a span named name has arrived (or fails t after timeout) and returns it.
func (c *Collector) Wait(t testing.TB, timeout time.Duration, name string) Span {
	t.Helper()
	var s Span
	polltest.Until(t, timeout, "span "+name+" at the collector", func() bool {
		var ok bool
		s, ok = c.Find(name)
		return ok
	})
	return s
}

func attrValue(kvs []*commonpb.KeyValue, key string) *commonpb.AnyValue {
	for _, kv := range kvs {
		if kv.GetKey() == key {
			return kv.GetValue()
		}
	}
	return nil
}

// value is v as a Go value: string, int64, float64, bool, or []any.
func value(v *commonpb.AnyValue) any {
	switch x := v.GetValue().(type) {
	case *commonpb.AnyValue_StringValue:
		return x.StringValue
	case *commonpb.AnyValue_IntValue:
		return x.IntValue
	case *commonpb.AnyValue_DoubleValue:
		return x.DoubleValue
	case *commonpb.AnyValue_BoolValue:
		return x.BoolValue
	case *commonpb.AnyValue_ArrayValue:
		var out []any
		for _, e := range x.ArrayValue.GetValues() {
			out = append(out, value(e))
		}
		return out
	}
	return nil
}

// countingListener counts accepted connections.
type countingListener struct {
	net.Listener
	n *atomic.Int64
}

func (l countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.n.Add(1)
	}
	return c, err
}
