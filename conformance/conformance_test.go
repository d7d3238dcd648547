package conformance_test

import (
	"context"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/kvgate/kvgate/conformance"
)

// fault is the one rule a scripted EPP breaks ("" breaks none).
type fault string

const (
	faultNone      fault = ""
	faultDisagree  fault = "header and metadata differ"
	faultOutside   fault = "picks outside the pool"
	faultSubset    fault = "ignores the subset"
	faultEarly     fault = "answers before the body"
	faultNo503     fault = "picks when the subset leaves nothing"
	faultBigChunks fault = "sends the body back in one piece"
	faultNoHealth  fault = "readiness NOT_SERVING"
	// Like GIE v1.4.0 (llm-d's EPP): a string hint is ignored (here: the last endpoint picked).
	faultStringSubset fault = "ignores a string subset"
	// The same, answering the string-hinted picks with each endpoint in turn: it passes a
	// check that asks for each endpoint alone only once.
	faultStringTurns fault = "ignores a string subset, picking each endpoint in turn"
	// Like llm-d's EPP v0.7.1: response headers without a header map (Envoy always sends
	// :status) kill it; no fault as long as the suite sends what Envoy sends.
	styleDiesOnBareHeaders fault = "dies on response headers without a header map"
	// Like GIE v1.4.0: the metadata of each message replaces the last one's, and the pick
	// comes with the body's last message; no fault, as Envoy sends the metadata on every
	// message.
	styleLastMessage fault = "reads the subset from the body's last message"
)

var pool = []string{"127.0.0.1:1001", "127.0.0.1:1002"}

// scripted is an EPP that follows the protocol except for its fault.
type scripted struct {
	extprocv3.UnimplementedExternalProcessorServer
	f    fault
	dead atomic.Bool  // styleDiesOnBareHeaders: it "crashed"
	turn atomic.Int64 // faultStringTurns: string-hinted picks so far
}

// eligible is the pool narrowed by m's subset hint, if m carries one.
func (e *scripted) eligible(m *extprocv3.ProcessingRequest) ([]string, bool) {
	v := m.GetMetadataContext().GetFilterMetadata()["envoy.lb.subset_hint"].GetFields()["x-gateway-destination-endpoint-subset"]
	if v == nil || e.f == faultSubset {
		return nil, false
	}
	var eligible []string
	if l := v.GetListValue(); l != nil {
		for _, x := range l.GetValues() {
			eligible = append(eligible, x.GetStringValue())
		}
	} else if e.f == faultStringSubset {
		eligible = pool[len(pool)-1:]
	} else if e.f == faultStringTurns {
		eligible = []string{pool[int(e.turn.Add(1)-1)%len(pool)]}
	} else {
		eligible = strings.Split(v.GetStringValue(), ",")
	}
	var in []string
	for _, a := range eligible {
		for _, p := range pool {
			if a == p {
				in = append(in, a)
			}
		}
	}
	if len(in) == 0 && e.f == faultNo503 {
		in = pool
	}
	return in, true
}

func (e *scripted) Process(s extprocv3.ExternalProcessor_ProcessServer) error {
	if e.dead.Load() {
		return status.Error(codes.Unavailable, "the scripted EPP died")
	}
	var body []byte
	eligible := pool
	for {
		m, err := s.Recv()
		if err != nil {
			return nil
		}
		switch {
		case m.GetRequestHeaders() != nil:
			if in, ok := e.eligible(m); ok {
				eligible = in
			}
			if e.f == faultEarly && len(eligible) > 0 {
				if err := s.Send(pick(eligible[0], eligible[0])); err != nil {
					return err
				}
			}
		case m.GetRequestBody() != nil:
			if e.f == styleLastMessage {
				eligible = pool
				if in, ok := e.eligible(m); ok {
					eligible = in
				}
			}
			body = append(body, m.GetRequestBody().GetBody()...)
			if !m.GetRequestBody().GetEndOfStream() {
				continue
			}
			if len(eligible) == 0 {
				return s.Send(&extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ImmediateResponse{
					ImmediateResponse: &extprocv3.ImmediateResponse{Status: &typev3.HttpStatus{Code: 503}},
				}})
			}
			dest := strings.Join(eligible, ",")
			header := dest
			switch e.f {
			case faultDisagree:
				header = eligible[len(eligible)-1]
			case faultOutside:
				dest, header = "10.9.9.9:80,"+dest, "10.9.9.9:80,"+dest
			}
			if e.f != faultEarly || len(eligible) == 0 {
				if err := s.Send(pick(header, dest)); err != nil {
					return err
				}
			}
			piece := 62000
			if e.f == faultBigChunks {
				piece = len(body)
			}
			for off := 0; off < len(body); off += piece {
				end := min(off+piece, len(body))
				if err := s.Send(streamed(false, body[off:end], end == len(body))); err != nil {
					return err
				}
			}
		case m.GetResponseHeaders() != nil:
			if e.f == styleDiesOnBareHeaders && m.GetResponseHeaders().GetHeaders() == nil {
				e.dead.Store(true)
				return status.Error(codes.Unavailable, "the scripted EPP died")
			}
			if err := s.Send(&extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ResponseHeaders{ResponseHeaders: &extprocv3.HeadersResponse{}}}); err != nil {
				return err
			}
		case m.GetResponseBody() != nil:
			if err := s.Send(streamed(true, m.GetResponseBody().GetBody(), m.GetResponseBody().GetEndOfStream())); err != nil {
				return err
			}
		}
	}
}

func pick(header, meta string) *extprocv3.ProcessingResponse {
	return &extprocv3.ProcessingResponse{
		Response: &extprocv3.ProcessingResponse_RequestHeaders{RequestHeaders: &extprocv3.HeadersResponse{Response: &extprocv3.CommonResponse{
			HeaderMutation: &extprocv3.HeaderMutation{SetHeaders: []*corev3.HeaderValueOption{{Header: &corev3.HeaderValue{Key: "x-gateway-destination-endpoint", RawValue: []byte(header)}}}},
		}}},
		DynamicMetadata: &structpb.Struct{Fields: map[string]*structpb.Value{"envoy.lb": structpb.NewStructValue(&structpb.Struct{
			Fields: map[string]*structpb.Value{"x-gateway-destination-endpoint": structpb.NewStringValue(meta)},
		})}},
	}
}

func streamed(response bool, b []byte, eos bool) *extprocv3.ProcessingResponse {
	br := &extprocv3.BodyResponse{Response: &extprocv3.CommonResponse{BodyMutation: &extprocv3.BodyMutation{
		Mutation: &extprocv3.BodyMutation_StreamedResponse{StreamedResponse: &extprocv3.StreamedBodyResponse{Body: b, EndOfStream: eos}},
	}}}
	if response {
		return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ResponseBody{ResponseBody: br}}
	}
	return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_RequestBody{RequestBody: br}}
}

func startScripted(t *testing.T, f fault) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer()
	extprocv3.RegisterExternalProcessorServer(g, &scripted{f: f})
	hs := health.NewServer()
	for _, svc := range []string{"liveness", "readiness", "envoy.service.ext_proc.v3.ExternalProcessor"} {
		hs.SetServingStatus(svc, healthpb.HealthCheckResponse_SERVING)
	}
	if f == faultNoHealth {
		hs.SetServingStatus("readiness", healthpb.HealthCheckResponse_NOT_SERVING)
	}
	healthpb.RegisterHealthServer(g, hs)
	go g.Serve(lis)
	t.Cleanup(g.Stop)
	return lis.Addr().String()
}

// protocolChecks are the checks a scripted EPP (no engines behind it) can pass.
var protocolChecks = []string{"health/liveness", "health/readiness", "health/ext_proc", "streaming-mode",
	"destination/header-metadata-agree", "destination/fallbacks-in-pool", "subset/list", "subset/string",
	"subset/empty-503", "subset/unsatisfiable-503", "served-accepted", "body/chunked-within-limits", "client-gone"}

// TestSuiteCatchesEachFault runs the suite against an EPP that breaks one rule at a time:
// the check for that rule fails (and says why), and the well-behaved EPP passes them all.
func TestSuiteCatchesEachFault(t *testing.T) {
	cases := []struct {
		f     fault
		fails []string
	}{
		{faultNone, nil},
		{faultDisagree, []string{"destination/header-metadata-agree"}},
		{faultOutside, []string{"destination/fallbacks-in-pool", "subset/list", "subset/string"}},
		{faultSubset, []string{"subset/list", "subset/string", "subset/empty-503", "subset/unsatisfiable-503"}},
		{faultEarly, []string{"streaming-mode"}},
		{faultNo503, []string{"subset/empty-503", "subset/unsatisfiable-503"}},
		{faultBigChunks, []string{"body/chunked-within-limits"}},
		{faultNoHealth, []string{"health/readiness"}},
		{faultStringSubset, []string{"subset/string"}},
		{faultStringTurns, []string{"subset/string"}},
		{styleDiesOnBareHeaders, nil},
		{styleLastMessage, nil},
	}
	for _, c := range cases {
		name := string(c.f)
		if name == "" {
			name = "well behaved"
		}
		t.Run(name, func(t *testing.T) {
			addr := startScripted(t, c.f)
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			rep, err := conformance.Run(ctx, conformance.Config{EPP: addr, Endpoints: pool, Model: "m", Timeout: 2 * time.Second}, nil)
			if err != nil {
				t.Fatal(err)
			}
			got := map[string]conformance.Result{}
			for _, r := range rep.Checks {
				got[r.Name] = r
			}
			for _, name := range protocolChecks {
				r := got[name]
				wantFail := false
				for _, f := range c.fails {
					wantFail = wantFail || f == name
				}
				switch {
				case wantFail && r.Pass:
					t.Errorf("%s passed against an EPP that %s: %s", name, c.f, r.Detail)
				case wantFail && r.Detail == "":
					t.Errorf("%s failed without saying why", name)
				case !wantFail && !r.Pass && name != "health/readiness" && name != "client-gone":
					t.Errorf("%s failed: %s", name, r.Detail)
				}
			}
			if len(c.fails) == 0 {
				for _, name := range []string{"health/readiness", "client-gone"} {
					if !got[name].Pass {
						t.Errorf("%s failed: %s", name, got[name].Detail)
					}
				}
			}
			if r := got["no-ready-endpoint-503"]; !r.Skipped {
				t.Errorf("no-ready-endpoint-503 ran without --unready-endpoint: %+v", r)
			}
		})
	}
}
