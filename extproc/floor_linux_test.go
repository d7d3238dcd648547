package extproc_test

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"runtime"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	filterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/stats"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/kvgate/kvgate/engine"
	"github.com/kvgate/kvgate/extproc"
	"github.com/kvgate/kvgate/extproc/extproctest"
	"github.com/kvgate/kvgate/router"
)

// floorEnv makes TestCPUServer's child serve a protocol floor instead of kvgate's server:
// floorGRPC (a bare grpc-go ExternalProcessor answering canned responses) or floorTCP (raw
// loopback TCP ping-pong of the same sizes).
const floorEnv = cpuServerEnv + "_FLOOR"

const (
	floorGRPC = "grpc"
	floorTCP  = "tcp"
	floorUnix = "unix" // floorTCP's frames over a Unix domain socket
	// floorBlocking serves floorTCP's frames with blocking read and write system calls on
	// a thread of its own, outside Go's network poller: about what a C server would spend.
	floorBlocking = "blocking"
)

// startFloor starts the floor server kind on loopback and returns its address (for the raw
// floors with their network: "tcp:127.0.0.1:4000", "unix:/tmp/floor.sock").
func startFloor(t *testing.T, kind string) string {
	network, addr := "tcp", "127.0.0.1:0"
	if kind == floorUnix {
		network, addr = "unix", t.TempDir()+"/floor.sock"
	}
	lis, err := net.Listen(network, addr)
	if err != nil {
		t.Fatal(err)
	}
	switch kind {
	case floorGRPC:
		g := grpc.NewServer(extproc.ServerOptions()...)
		extprocv3.RegisterExternalProcessorServer(g, newCanned(os.Getenv(cpuServerEnv+"_SKIP") != ""))
		go func() { _ = g.Serve(lis) }()
		t.Cleanup(g.Stop)
	case floorTCP, floorUnix:
		go serveTCPFloor(lis)
		t.Cleanup(func() { lis.Close() })
	case floorBlocking:
		go serveBlockingFloor(lis)
		t.Cleanup(func() { lis.Close() })
	default:
		t.Fatalf("unknown floor %q", kind)
	}
	if kind == floorGRPC {
		return lis.Addr().String()
	}
	return lis.Addr().Network() + ":" + lis.Addr().String()
}

// canned is the bare ext_proc server of the protocol floor: each message is handled on the
// stream's handler goroutine (no goroutine of its own) and answered with what kvgate's
// server answers, in the same number of messages and about the same size, from canned
// parts: the pick's header mutation and metadata are built once, a body answer carries the
// body it answers (echoed as kvgate's server echoes it), and nothing is routed or parsed.
type canned struct {
	extprocv3.UnimplementedExternalProcessorServer

	pickMut *extprocv3.HeaderMutation // the pick: destination, endpoint, cached blocks, content-length
	md      *structpb.Struct          // the pick in envoy.lb metadata
	cont    *extprocv3.ProcessingResponse
	echo    *extprocv3.ProcessingResponse // the response headers answer
	trailer [2]*extprocv3.ProcessingResponse
	skip    bool // as kvgate with SkipResponseBody in exact mode: the body is not rewritten, the response body skipped
}

var _ extprocv3.ExternalProcessorServer = (*canned)(nil)

// newCanned is the canned server; with skip it answers as kvgate's server with
// SkipResponseBody whose router needs no usage (exact mode): the pick carries no rewritten
// body and the response headers answer stops the response body with a mode_override.
func newCanned(skip bool) *canned {
	set := func(kv ...string) *extprocv3.HeaderMutation {
		m := &extprocv3.HeaderMutation{}
		for i := 0; i < len(kv); i += 2 {
			m.SetHeaders = append(m.SetHeaders, &corev3.HeaderValueOption{
				Header:       &corev3.HeaderValue{Key: kv[i], RawValue: []byte(kv[i+1])},
				AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD,
			})
		}
		return m
	}
	dest := "127.0.0.1:1,127.0.0.1:2,127.0.0.1:3"
	echo := set(router.HeaderEndpoint, "127.0.0.1:1", router.HeaderCachedBlocks, "128")
	echoAnswer := &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ResponseHeaders{ResponseHeaders: &extprocv3.HeadersResponse{Response: &extprocv3.CommonResponse{HeaderMutation: echo}}}}
	if skip {
		echoAnswer.ModeOverride = &filterv3.ProcessingMode{
			RequestHeaderMode: filterv3.ProcessingMode_SEND, ResponseHeaderMode: filterv3.ProcessingMode_SEND,
			RequestBodyMode: filterv3.ProcessingMode_BUFFERED, ResponseBodyMode: filterv3.ProcessingMode_NONE,
			RequestTrailerMode: filterv3.ProcessingMode_SKIP, ResponseTrailerMode: filterv3.ProcessingMode_SEND,
		}
	} else {
		echo.RemoveHeaders = []string{"content-length"} // the usage chunk is cut
	}
	return &canned{
		skip:    skip,
		pickMut: set("content-length", "16536", router.HeaderDestination, dest, router.HeaderEndpoint, "127.0.0.1:1", router.HeaderCachedBlocks, "128"),
		md: &structpb.Struct{Fields: map[string]*structpb.Value{router.MetadataNamespace: structpb.NewStructValue(&structpb.Struct{
			Fields: map[string]*structpb.Value{router.HeaderDestination: structpb.NewStringValue(dest)},
		})}},
		cont: &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_RequestHeaders{RequestHeaders: &extprocv3.HeadersResponse{Response: &extprocv3.CommonResponse{}}}},
		echo: echoAnswer,
		trailer: [2]*extprocv3.ProcessingResponse{
			{Response: &extprocv3.ProcessingResponse_RequestTrailers{RequestTrailers: &extprocv3.TrailersResponse{}}},
			{Response: &extprocv3.ProcessingResponse_ResponseTrailers{ResponseTrailers: &extprocv3.TrailersResponse{}}},
		},
	}
}

// cannedState is what a canned stream remembers: the body modes from protocol_config.
type cannedState struct {
	reqFull, respFull bool
	out               [2]*extprocv3.ProcessingResponse
}

// Process answers each message on the handler goroutine until the client half-closes.
func (c *canned) Process(srv extprocv3.ExternalProcessor_ProcessServer) error {
	var st cannedState
	for {
		req, err := srv.Recv()
		if err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
		for _, r := range c.answer(&st, req) {
			if err := srv.Send(r); err != nil {
				return err
			}
		}
	}
}

// cannedBody is a body answer with its parts in one allocation.
type cannedBody struct {
	pr          extprocv3.ProcessingResponse
	req         extprocv3.ProcessingResponse_RequestBody
	resp        extprocv3.ProcessingResponse_ResponseBody
	br          extprocv3.BodyResponse
	cr          extprocv3.CommonResponse
	bm          extprocv3.BodyMutation
	whole       extprocv3.BodyMutation_Body
	streamed    extprocv3.BodyMutation_StreamedResponse
	streamedMsg extprocv3.StreamedBodyResponse
}

// bodyAnswer answers a body message with body: streamed (FULL_DUPLEX_STREAMED) or as a
// whole-body mutation.
func bodyAnswer(response, streamed bool, body []byte, end bool) *cannedBody {
	m := &cannedBody{}
	if streamed {
		m.streamedMsg.Body, m.streamedMsg.EndOfStream = body, end
		m.streamed.StreamedResponse = &m.streamedMsg
		m.bm.Mutation = &m.streamed
	} else {
		m.whole.Body = body
		m.bm.Mutation = &m.whole
	}
	m.cr.BodyMutation = &m.bm
	m.br.Response = &m.cr
	if response {
		m.resp.ResponseBody = &m.br
		m.pr.Response = &m.resp
	} else {
		m.req.RequestBody = &m.br
		m.pr.Response = &m.req
	}
	return m
}

// answer is what kvgate's server answers to req, canned: in FULL_DUPLEX_STREAMED nothing to
// the request headers, the pick (headers answer) and the body echoed at the body's end, each
// response chunk echoed; in BUFFERED/STREAMED a CONTINUE to the request headers, the pick
// with the body (the router's rewritten body) on the body answer, each response chunk back
// as a body mutation (the usage chunk cut); the response headers answer with kvgate's
// headers either way (with skip, see newCanned).
func (c *canned) answer(st *cannedState, req *extprocv3.ProcessingRequest) []*extprocv3.ProcessingResponse {
	if pc := req.GetProtocolConfig(); pc != nil {
		st.reqFull = pc.GetRequestBodyMode() == filterv3.ProcessingMode_FULL_DUPLEX_STREAMED
		st.respFull = pc.GetResponseBodyMode() == filterv3.ProcessingMode_FULL_DUPLEX_STREAMED
	}
	out := st.out[:0]
	switch v := req.GetRequest().(type) {
	case *extprocv3.ProcessingRequest_RequestHeaders:
		if !st.reqFull {
			out = append(out, c.cont)
		}
	case *extprocv3.ProcessingRequest_RequestBody:
		b := v.RequestBody
		if !st.reqFull {
			m := bodyAnswer(false, false, b.GetBody(), false)
			m.cr.HeaderMutation, m.cr.ClearRouteCache, m.pr.DynamicMetadata = c.pickMut, true, c.md
			if c.skip { // usage not forced: the body goes on as it came
				m.cr.BodyMutation = nil
			}
			out = append(out, &m.pr)
		} else if b.GetEndOfStream() {
			pick := &extprocv3.ProcessingResponse{
				Response: &extprocv3.ProcessingResponse_RequestHeaders{RequestHeaders: &extprocv3.HeadersResponse{
					Response: &extprocv3.CommonResponse{HeaderMutation: c.pickMut, ClearRouteCache: true},
				}},
				DynamicMetadata: c.md,
			}
			out = append(out, pick, &bodyAnswer(false, true, b.GetBody(), true).pr)
		}
	case *extprocv3.ProcessingRequest_ResponseHeaders:
		out = append(out, c.echo)
	case *extprocv3.ProcessingRequest_ResponseBody:
		b := v.ResponseBody
		out = append(out, &bodyAnswer(true, st.respFull, b.GetBody(), b.GetEndOfStream()).pr)
	case *extprocv3.ProcessingRequest_RequestTrailers:
		out = append(out, c.trailer[0])
	case *extprocv3.ProcessingRequest_ResponseTrailers:
		out = append(out, c.trailer[1])
	}
	return out
}

// The raw TCP floor: each ext_proc message is a frame, a 4-byte length, a 4-byte answer
// length and the payload; the server reads it and writes the answer (a 4-byte length and
// that many bytes) in one write, as gRPC's writer does for the answers of one message. The
// client sends the frames of one round back to back and then reads their answers, as Envoy
// waits for answers in each mode.

// tcpFrame is one message of the TCP floor: its size and the size of its answer (0: none;
// the answers of a message are one).
type tcpFrame struct{ size, answer int }

// grpcPrefix is gRPC's message prefix (a flag and a 4-byte length).
const grpcPrefix = 5

// tcpEnd is the stream's end: the client's half-close (an empty frame) and the server's
// status (gRPC's trailers, about this size).
var tcpEnd = tcpFrame{size: 0, answer: 16}

// tcpRounds is the TCP floor's script for one request of mode: the messages Envoy sends for
// req and up as frames of their gRPC sizes, answered by the canned answers' sizes, grouped
// into the rounds in which Envoy waits for the answers; with skip, as an Envoy honouring the
// canned mode_override (no response body).
func tcpRounds(mode extproctest.Mode, req extproctest.Request, up extproctest.Upstream, skip bool) [][]tcpFrame {
	c := newCanned(skip)
	var st cannedState
	frame := func(m *extprocv3.ProcessingRequest) tcpFrame {
		f := tcpFrame{size: grpcPrefix + proto.Size(m)}
		for _, a := range c.answer(&st, m) {
			f.answer += grpcPrefix + proto.Size(a)
		}
		return f
	}
	var reqFrames, respFrames []tcpFrame
	for _, m := range extproctest.RequestMessages(mode, req) {
		reqFrames = append(reqFrames, frame(m))
	}
	for _, m := range extproctest.ResponseMessages(mode, up, true) {
		respFrames = append(respFrames, frame(m))
		if skip { // the mode_override on the headers answer stops the body
			break
		}
	}
	if mode.RequestBody == filterv3.ProcessingMode_FULL_DUPLEX_STREAMED {
		// Everything goes out without waiting; the answers are read after each half.
		return [][]tcpFrame{reqFrames, respFrames, {tcpEnd}}
	}
	var rounds [][]tcpFrame
	for _, f := range append(reqFrames, respFrames...) {
		rounds = append(rounds, []tcpFrame{f})
	}
	return append(rounds, []tcpFrame{tcpEnd})
}

// serveTCPFloor serves the TCP floor on lis: one goroutine per connection reads each frame
// and writes its answer.
func serveTCPFloor(lis net.Listener) {
	for {
		conn, err := lis.Accept()
		if err != nil {
			return
		}
		go func() {
			defer conn.Close()
			r := bufio.NewReaderSize(conn, 32<<10) // gRPC's read buffer
			var hdr [8]byte
			var in, out []byte
			for {
				if _, err := io.ReadFull(r, hdr[:]); err != nil {
					return
				}
				n, answer := int(binary.BigEndian.Uint32(hdr[:4])), int(binary.BigEndian.Uint32(hdr[4:]))
				if n > 1<<24 || answer > 1<<24 {
					return
				}
				if cap(in) < n {
					in = make([]byte, n)
				}
				if _, err := io.ReadFull(r, in[:n]); err != nil {
					return
				}
				if answer == 0 {
					continue
				}
				if cap(out) < 4+answer {
					out = make([]byte, 4+answer)
				}
				out = out[:4+answer]
				binary.BigEndian.PutUint32(out, uint32(answer))
				if _, err := conn.Write(out); err != nil {
					return
				}
			}
		}()
	}
}

// serveBlockingFloor serves the TCP floor on lis like serveTCPFloor, each connection on an
// OS thread of its own reading and writing its socket with blocking system calls: one read
// per arrival of data and one write per answer, no readiness polling or goroutine parking.
func serveBlockingFloor(lis net.Listener) {
	for {
		conn, err := lis.Accept()
		if err != nil {
			return
		}
		f, err := conn.(*net.TCPConn).File() // a duplicate of the socket
		conn.Close()
		if err != nil {
			return
		}
		go func() {
			runtime.LockOSThread()
			defer f.Close()
			fd := int(f.Fd()) // Fd puts the descriptor in blocking mode
			if syscall.SetNonblock(fd, false) != nil {
				return
			}
			buf := make([]byte, 0, 64<<10)
			var out []byte
			for {
				// One whole frame: its header, then its payload.
				for len(buf) < 8 || len(buf) < 8+int(binary.BigEndian.Uint32(buf[:4])) {
					if len(buf) >= 8 {
						if need := 8 + int(binary.BigEndian.Uint32(buf[:4])); need > 1<<24 {
							return
						} else if need > cap(buf) {
							buf = append(make([]byte, 0, need), buf...)
						}
					}
					n, err := syscall.Read(fd, buf[len(buf):cap(buf)])
					if err == syscall.EINTR {
						continue
					}
					if err != nil || n <= 0 {
						return
					}
					buf = buf[:len(buf)+n]
				}
				size, answer := int(binary.BigEndian.Uint32(buf[:4])), int(binary.BigEndian.Uint32(buf[4:8]))
				buf = buf[:copy(buf, buf[8+size:])]
				if answer == 0 {
					continue
				}
				if answer > 1<<24 {
					return
				}
				if cap(out) < 4+answer {
					out = make([]byte, 4+answer)
				}
				out = out[:4+answer]
				binary.BigEndian.PutUint32(out, uint32(answer))
				for w := out; len(w) > 0; {
					n, err := syscall.Write(fd, w)
					if err == syscall.EINTR {
						continue
					}
					if err != nil {
						return
					}
					w = w[n:]
				}
			}
		}()
	}
}

// tcpClient plays Envoy's side of the TCP floor over one connection.
type tcpClient struct {
	conn net.Conn
	r    *bufio.Reader
	buf  []byte
}

// dialTCPFloor connects to a TCP floor at network:address ("tcp:127.0.0.1:4000",
// "unix:/tmp/floor.sock").
func dialTCPFloor(addr string) (*tcpClient, error) {
	network, address, _ := strings.Cut(addr, ":")
	conn, err := net.Dial(network, address)
	if err != nil {
		return nil, err
	}
	return &tcpClient{conn: conn, r: bufio.NewReaderSize(conn, 32<<10)}, nil
}

// do runs one request's rounds: each round's frames go out as one write each, then their
// answers are read. It returns the bytes sent and received.
func (c *tcpClient) do(rounds [][]tcpFrame) (sent, received int, err error) {
	for _, round := range rounds {
		for _, f := range round {
			if cap(c.buf) < 8+f.size {
				c.buf = make([]byte, 8+f.size)
			}
			b := c.buf[:8+f.size]
			binary.BigEndian.PutUint32(b, uint32(f.size))
			binary.BigEndian.PutUint32(b[4:], uint32(f.answer))
			if _, err := c.conn.Write(b); err != nil {
				return sent, received, err
			}
			sent += f.size
		}
		for _, f := range round {
			if f.answer == 0 {
				continue
			}
			var hdr [4]byte
			if _, err := io.ReadFull(c.r, hdr[:]); err != nil {
				return sent, received, err
			}
			n := int(binary.BigEndian.Uint32(hdr[:]))
			if n != f.answer {
				return sent, received, fmt.Errorf("answer of %d bytes, want %d", n, f.answer)
			}
			if _, err := c.r.Discard(n); err != nil {
				return sent, received, err
			}
			received += n
		}
	}
	return sent, received, nil
}

// wireCount is a client stats handler counting the gRPC message bytes (with gRPC's prefix)
// each way.
type wireCount struct{ in, out atomic.Int64 }

func (w *wireCount) TagRPC(ctx context.Context, _ *stats.RPCTagInfo) context.Context { return ctx }
func (w *wireCount) HandleRPC(_ context.Context, s stats.RPCStats) {
	switch p := s.(type) {
	case *stats.InPayload:
		w.in.Add(int64(p.WireLength))
	case *stats.OutPayload:
		w.out.Add(int64(p.WireLength))
	}
}
func (w *wireCount) TagConn(ctx context.Context, _ *stats.ConnTagInfo) context.Context { return ctx }
func (w *wireCount) HandleConn(context.Context, stats.ConnStats)                       {}

var floorModes = []struct {
	name string
	mode extproctest.Mode
	skip bool // kvgate's server with SkipResponseBody in exact mode, an Envoy with allow_mode_override: 6 messages
}{
	{"full-duplex", extproctest.Mode{RequestBody: filterv3.ProcessingMode_FULL_DUPLEX_STREAMED, ResponseBody: filterv3.ProcessingMode_FULL_DUPLEX_STREAMED}, false},
	{"buffered", extproctest.Mode{RequestBody: filterv3.ProcessingMode_BUFFERED, ResponseBody: filterv3.ProcessingMode_STREAMED}, false},
	{"buffered-skip", extproctest.Mode{RequestBody: filterv3.ProcessingMode_BUFFERED, ResponseBody: filterv3.ProcessingMode_STREAMED}, true},
}

// BenchmarkExtProcFloor puts kvgate's ext_proc server beside two floors, in one run, on the
// same requests as BenchmarkExtProcCPU (4,096-token chat bodies, the pick, three SSE chunks):
// (a) grpc-*: a bare grpc-go ExternalProcessor server (kvgate's server options) that answers
// every message with a canned answer of the same count and about the same size, on the
// handler goroutine, parsing and routing nothing; (b) tcp-*: raw loopback TCP with the same
// messages as frames of the same sizes, in the same rounds (one server read per frame, one
// write per answered frame, as few as a server could make); unix-*: the same over a Unix
// domain socket; blocking-*: the same TCP frames served with blocking system calls on a
// thread of its own, without Go's network poller (readiness polling, parking and waking the
// goroutine): about a C server's cost, the kernel's share. Each server is a process of its
// own, driven one request each in turn, its own CPU (getrusage) measured. kvgate's protocol
// share is its server CPU minus the decision's (router.Route in this process); the ratios
// protocol/grpc and protocol/tcp say how much of it is kvgate's own code and how much grpc-go
// and the kernel, grpc/tcp how much of the bare server is grpc-go's.
func BenchmarkExtProcFloor(b *testing.B) {
	bodies := prose4k(b, 64)
	for _, m := range floorModes {
		b.Run(m.name, func(b *testing.B) {
			var env []string
			if m.skip {
				env = append(env, cpuServerEnv+"_SKIP=1")
			}
			real := &cpuRun{prefix: "", srv: startCPUServer(b, os.Args[0], env...)}
			var realWire wireCount
			real.do = extprocRequests(b, real, m.mode, m.skip, bodies, cachedUpstream, []grpc.DialOption{grpc.WithStatsHandler(&realWire)})
			bare := &cpuRun{prefix: "grpc-", srv: startCPUServer(b, os.Args[0], append(env, floorEnv+"="+floorGRPC)...)}
			var bareWire wireCount
			bare.do = extprocRequests(b, bare, m.mode, m.skip, bodies, cachedUpstream, []grpc.DialOption{grpc.WithStatsHandler(&bareWire)})
			tcp := &cpuRun{prefix: "tcp-", srv: startCPUServer(b, os.Args[0], floorEnv+"="+floorTCP)}
			tc, err := dialTCPFloor(tcp.srv.addr)
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { tc.conn.Close() })
			// The TCP script: the rounds of each body, with an upstream answer of the size
			// kvgate's requests get.
			rounds := make([][][]tcpFrame, len(bodies))
			var tcpBytes int
			for i, body := range bodies {
				req := extproctest.Request{Method: "POST", Path: "/v1/chat/completions", Header: http.Header{"Content-Type": {"application/json"}}, Body: body}
				rounds[i] = tcpRounds(m.mode, req, cachedUpstream(&extproctest.Result{Header: http.Header{router.HeaderCachedBlocks: {"128"}}}), m.skip)
			}
			var tcpMsgs int
			for _, r := range rounds[0] {
				for _, f := range r {
					if f != tcpEnd {
						tcpMsgs++
						if f.answer > 0 {
							tcpMsgs++ // counted as one answer, whatever it holds
						}
					}
				}
			}
			tcp.do = func(i int) {
				s, r, err := tc.do(rounds[i%len(rounds)])
				if err != nil {
					b.Fatal(err)
				}
				tcpBytes += s + r
				tcp.msgs += tcpMsgs
			}
			unix := &cpuRun{prefix: "unix-", srv: startCPUServer(b, os.Args[0], floorEnv+"="+floorUnix)}
			uc, err := dialTCPFloor(unix.srv.addr)
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { uc.conn.Close() })
			unix.do = func(i int) {
				if _, _, err := uc.do(rounds[i%len(rounds)]); err != nil {
					b.Fatal(err)
				}
				unix.msgs += tcpMsgs
			}
			block := &cpuRun{prefix: "blocking-", srv: startCPUServer(b, os.Args[0], floorEnv+"="+floorBlocking)}
			bc, err := dialTCPFloor(block.srv.addr)
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { bc.conn.Close() })
			block.do = func(i int) {
				if _, _, err := bc.do(rounds[i%len(rounds)]); err != nil {
					b.Fatal(err)
				}
				block.msgs += tcpMsgs
			}
			runs := []*cpuRun{real, bare, tcp, unix, block}
			realWire.in.Store(0)
			realWire.out.Store(0)
			bareWire.in.Store(0)
			bareWire.out.Store(0)
			n := driveCPU(b, runs, len(bodies))
			for _, r := range runs {
				r.report(b)
			}
			// Bytes on the wire per request, both ways (gRPC messages with their prefix),
			// warm-up included: the floors carry what kvgate's server does.
			warm := float64(n + len(bodies))
			b.ReportMetric(float64(realWire.in.Load()+realWire.out.Load())/warm, "wire-B/req")
			b.ReportMetric(float64(bareWire.in.Load()+bareWire.out.Load())/warm, "grpc-wire-B/req")
			b.ReportMetric(float64(tcpBytes)/warm, "tcp-wire-B/req")
			decision := decisionCPU(b, bodies, n, m.skip)
			protocol := real.cpu - decision
			b.ReportMetric(protocol, "protocol-µs-cpu/req")
			if bare.cpu > 0 && tcp.cpu > 0 {
				b.ReportMetric(protocol/bare.cpu, "protocol/grpc")
				b.ReportMetric(protocol/tcp.cpu, "protocol/tcp")
				b.ReportMetric(bare.cpu/tcp.cpu, "grpc/tcp")
			}
			if unix.cpu > 0 && block.cpu > 0 {
				b.ReportMetric(tcp.cpu/unix.cpu, "tcp/unix")
				b.ReportMetric(tcp.cpu/block.cpu, "tcp/blocking")
			}
		})
	}
}

// TestFloorServers checks BenchmarkExtProcFloor's floors against kvgate's server: on the
// benchmark's request, in each mode, the canned gRPC server answers what the Envoy-like
// client accepts, with as many messages as kvgate's server and within 2% of its bytes;
// the raw floors (TCP, Unix socket, blocking TCP) move the same bytes; and their script has the same
// messages.
func TestFloorServers(t *testing.T) {
	var bare [2]net.Listener // canned answers, without and with skip
	for i := range bare {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		g := grpc.NewServer(extproc.ServerOptions()...)
		extprocv3.RegisterExternalProcessorServer(g, newCanned(i == 1))
		go func() { _ = g.Serve(l) }()
		defer g.Stop()
		bare[i] = l
	}
	tl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer tl.Close()
	go serveTCPFloor(tl)
	bl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer bl.Close()
	go serveBlockingFloor(bl)
	ul, err := net.Listen("unix", t.TempDir()+"/floor.sock")
	if err != nil {
		t.Fatal(err)
	}
	defer ul.Close()
	go serveTCPFloor(ul)
	// kvgate's servers: as BenchmarkExtProcFloor's child, without and with skip.
	f := startRouter(t, extproc.Config{}, func(c *router.Config) { c.Policy = router.DefaultConfig().Policy })
	fs := startRouter(t, extproc.Config{SkipResponseBody: true}, func(c *router.Config) {
		c.Policy = router.DefaultConfig().Policy
		c.ForceStreamUsage = false
	})
	for _, ep := range endpoints {
		fs.router.ApplyEvents(ep.Name, engine.EventBatch{})
	}

	body := prose4k(t, 1)[0]
	req := extproctest.Request{Method: "POST", Path: "/v1/chat/completions", Header: http.Header{"Content-Type": {"application/json"}}, Body: body}
	for _, m := range floorModes {
		t.Run(m.name, func(t *testing.T) {
			var realWire, bareWire wireCount
			srv, bareAddr := f.server, bare[0].Addr().String()
			if m.skip {
				srv, bareAddr = fs.server, bare[1].Addr().String()
			}
			addr, err := srv.Addr(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			rc, err := extproctest.DialOptions(addr.String(), nil, grpc.WithStatsHandler(&realWire))
			if err != nil {
				t.Fatal(err)
			}
			defer rc.Close()
			bc, err := extproctest.DialOptions(bareAddr, nil, grpc.WithStatsHandler(&bareWire))
			if err != nil {
				t.Fatal(err)
			}
			defer bc.Close()
			rc.EarlyWait, bc.EarlyWait = -1, -1
			rc.AllowModeOverride, bc.AllowModeOverride = m.skip, m.skip
			realRes, err := rc.Do(context.Background(), m.mode, req, cachedUpstream)
			if err != nil || realRes.Immediate != nil {
				t.Fatalf("kvgate's server: %v %+v", err, realRes)
			}
			bareRes, err := bc.Do(context.Background(), m.mode, req, cachedUpstream)
			if err != nil || bareRes.Immediate != nil {
				t.Fatalf("the canned server: %v %+v", err, bareRes)
			}
			if bareRes.Sent != realRes.Sent || bareRes.Messages != realRes.Messages {
				t.Errorf("canned server: %d messages in, %d out; kvgate's: %d in, %d out", bareRes.Sent, bareRes.Messages, realRes.Sent, realRes.Messages)
			}
			if len(bareRes.Body) != len(body) || len(bareRes.ResponseBody) == 0 {
				t.Errorf("canned server: request body of %d bytes back (sent %d), response body %q", len(bareRes.Body), len(body), bareRes.ResponseBody)
			}
			rw, bw := realWire.in.Load()+realWire.out.Load(), bareWire.in.Load()+bareWire.out.Load()
			if d := float64(bw-rw) / float64(rw); d < -0.02 || d > 0.02 {
				t.Errorf("canned server moved %d bytes, kvgate's %d (%.1f%%)", bw, rw, 100*d)
			}

			if (realRes.ModeOverride != nil) != m.skip || (bareRes.ModeOverride != nil) != m.skip {
				t.Errorf("mode_override applied: kvgate's server %v, canned %v; want %v", realRes.ModeOverride != nil, bareRes.ModeOverride != nil, m.skip)
			}
			rounds := tcpRounds(m.mode, req, cachedUpstream(&extproctest.Result{Header: http.Header{router.HeaderCachedBlocks: {"128"}}}), m.skip)
			frames, answers := 0, 0
			for _, r := range rounds {
				for _, fr := range r {
					if fr != tcpEnd {
						frames++
						if fr.answer > 0 {
							answers++
						}
					}
				}
			}
			if frames != realRes.Sent {
				t.Errorf("TCP script: %d frames, kvgate's client sent %d messages", frames, realRes.Sent)
			}
			var sent, received int
			for _, addr := range []string{"tcp:" + tl.Addr().String(), "unix:" + ul.Addr().String(), "tcp:" + bl.Addr().String()} {
				tc, err := dialTCPFloor(addr)
				if err != nil {
					t.Fatal(err)
				}
				defer tc.conn.Close()
				sent, received, err = tc.do(rounds)
				if err != nil {
					t.Fatalf("%s: %v", addr, err)
				}
				if d := float64(int64(sent+received)-rw) / float64(rw); d < -0.02 || d > 0.02 {
					t.Errorf("%s floor moved %d bytes, kvgate's server %d (%.1f%%)", addr, sent+received, rw, 100*d)
				}
			}
			t.Logf("messages in/out %d/%d (TCP: %d frames, %d answer writes); bytes: kvgate %d, canned %d, TCP %d",
				realRes.Sent, realRes.Messages, frames, answers, rw, bw, sent+received)
		})
	}
}
