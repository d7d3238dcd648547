package extproc

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"io"
	"testing"

	filterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	"github.com/kvgate/kvgate/engine"
	"github.com/kvgate/kvgate/extproc/extproctest"
	"github.com/kvgate/kvgate/router"
	"github.com/kvgate/kvgate/tokenizer"
)

// fakeStream is the server side of one ext_proc stream fed from a list of messages, then
// io.EOF (the proxy half-closing).
type fakeStream struct {
	grpc.ServerStream
	ctx  context.Context
	msgs []*extprocv3.ProcessingRequest
	sent int
}

func (f *fakeStream) Context() context.Context { return f.ctx }
func (f *fakeStream) Send(*extprocv3.ProcessingResponse) error {
	f.sent++
	return nil
}
func (f *fakeStream) Recv() (*extprocv3.ProcessingRequest, error) {
	if len(f.msgs) == 0 {
		return nil, io.EOF
	}
	m := f.msgs[0]
	f.msgs = f.msgs[1:]
	return m, nil
}

// encodeMessages frames msgs as the fuzz input: each a 2-byte length and its protobuf.
func encodeMessages(msgs []*extprocv3.ProcessingRequest) []byte {
	var out []byte
	for _, m := range msgs {
		b, _ := proto.Marshal(m)
		out = binary.BigEndian.AppendUint16(out, uint16(len(b)))
		out = append(out, b...)
	}
	return out
}

// decodeMessages is encodeMessages' inverse; frames that are not a ProcessingRequest are
// skipped, a short tail ends the list.
func decodeMessages(data []byte) []*extprocv3.ProcessingRequest {
	var out []*extprocv3.ProcessingRequest
	for len(data) >= 2 {
		n := int(binary.BigEndian.Uint16(data))
		data = data[2:]
		if n > len(data) {
			n = len(data)
		}
		m := &extprocv3.ProcessingRequest{}
		if proto.Unmarshal(data[:n], m) == nil {
			out = append(out, m)
		}
		data = data[n:]
	}
	return out
}

// FuzzProcess feeds arbitrary ProcessingRequest sequences through a stream: the server must
// not panic, and once the stream ends no load stays on the router and no byte stays counted
// as buffered. Each sequence goes through two servers: one in approximate mode, one with
// SkipResponseBody whose router knows every endpoint from KV events (so it skips bodies).
func FuzzProcess(f *testing.F) {
	body, _ := json.Marshal(map[string]any{"model": tokenizer.DefaultModel, "stream": true,
		"messages": []map[string]string{{"role": "user", "content": "hello fuzz"}}})
	req := extproctest.Request{Method: "POST", Path: "/v1/chat/completions", Body: body, Subset: []string{"127.0.0.1:1"}}
	up := extproctest.Upstream{Chunks: [][]byte{[]byte("data: {\"choices\":[]}\n\n"), []byte("data: [DONE]\n\n")}, Served: "127.0.0.1:2"}
	for _, mode := range []extproctest.Mode{
		{RequestBody: filterv3.ProcessingMode_BUFFERED, ResponseBody: filterv3.ProcessingMode_STREAMED},
		{RequestBody: filterv3.ProcessingMode_FULL_DUPLEX_STREAMED, ResponseBody: filterv3.ProcessingMode_FULL_DUPLEX_STREAMED, RequestChunk: 7},
		{RequestBody: filterv3.ProcessingMode_STREAMED},
	} {
		msgs := extproctest.RequestMessages(mode, req)
		f.Add(encodeMessages(msgs))
		f.Add(encodeMessages(append(msgs, extproctest.ResponseMessages(mode, up, true)...)))
		f.Add(encodeMessages(append(msgs, extproctest.ResponseMessages(mode, up, false)...)))
	}
	rc := router.DefaultConfig()
	rc.Policy = router.PolicyRoundRobin
	rc.ScrapeInterval = -1
	rc.Endpoints = []router.Endpoint{
		{Name: "a", Address: "127.0.0.1:1", Models: []string{tokenizer.DefaultModel}, BlockSize: 16},
		{Name: "b", Address: "127.0.0.1:2", Models: []string{tokenizer.DefaultModel}, BlockSize: 16},
	}
	type server struct {
		rt *router.Router
		s  *Server
	}
	var servers []server
	for _, skip := range []bool{false, true} {
		rc.ForceStreamUsage = !skip
		rt, err := router.New(rc, nil, nil)
		if err != nil {
			f.Fatal(err)
		}
		if skip {
			for _, ep := range rc.Endpoints {
				rt.ApplyEvents(ep.Name, engine.EventBatch{})
			}
		}
		s, err := New(Config{MaxBodyBytes: 1 << 16, MaxBufferedBytes: 1 << 17, SkipResponseBody: skip}, rt, nil, nil)
		if err != nil {
			f.Fatal(err)
		}
		servers = append(servers, server{rt, s})
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, sv := range servers {
			ctx, cancel := context.WithCancel(context.Background())
			_ = sv.s.Process(&fakeStream{ctx: ctx, msgs: decodeMessages(data)})
			cancel()
			for _, l := range sv.rt.Load() {
				if l.Requests != 0 || l.PrefillTokens != 0 || l.DecodeBlocks != 0 {
					t.Fatalf("load left after the stream ended (skip=%v): %+v", sv.s.cfg.SkipResponseBody, l)
				}
			}
			if b := sv.s.buffered.Load(); b != 0 {
				t.Fatalf("%d bytes still counted as buffered", b)
			}
		}
	})
}
