// Package extproctest is an ext_proc client that plays Envoy's part of the protocol message
// by message, for testing and measuring ext_proc servers without an Envoy binary.
package extproctest

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	filterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/structpb"
)

// Metadata namespaces and keys of the Endpoint Picker Protocol, as the proxy uses them.
const (
	SubsetNamespace = "envoy.lb.subset_hint"
	SubsetKey       = "x-gateway-destination-endpoint-subset"
	LBNamespace     = "envoy.lb"
	ServedKey       = "x-gateway-destination-endpoint-served"
)

// Mode is the filter's processing mode: how each body is sent.
type Mode struct {
	RequestBody  filterv3.ProcessingMode_BodySendMode // BUFFERED or FULL_DUPLEX_STREAMED
	ResponseBody filterv3.ProcessingMode_BodySendMode // NONE, STREAMED, BUFFERED or FULL_DUPLEX_STREAMED
	// RequestChunk splits a FULL_DUPLEX_STREAMED request body into pieces of this size, as a
	// client's writes would arrive (0: one piece).
	RequestChunk int
	// RequestTrailers ends the request with trailers instead of end_of_stream on the body.
	RequestTrailers bool
	// ResponseTrailers ends the response with trailers.
	ResponseTrailers bool
}

// Request is the downstream request the proxy received.
type Request struct {
	Method, Path string
	Header       http.Header
	Body         []byte
	// Subset, when non-nil, is sent as the subset hint filter metadata.
	Subset []string
}

// Upstream is what the picked upstream answers.
type Upstream struct {
	Status int
	Header http.Header
	Chunks [][]byte // the response body as it arrives
	Served string   // the endpoint the proxy reports having used ("" sends none)
}

// Result is everything the proxy learned from the server.
type Result struct {
	// Immediate is set when the server ended the request itself; nothing else is then.
	Immediate *extprocv3.ImmediateResponse
	// Header is the request header after the server's mutation, as sent upstream.
	Header http.Header
	// Metadata is the dynamic metadata the server sent with its pick.
	Metadata *structpb.Struct
	// Body is the request body as sent upstream; BodyChunks the sizes of its streamed pieces.
	Body       []byte
	BodyChunks []int
	// ClearRouteCache reports that the pick asked the proxy to recompute the route.
	ClearRouteCache bool
	// EarlyHeaders reports that in FULL_DUPLEX_STREAMED the server answered before the whole
	// request body was sent (a protocol violation for a server that mutates headers).
	EarlyHeaders bool
	// ResponseHeader is the response header after mutation; ResponseBody the body as the
	// proxy forwards it downstream.
	ResponseHeader http.Header
	ResponseBody   []byte
	// Messages counts the messages the server sent; Sent those the client sent.
	Messages, Sent int
	// ModeOverride is the processing mode the server's response headers answer switched the
	// rest of the response to, as Envoy applied it (nil: none applied).
	ModeOverride *filterv3.ProcessingMode
	// ClosedAtHeaders reports that, as Envoy 1.37+ does once nothing more is to be sent, the
	// client closed the stream right after the response headers answer, before the response
	// body went downstream: a server releasing load at the stream's end would release it at
	// the response's start.
	ClosedAtHeaders bool
}

// Destination returns the picked endpoint list from the dynamic metadata.
func (r *Result) Destination() string {
	return r.Metadata.GetFields()[LBNamespace].GetStructValue().GetFields()["x-gateway-destination-endpoint"].GetStringValue()
}

// Client is an ext_proc client over one gRPC connection.
type Client struct {
	conn *grpc.ClientConn
	c    extprocv3.ExternalProcessorClient
	// EarlyWait is how long, in FULL_DUPLEX_STREAMED, the client waits before sending the
	// last body piece to catch a server that answers too early. Zero: 20ms; negative: no
	// wait (benchmarks).
	EarlyWait time.Duration
	// AllowModeOverride is the filter's allow_mode_override: the client then applies a
	// mode_override on the answer to the response headers as Envoy does (not when either
	// configured body mode is FULL_DUPLEX_STREAMED; a DEFAULT trailer mode keeps the
	// configured one), and sends the response body and trailers by the new mode. Without it
	// a mode_override is ignored, as Envoy ignores it.
	AllowModeOverride bool
}

// envoyWindow is Envoy's default HTTP/2 stream and connection window (256 MiB).
const envoyWindow = 256 << 20

// Dial connects to an ext_proc server at addr (host:port) without TLS.
func Dial(addr string) (*Client, error) { return DialTLS(addr, nil) }

// DialTLS connects to an ext_proc server at addr over TLS configured by tc (with
// Certificates set: mutual TLS); a nil tc means plaintext.
func DialTLS(addr string, tc *tls.Config) (*Client, error) { return DialOptions(addr, tc) }

// DialOptions is DialTLS with more options for the connection (a stats handler counting
// the bytes on the wire, for example), applied after the client's own.
func DialOptions(addr string, tc *tls.Config, opts ...grpc.DialOption) (*Client, error) {
	creds := insecure.NewCredentials()
	if tc != nil {
		creds = credentials.NewTLS(tc)
	}
	// Fixed flow-control windows, Envoy's HTTP/2 defaults: like Envoy, the client then sends
	// no BDP-estimation PINGs, which a server would otherwise answer per data frame.
	opts = append([]grpc.DialOption{grpc.WithTransportCredentials(creds),
		grpc.WithInitialWindowSize(envoyWindow), grpc.WithInitialConnWindowSize(envoyWindow)}, opts...)
	conn, err := grpc.NewClient(addr, opts...)
	if err != nil {
		return nil, err
	}
	return &Client{conn: conn, c: extprocv3.NewExternalProcessorClient(conn)}, nil
}

// Conn returns the underlying connection (for health checks and raw streams).
func (c *Client) Conn() *grpc.ClientConn { return c.conn }

// Close closes the connection.
func (c *Client) Close() error { return c.conn.Close() }

// Open starts a raw ext_proc stream.
func (c *Client) Open(ctx context.Context) (extprocv3.ExternalProcessor_ProcessClient, error) {
	return c.c.Process(ctx)
}

// Do runs one request through the server as Envoy's ext_proc filter does in mode, calling
// upstream with the result of the request path to get the response. upstream is not called
// when the server answered with an ImmediateResponse.
func (c *Client) Do(ctx context.Context, mode Mode, req Request, upstream func(*Result) Upstream) (*Result, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	s, err := c.c.Process(ctx)
	if err != nil {
		return nil, err
	}
	x := &exchange{ctx: ctx, s: s, res: &Result{Header: req.Header.Clone()}, recv: make(chan recvd, 64)}
	if x.res.Header == nil {
		x.res.Header = http.Header{}
	}
	go x.read()
	if err := c.request(x, mode, req); err != nil {
		return nil, err
	}
	if x.res.Immediate != nil {
		_ = s.CloseSend()
		return x.res, nil
	}
	if upstream == nil {
		return x.res, s.CloseSend()
	}
	up := upstream(x.res)
	if err := c.response(x, mode, up); err != nil {
		return nil, err
	}
	if err := s.CloseSend(); err != nil {
		return nil, err
	}
	// The server ends the stream once the proxy has half-closed it.
	r, err := x.next(ctx)
	if err == nil {
		return nil, fmt.Errorf("unexpected message after the response: %v", r)
	}
	if !errors.Is(err, io.EOF) {
		return nil, err
	}
	return x.res, nil
}

type recvd struct {
	resp *extprocv3.ProcessingResponse
	err  error
}

type exchange struct {
	// ctx is the caller's: the stream's own context ends as soon as the server closes the
	// stream, possibly before its last messages are read.
	ctx     context.Context
	s       extprocv3.ExternalProcessor_ProcessClient
	res     *Result
	recv    chan recvd
	pending *recvd // a message taken early, handed out first by next
	sent    bool   // protocol_config went out
}

func (x *exchange) read() {
	for {
		r, err := x.s.Recv()
		x.recv <- recvd{r, err}
		if err != nil {
			return
		}
	}
}

func (x *exchange) next(ctx context.Context) (*extprocv3.ProcessingResponse, error) {
	if x.pending == nil {
		select {
		case r := <-x.recv:
			x.pending = &r
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	r := *x.pending
	x.pending = nil
	if r.err != nil {
		return nil, r.err
	}
	x.res.Messages++
	if im := r.resp.GetImmediateResponse(); im != nil {
		x.res.Immediate = im
	}
	return r.resp, nil
}

// send sends m, adding the protocol configuration to the first message as Envoy does.
func (x *exchange) send(mode Mode, m *extprocv3.ProcessingRequest) error {
	if !x.sent {
		x.sent = true
		m.ProtocolConfig = &extprocv3.ProtocolConfiguration{RequestBodyMode: mode.RequestBody, ResponseBodyMode: mode.ResponseBody}
	}
	x.res.Sent++
	return x.s.Send(m)
}

func (c *Client) request(x *exchange, mode Mode, req Request) error {
	ctx := x.ctx
	hm := headerMap(req.Header, map[string]string{":method": req.Method, ":path": req.Path, ":scheme": "http", ":authority": "kvgate"})
	noBody := len(req.Body) == 0 && !mode.RequestTrailers
	first := &extprocv3.ProcessingRequest{
		Request: &extprocv3.ProcessingRequest_RequestHeaders{RequestHeaders: &extprocv3.HttpHeaders{Headers: hm, EndOfStream: noBody}},
	}
	if req.Subset != nil {
		first.MetadataContext = subsetMetadata(req.Subset)
	}
	if err := x.send(mode, first); err != nil {
		return err
	}
	full := mode.RequestBody == filterv3.ProcessingMode_FULL_DUPLEX_STREAMED
	if noBody || !full {
		// Envoy waits for the headers answer before it sends a buffered body.
		r, err := x.next(ctx)
		if err != nil {
			return err
		}
		if x.res.Immediate != nil {
			return nil
		}
		if r.GetRequestHeaders() == nil {
			return fmt.Errorf("want a request headers response, got %T", r.GetResponse())
		}
		x.apply(r.GetRequestHeaders().GetResponse(), r)
		if noBody {
			return nil
		}
		if err := x.send(mode, bodyMsg(req.Body, !mode.RequestTrailers)); err != nil {
			return err
		}
		r, err = x.next(ctx)
		if err != nil {
			return err
		}
		if x.res.Immediate != nil {
			return nil
		}
		if r.GetRequestBody() == nil {
			return fmt.Errorf("want a request body response, got %T", r.GetResponse())
		}
		cr := r.GetRequestBody().GetResponse()
		x.apply(cr, r)
		x.res.Body = req.Body
		if b, ok := cr.GetBodyMutation().GetMutation().(*extprocv3.BodyMutation_Body); ok {
			x.res.Body = b.Body
		}
		if mode.RequestTrailers {
			return x.trailers(mode, false)
		}
		return nil
	}

	// FULL_DUPLEX_STREAMED: the body goes out without waiting; the headers answer comes
	// after the whole body, then the body comes back in pieces.
	pieces := split(req.Body, mode.RequestChunk)
	for i, p := range pieces {
		last := i == len(pieces)-1
		if wait := c.EarlyWait; last && wait >= 0 {
			if wait == 0 {
				wait = 20 * time.Millisecond
			}
			select {
			case r := <-x.recv:
				if r.err == nil && r.resp.GetImmediateResponse() == nil {
					x.res.EarlyHeaders = true
				}
				x.pending = &r
			case <-time.After(wait):
			}
		}
		if err := x.send(mode, bodyMsg(p, last && !mode.RequestTrailers)); err != nil {
			if errors.Is(err, io.EOF) { // the server ended the stream: read why
				break
			}
			return err
		}
	}
	if mode.RequestTrailers && x.res.Immediate == nil {
		if err := x.send(mode, &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_RequestTrailers{
			RequestTrailers: &extprocv3.HttpTrailers{Trailers: &corev3.HeaderMap{}},
		}}); err != nil {
			return err
		}
	}
	r, err := x.next(ctx)
	if err != nil {
		return err
	}
	if x.res.Immediate != nil {
		return nil
	}
	if r.GetRequestHeaders() == nil {
		return fmt.Errorf("want the request headers response first, got %T", r.GetResponse())
	}
	x.apply(r.GetRequestHeaders().GetResponse(), r)
	x.res.Body = []byte{}
	for {
		r, err := x.next(ctx)
		if err != nil {
			return err
		}
		if x.res.Immediate != nil {
			return nil
		}
		if mode.RequestTrailers && r.GetRequestTrailers() != nil {
			return nil
		}
		sb := r.GetRequestBody().GetResponse().GetBodyMutation().GetStreamedResponse()
		if sb == nil {
			return fmt.Errorf("want a streamed request body response, got %v", r)
		}
		x.res.Body = append(x.res.Body, sb.GetBody()...)
		x.res.BodyChunks = append(x.res.BodyChunks, len(sb.GetBody()))
		if sb.GetEndOfStream() {
			return nil
		}
	}
}

func (x *exchange) trailers(mode Mode, response bool) error {
	m := &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_RequestTrailers{RequestTrailers: &extprocv3.HttpTrailers{Trailers: &corev3.HeaderMap{}}}}
	if response {
		m = &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_ResponseTrailers{ResponseTrailers: &extprocv3.HttpTrailers{Trailers: &corev3.HeaderMap{}}}}
	}
	if err := x.send(mode, m); err != nil {
		return err
	}
	r, err := x.next(x.ctx)
	if err != nil {
		return err
	}
	if (response && r.GetResponseTrailers() == nil) || (!response && r.GetRequestTrailers() == nil) {
		return fmt.Errorf("want a trailers response, got %T", r.GetResponse())
	}
	return nil
}

func (c *Client) response(x *exchange, mode Mode, up Upstream) error {
	ctx := x.ctx
	if up.Status == 0 {
		up.Status = http.StatusOK
	}
	x.res.ResponseHeader = up.Header.Clone()
	if x.res.ResponseHeader == nil {
		x.res.ResponseHeader = http.Header{}
	}
	bodyless := len(up.Chunks) == 0 && !mode.ResponseTrailers
	hm := headerMap(up.Header, map[string]string{":status": strconv.Itoa(up.Status)})
	m := &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_ResponseHeaders{
		ResponseHeaders: &extprocv3.HttpHeaders{Headers: hm, EndOfStream: bodyless},
	}}
	if up.Served != "" {
		m.MetadataContext = &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{
			LBNamespace: {Fields: map[string]*structpb.Value{ServedKey: structpb.NewStringValue(up.Served)}},
		}}
	}
	if err := x.send(mode, m); err != nil {
		return err
	}
	answered := false                     // the response headers answer was read
	var override *filterv3.ProcessingMode // the mode_override on it
	headers := func() error {
		if answered {
			return nil
		}
		answered = true
		r, err := x.next(ctx)
		if err != nil {
			return err
		}
		if r.GetResponseHeaders() == nil {
			return fmt.Errorf("want a response headers response, got %T", r.GetResponse())
		}
		applyHeaders(x.res.ResponseHeader, r.GetResponseHeaders().GetResponse().GetHeaderMutation())
		override = r.GetModeOverride()
		return nil
	}
	chunks := up.Chunks
	// Envoy's response trailer mode: SEND where the configuration sends them (the client's
	// ResponseTrailers), else SKIP.
	sendTrailers := mode.ResponseTrailers
	if c.AllowModeOverride && !bodyless && mode.RequestBody != filterv3.ProcessingMode_FULL_DUPLEX_STREAMED &&
		mode.ResponseBody != filterv3.ProcessingMode_FULL_DUPLEX_STREAMED {
		// The override can only be seen on the headers answer, which STREAMED and
		// BUFFERED wait for before sending any body: take it first, then go on by the
		// mode it leaves.
		if err := headers(); err != nil {
			return err
		}
		// A DEFAULT trailer mode in an override keeps the configured one (Envoy 1.34+).
		if o := override; o != nil {
			x.res.ModeOverride = o
			mode.ResponseBody = o.GetResponseBodyMode()
			switch o.GetResponseTrailerMode() {
			case filterv3.ProcessingMode_SEND:
				sendTrailers = true
			case filterv3.ProcessingMode_SKIP:
				sendTrailers = false
			}
			// Trailers go out only when the upstream's response has them.
			mode.ResponseTrailers = mode.ResponseTrailers && sendTrailers
		}
	}
	if !bodyless && mode.ResponseBody == filterv3.ProcessingMode_NONE && !sendTrailers {
		// Envoy 1.37+ closes the stream right after the headers answer: nothing more is
		// to be sent on it.
		x.res.ClosedAtHeaders = true
	}
	switch {
	case bodyless || mode.ResponseBody == filterv3.ProcessingMode_NONE:
		if err := headers(); err != nil {
			return err
		}
		for _, c := range chunks {
			x.res.ResponseBody = append(x.res.ResponseBody, c...)
		}
	case mode.ResponseBody == filterv3.ProcessingMode_FULL_DUPLEX_STREAMED:
		// Everything goes out without waiting; answers are read after.
		for i, c := range chunks {
			if err := x.send(mode, respBodyMsg(c, i == len(chunks)-1 && !mode.ResponseTrailers)); err != nil {
				return err
			}
		}
		if mode.ResponseTrailers {
			if err := x.send(mode, &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_ResponseTrailers{
				ResponseTrailers: &extprocv3.HttpTrailers{Trailers: &corev3.HeaderMap{}},
			}}); err != nil {
				return err
			}
		}
		if err := headers(); err != nil {
			return err
		}
		for len(chunks) > 0 || mode.ResponseTrailers {
			r, err := x.next(ctx)
			if err != nil {
				return err
			}
			if mode.ResponseTrailers && r.GetResponseTrailers() != nil {
				return nil // the trailers answer comes after every body answer
			}
			sb := r.GetResponseBody().GetResponse().GetBodyMutation().GetStreamedResponse()
			if sb == nil {
				return fmt.Errorf("want a streamed response body response, got %v", r)
			}
			x.res.ResponseBody = append(x.res.ResponseBody, sb.GetBody()...)
			if sb.GetEndOfStream() && !mode.ResponseTrailers {
				break
			}
		}
		return nil
	default: // STREAMED and BUFFERED: one answer per message, in turn
		if err := headers(); err != nil {
			return err
		}
		if mode.ResponseBody == filterv3.ProcessingMode_BUFFERED || mode.ResponseBody == filterv3.ProcessingMode_BUFFERED_PARTIAL {
			var all []byte
			for _, c := range chunks {
				all = append(all, c...)
			}
			chunks = [][]byte{all}
		}
		for i, c := range chunks {
			if err := x.send(mode, respBodyMsg(c, i == len(chunks)-1 && !mode.ResponseTrailers)); err != nil {
				return err
			}
			r, err := x.next(ctx)
			if err != nil {
				return err
			}
			if r.GetResponseBody() == nil {
				return fmt.Errorf("want a response body response, got %T", r.GetResponse())
			}
			out := c
			if b, ok := r.GetResponseBody().GetResponse().GetBodyMutation().GetMutation().(*extprocv3.BodyMutation_Body); ok {
				out = b.Body
			}
			x.res.ResponseBody = append(x.res.ResponseBody, out...)
		}
	}
	if mode.ResponseTrailers {
		return x.trailers(mode, true)
	}
	return nil
}

// apply records a request-path answer: header mutation, metadata, route cache.
func (x *exchange) apply(cr *extprocv3.CommonResponse, r *extprocv3.ProcessingResponse) {
	applyHeaders(x.res.Header, cr.GetHeaderMutation())
	if r.GetDynamicMetadata() != nil {
		x.res.Metadata = r.GetDynamicMetadata()
	}
	if cr.GetClearRouteCache() {
		x.res.ClearRouteCache = true
	}
}

func applyHeaders(h http.Header, m *extprocv3.HeaderMutation) {
	for _, k := range m.GetRemoveHeaders() {
		h.Del(k)
	}
	for _, o := range m.GetSetHeaders() {
		v := o.GetHeader().GetValue()
		if raw := o.GetHeader().GetRawValue(); len(raw) > 0 {
			v = string(raw)
		}
		h.Set(o.GetHeader().GetKey(), v)
	}
}

func headerMap(h http.Header, pseudo map[string]string) *corev3.HeaderMap {
	m := &corev3.HeaderMap{}
	for k, v := range pseudo {
		m.Headers = append(m.Headers, &corev3.HeaderValue{Key: k, RawValue: []byte(v)})
	}
	for k, vs := range h {
		for _, v := range vs {
			m.Headers = append(m.Headers, &corev3.HeaderValue{Key: strings.ToLower(k), RawValue: []byte(v)})
		}
	}
	return m
}

func subsetMetadata(subset []string) *corev3.Metadata {
	vals := make([]*structpb.Value, len(subset))
	for i, s := range subset {
		vals[i] = structpb.NewStringValue(s)
	}
	return &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{
		SubsetNamespace: {Fields: map[string]*structpb.Value{
			SubsetKey: structpb.NewListValue(&structpb.ListValue{Values: vals}),
		}},
	}}
}

func bodyMsg(b []byte, eos bool) *extprocv3.ProcessingRequest {
	return &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_RequestBody{RequestBody: &extprocv3.HttpBody{Body: b, EndOfStream: eos}}}
}

func respBodyMsg(b []byte, eos bool) *extprocv3.ProcessingRequest {
	return &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_ResponseBody{ResponseBody: &extprocv3.HttpBody{Body: b, EndOfStream: eos}}}
}

func split(b []byte, n int) [][]byte {
	if n <= 0 || len(b) <= n {
		return [][]byte{b}
	}
	var out [][]byte
	for len(b) > n {
		out = append(out, b[:n])
		b = b[n:]
	}
	return append(out, b)
}

// RequestMessages are the messages Envoy sends for req in mode, in order, without waiting
// for answers (as in FULL_DUPLEX_STREAMED), for tests that drive a raw stream.
func RequestMessages(mode Mode, req Request) []*extprocv3.ProcessingRequest {
	hm := headerMap(req.Header, map[string]string{":method": req.Method, ":path": req.Path, ":scheme": "http", ":authority": "kvgate"})
	first := &extprocv3.ProcessingRequest{
		Request:        &extprocv3.ProcessingRequest_RequestHeaders{RequestHeaders: &extprocv3.HttpHeaders{Headers: hm, EndOfStream: len(req.Body) == 0}},
		ProtocolConfig: &extprocv3.ProtocolConfiguration{RequestBodyMode: mode.RequestBody, ResponseBodyMode: mode.ResponseBody},
	}
	if req.Subset != nil {
		first.MetadataContext = subsetMetadata(req.Subset)
	}
	out := []*extprocv3.ProcessingRequest{first}
	if len(req.Body) == 0 {
		return out
	}
	pieces := split(req.Body, mode.RequestChunk)
	for i, p := range pieces {
		out = append(out, bodyMsg(p, i == len(pieces)-1))
	}
	return out
}

// ResponseMessages are the messages Envoy sends for the upstream's response: headers, then
// the body pieces, the last ending the stream when end is set.
func ResponseMessages(mode Mode, up Upstream, end bool) []*extprocv3.ProcessingRequest {
	if up.Status == 0 {
		up.Status = http.StatusOK
	}
	hm := headerMap(up.Header, map[string]string{":status": strconv.Itoa(up.Status)})
	out := []*extprocv3.ProcessingRequest{{Request: &extprocv3.ProcessingRequest_ResponseHeaders{
		ResponseHeaders: &extprocv3.HttpHeaders{Headers: hm, EndOfStream: len(up.Chunks) == 0 && end},
	}}}
	for i, c := range up.Chunks {
		out = append(out, respBodyMsg(c, end && i == len(up.Chunks)-1))
	}
	return out
}
