package gateway_test

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	filterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"golang.org/x/net/http/httpguts"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/kvgate/kvgate/gateway"
	"github.com/kvgate/kvgate/router"
)

// fuzzScript turns fuzz bytes into the messages a hostile EPP sends: picks naming pool,
// foreign and malformed destinations (header, metadata as string, list or number), body
// pieces, immediate responses with any status, header mutations of any name, and raw
// protobuf.
func fuzzScript(data []byte, pool, outside string) []*extprocv3.ProcessingResponse {
	var out []*extprocv3.ProcessingResponse
	next := func() byte {
		if len(data) == 0 {
			return 0
		}
		b := data[0]
		data = data[1:]
		return b
	}
	take := func(n int) []byte {
		n = min(n, len(data))
		b := data[:n]
		data = data[n:]
		return b
	}
	dests := []string{pool, outside, outside + "," + pool, "garbage", "", pool + ",,", "[::1]:x", pool + "," + pool}
	for len(data) > 0 && len(out) < 16 {
		switch op := next(); op % 8 {
		case 0, 6:
			d := dests[int(next())%len(dests)]
			m := pick(d, "")
			if op%8 == 6 {
				var v *structpb.Value
				switch next() % 4 {
				case 0:
					v = structpb.NewStringValue(d)
				case 1:
					v = structpb.NewListValue(&structpb.ListValue{Values: []*structpb.Value{structpb.NewStringValue(d), structpb.NewNumberValue(3)}})
				case 2:
					v = structpb.NewNumberValue(float64(next()))
				default:
					v = structpb.NewStructValue(&structpb.Struct{})
				}
				m.DynamicMetadata = &structpb.Struct{Fields: map[string]*structpb.Value{router.MetadataNamespace: structpb.NewStructValue(&structpb.Struct{Fields: map[string]*structpb.Value{router.HeaderDestination: v}})}}
			}
			if next()%2 == 0 {
				m.Response = &extprocv3.ProcessingResponse_RequestBody{RequestBody: &extprocv3.BodyResponse{Response: m.GetRequestHeaders().GetResponse()}}
			}
			out = append(out, m)
		case 1:
			out = append(out, streamedMsg(false, take(int(next())), next()%2 == 0))
		case 2:
			out = append(out, &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_RequestBody{RequestBody: &extprocv3.BodyResponse{
				Response: &extprocv3.CommonResponse{BodyMutation: &extprocv3.BodyMutation{Mutation: &extprocv3.BodyMutation_Body{Body: take(int(next()))}}},
			}}})
		case 3:
			code := int32(next())<<8 | int32(next())
			out = append(out, &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ImmediateResponse{ImmediateResponse: &extprocv3.ImmediateResponse{
				Status: &typev3.HttpStatus{Code: typev3.StatusCode(code)}, Body: take(int(next())),
				Headers: &extprocv3.HeaderMutation{SetHeaders: []*corev3.HeaderValueOption{{Header: &corev3.HeaderValue{Key: string(take(int(next() % 8))), RawValue: take(int(next() % 8))}}}},
			}}})
		case 4:
			keys := []string{":status", "content-length", "transfer-encoding", "x-a", "", "connection", string(take(4))}
			m := &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ResponseHeaders{ResponseHeaders: &extprocv3.HeadersResponse{Response: &extprocv3.CommonResponse{
				HeaderMutation: &extprocv3.HeaderMutation{
					SetHeaders:    []*corev3.HeaderValueOption{{Header: &corev3.HeaderValue{Key: keys[int(next())%len(keys)], Value: string(take(int(next() % 16)))}, AppendAction: corev3.HeaderValueOption_HeaderAppendAction(next() % 5)}},
					RemoveHeaders: []string{keys[int(next())%len(keys)]},
				},
			}}}}
			if b := next(); b%2 == 1 { // a mode_override, response body NONE (b 1) or another mode
				m.ModeOverride = &filterv3.ProcessingMode{ResponseBodyMode: filterv3.ProcessingMode_BodySendMode(b / 2 % 5), ResponseTrailerMode: filterv3.ProcessingMode_SEND}
			}
			out = append(out, m)
		case 5:
			out = append(out, streamedMsg(true, take(int(next())), next()%2 == 0))
		case 7:
			m := &extprocv3.ProcessingResponse{}
			if proto.Unmarshal(take(int(next())), m) == nil {
				out = append(out, m)
			}
		}
	}
	return out
}

// FuzzEPPResponses feeds arbitrary EPP answers to the remote-EPP data plane in both modes:
// it must never panic (other than the deliberate abort of a cut response), always answer,
// and never call an engine outside the pool.
func FuzzEPPResponses(f *testing.F) {
	engine := newEngine(f, func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "text/event-stream")
		fmt.Fprint(w, "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a\"}}]}\n\n")
		w.(http.Flusher).Flush()
		fmt.Fprint(w, "data: [DONE]\n\n")
	})
	outside := newEngine(f, func(w http.ResponseWriter, r *http.Request) {})
	var script atomic.Pointer[[]*extprocv3.ProcessingResponse]
	epp := startFakeTB(f, func(s extprocv3.ExternalProcessor_ProcessServer) error {
		msgs := *script.Load()
		go func() { // the requests are read and dropped
			for {
				if _, err := s.Recv(); err != nil {
					return
				}
			}
		}()
		for _, m := range msgs {
			if err := s.Send(m); err != nil {
				return nil
			}
		}
		return nil
	})
	gws := map[gateway.EPPMode]*gateway.Gateway{}
	for _, mode := range eppModes {
		g, err := gateway.NewEPP(gateway.Config{}, gateway.EPPConfig{Addr: epp, Mode: mode, Timeout: 50 * time.Millisecond,
			Pool: []router.Endpoint{{Address: engine.addr(), Models: []string{model}}}}, nil, nil)
		if err != nil {
			f.Fatal(err)
		}
		f.Cleanup(func() { g.Close() })
		gws[mode] = g
	}
	f.Add([]byte{0, 0, 1, 10, 0, 4, 0, 0, 0, 5, 20, 0})
	f.Add([]byte{1, 6, 0, 1, 0, 2, 30})
	f.Add([]byte{0, 3, 1, 0xf5, 4, 1, 2, 3, 4, 2, 1, 1})
	f.Add([]byte{0, 0, 2, 0, 1, 5, 0})
	// BUFFERED: a pick, then a response headers answer with a mode_override (body NONE).
	f.Add([]byte{1, 0, 0, 1, 0, 0, 0, 4, 'x', '-', 'b', 'c', 3, 0, 0, 3, 1})
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) == 0 {
			return
		}
		mode := eppModes[int(data[0])%len(eppModes)]
		msgs := fuzzScript(data[1:], engine.addr(), outside.addr())
		script.Store(&msgs)
		before := outside.hits.Load()
		rec := httptest.NewRecorder()
		req := httptest.NewRequest(http.MethodPost, "/v1/chat/completions", strings.NewReader(chat("fuzz", true)))
		func() {
			defer func() {
				if p := recover(); p != nil && p != http.ErrAbortHandler {
					t.Fatalf("panic: %v", p)
				}
			}()
			gws[mode].ServeHTTP(rec, req)
		}()
		if rec.Code == 0 {
			t.Fatal("no status")
		}
		for k, vs := range rec.Header() { // what HTTP cannot carry would corrupt the response
			for _, v := range vs {
				if !httpguts.ValidHeaderFieldName(k) || !httpguts.ValidHeaderFieldValue(v) {
					t.Fatalf("invalid response header %q: %q", k, v)
				}
			}
		}
		if outside.hits.Load() != before {
			t.Fatal("an engine outside the pool was called")
		}
	})
}

// pick is a request headers answer naming dest in the destination header (and in envoy.lb
// metadata when meta is set).
func pick(dest, meta string) *extprocv3.ProcessingResponse {
	m := &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_RequestHeaders{RequestHeaders: &extprocv3.HeadersResponse{Response: &extprocv3.CommonResponse{
		HeaderMutation: &extprocv3.HeaderMutation{SetHeaders: []*corev3.HeaderValueOption{{Header: &corev3.HeaderValue{Key: router.HeaderDestination, RawValue: []byte(dest)}}}},
	}}}}
	if meta != "" {
		m.DynamicMetadata = &structpb.Struct{Fields: map[string]*structpb.Value{router.MetadataNamespace: structpb.NewStructValue(&structpb.Struct{Fields: map[string]*structpb.Value{router.HeaderDestination: structpb.NewStringValue(meta)}})}}
	}
	return m
}
