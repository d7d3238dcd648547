package gateway

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"golang.org/x/net/http/httpguts"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/kvgate/kvgate/router"
)

// eppStream is one request's ext_proc stream to the EPP, driven as Envoy's filter drives it.
// One goroutine sends (the request path, then the response body pump), a reader goroutine
// receives; next hands received messages out in order.
type eppStream struct {
	e       *epp
	s       extprocv3.ExternalProcessor_ProcessClient
	cancel  context.CancelFunc
	recv    chan eppRecv
	done    chan struct{} // closed when the reader returns
	sent    bool          // protocol_config went out
	maxBody int64
	// unlink stops the request's cancellation from cancelling the stream; detached says
	// finish has handed the stream's end to a goroutine of its own.
	unlink   func() bool
	detached bool
}

type eppRecv struct {
	m   *extprocv3.ProcessingResponse
	err error
}

// errEPP marks a failure of the EPP itself (unreachable, reset, timed out, protocol broken):
// the failure mode decides what the client gets.
type errEPP struct{ err error }

func (e errEPP) Error() string { return "endpoint picker: " + e.err.Error() }
func (e errEPP) Unwrap() error { return e.err }

func eppFailed(format string, args ...any) error { return errEPP{fmt.Errorf(format, args...)} }

// open starts a stream that ctx's end cancels (until finish); close must be called.
func (e *epp) open(ctx context.Context, maxBody int64) (*eppStream, error) {
	sctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	unlink := context.AfterFunc(ctx, cancel)
	s, err := e.client.Process(sctx)
	if err != nil {
		unlink()
		cancel()
		return nil, errEPP{err}
	}
	x := &eppStream{e: e, s: s, cancel: cancel, unlink: unlink, recv: make(chan eppRecv, 16), done: make(chan struct{}), maxBody: maxBody}
	go x.read(sctx)
	return x, nil
}

func (x *eppStream) read(ctx context.Context) {
	defer close(x.done)
	for {
		m, err := x.s.Recv()
		select {
		case x.recv <- eppRecv{m, err}:
		case <-ctx.Done():
			return
		}
		if err != nil {
			return
		}
	}
}

// close ends the stream and waits for the reader, unless finish took the stream over.
func (x *eppStream) close() {
	if x.detached {
		return
	}
	x.unlink()
	x.cancel()
	<-x.done
}

// finish half-closes the stream after a complete exchange and lets the EPP end it, so that
// it records a completed request rather than a cancellation. The wait (at most the
// timeout) runs in a goroutine of its own: the client's response ends now.
func (x *eppStream) finish() {
	if x.s.CloseSend() != nil {
		x.close()
		return
	}
	x.unlink()
	x.detached = true
	go func() {
		defer func() { x.cancel(); <-x.done }()
		t := time.NewTimer(x.e.cfg.Timeout)
		defer t.Stop()
		for {
			select {
			case r := <-x.recv:
				if r.err != nil {
					return
				}
			case <-t.C:
				return
			}
		}
	}()
}

// next returns the next message, waiting at most wait (0: no limit).
func (x *eppStream) next(ctx context.Context, wait time.Duration) (*extprocv3.ProcessingResponse, error) {
	var timeout <-chan time.Time
	if wait > 0 {
		t := time.NewTimer(wait)
		defer t.Stop()
		timeout = t.C
	}
	select {
	case r := <-x.recv:
		if r.err != nil {
			if errors.Is(r.err, io.EOF) {
				return nil, eppFailed("the stream ended early")
			}
			return nil, errEPP{r.err}
		}
		return r.m, nil
	case <-timeout:
		return nil, eppFailed("no answer within %s", wait)
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (x *eppStream) send(m *extprocv3.ProcessingRequest) error {
	if !x.sent {
		x.sent = true
		req, resp := x.e.cfg.Mode.bodyModes()
		m.ProtocolConfig = &extprocv3.ProtocolConfiguration{RequestBodyMode: req, ResponseBodyMode: resp}
	}
	if err := x.s.Send(m); err != nil {
		return errEPP{err}
	}
	return nil
}

// eppPick is what the request path of the stream decided.
type eppPick struct {
	immediate  *extprocv3.ImmediateResponse
	header     http.Header // the request headers after the EPP's mutations
	body       []byte      // the request body after the EPP's mutations
	destHeader string      // the destination header the EPP set
	meta       string      // the destination in envoy.lb dynamic metadata
}

// pick runs the request path: headers and body to the EPP, its mutations and pick back.
func (x *eppStream) pick(ctx context.Context, r *http.Request, body []byte) (*eppPick, error) {
	p := &eppPick{header: r.Header.Clone(), body: body}
	timeout := x.e.cfg.Timeout
	// Envoy sends the forwarded metadata (the subset hint) on every message of the request,
	// not only the first: an EPP may read it from the body's last message (GIE v1.4.0 does).
	hint := &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{
		router.SubsetNamespace: {Fields: map[string]*structpb.Value{router.SubsetKey: stringList(x.e.subset)}},
	}}
	first := &extprocv3.ProcessingRequest{
		Request: &extprocv3.ProcessingRequest_RequestHeaders{RequestHeaders: &extprocv3.HttpHeaders{
			Headers: requestHeaderMap(r), EndOfStream: len(body) == 0,
		}},
		MetadataContext: hint,
	}
	if err := x.send(first); err != nil {
		return nil, err
	}
	if x.e.cfg.Mode == EPPBuffered || len(body) == 0 {
		// Envoy waits for the headers answer before it sends a buffered body.
		m, err := x.next(ctx, timeout)
		if err != nil {
			return nil, err
		}
		if p.immediate = m.GetImmediateResponse(); p.immediate != nil {
			return p, nil
		}
		rh := m.GetRequestHeaders()
		if rh == nil {
			return nil, eppFailed("want a request headers answer, got %T", m.GetResponse())
		}
		p.apply(m, rh.GetResponse())
		if len(body) == 0 {
			return p, nil
		}
		if err := x.send(&extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_RequestBody{
			RequestBody: &extprocv3.HttpBody{Body: body, EndOfStream: true},
		}, MetadataContext: hint}); err != nil {
			return nil, err
		}
		if m, err = x.next(ctx, timeout); err != nil {
			return nil, err
		}
		if p.immediate = m.GetImmediateResponse(); p.immediate != nil {
			return p, nil
		}
		rb := m.GetRequestBody()
		if rb == nil {
			return nil, eppFailed("want a request body answer, got %T", m.GetResponse())
		}
		cr := rb.GetResponse()
		p.apply(m, cr)
		switch bm := cr.GetBodyMutation().GetMutation().(type) {
		case *extprocv3.BodyMutation_Body:
			p.body = bm.Body
		case *extprocv3.BodyMutation_ClearBody:
			if bm.ClearBody {
				p.body = nil
			}
		case *extprocv3.BodyMutation_StreamedResponse:
			return nil, eppFailed("a streamed body answer in BUFFERED mode")
		}
		return p, nil
	}

	// FULL_DUPLEX_STREAMED: the body goes out without waiting; the headers answer comes
	// after, then the body again in pieces. An EPP that stops reading cannot hold the sends
	// past the timeout.
	watchdog := time.AfterFunc(timeout, x.cancel)
	for off := 0; off < len(body); off += eppChunk {
		end := min(off+eppChunk, len(body))
		if err := x.send(&extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_RequestBody{
			RequestBody: &extprocv3.HttpBody{Body: body[off:end], EndOfStream: end == len(body)},
		}, MetadataContext: hint}); err != nil {
			if errors.Is(err, io.EOF) {
				break // the EPP ended the stream: next says why
			}
			watchdog.Stop()
			return nil, err
		}
	}
	if !watchdog.Stop() {
		return nil, eppFailed("the request body was not taken within %s", timeout)
	}
	m, err := x.next(ctx, timeout)
	if err != nil {
		return nil, err
	}
	if p.immediate = m.GetImmediateResponse(); p.immediate != nil {
		return p, nil
	}
	rh := m.GetRequestHeaders()
	if rh == nil {
		return nil, eppFailed("want the request headers answer first, got %T", m.GetResponse())
	}
	p.apply(m, rh.GetResponse())
	p.body = nil
	for {
		m, err := x.next(ctx, timeout)
		if err != nil {
			return nil, err
		}
		if p.immediate = m.GetImmediateResponse(); p.immediate != nil {
			return p, nil
		}
		rb := m.GetRequestBody()
		if rb == nil {
			return nil, eppFailed("want a request body answer, got %T", m.GetResponse())
		}
		p.apply(m, rb.GetResponse())
		sr := rb.GetResponse().GetBodyMutation().GetStreamedResponse()
		if sr == nil {
			return nil, eppFailed("want a streamed body answer in FULL_DUPLEX_STREAMED mode")
		}
		if int64(len(p.body)+len(sr.GetBody())) > x.maxBody {
			return nil, eppFailed("the body it sent back exceeds %d bytes", x.maxBody)
		}
		p.body = append(p.body, sr.GetBody()...)
		if sr.GetEndOfStream() {
			return p, nil
		}
	}
}

// apply takes the pick's header mutation and dynamic metadata.
func (p *eppPick) apply(m *extprocv3.ProcessingResponse, cr *extprocv3.CommonResponse) {
	applyMutation(p.header, cr.GetHeaderMutation())
	if v := p.header.Get(router.HeaderDestination); v != "" {
		p.destHeader = v
	}
	if v := m.GetDynamicMetadata().GetFields()[router.MetadataNamespace].GetStructValue().GetFields()[router.HeaderDestination]; v != nil {
		p.meta = metaString(v)
	}
}

// metaString reads a metadata value that is a string or a list of strings.
func metaString(v *structpb.Value) string {
	if l := v.GetListValue(); l != nil {
		var parts []string
		for _, e := range l.GetValues() {
			parts = append(parts, e.GetStringValue())
		}
		return strings.Join(parts, ",")
	}
	return v.GetStringValue()
}

// destinations is the ordered candidate list: the metadata's when set (what Envoy's
// override_host policy reads), else the header's.
func (p *eppPick) destinations() string {
	if p.meta != "" {
		return p.meta
	}
	return p.destHeader
}

// applyMutation applies an ext_proc header mutation to h. Pseudo-headers and hop-by-hop
// headers are not the EPP's to change, and names or values HTTP cannot carry would corrupt
// the message: all are skipped.
func applyMutation(h http.Header, hm *extprocv3.HeaderMutation) {
	for _, k := range hm.GetRemoveHeaders() {
		if !strings.HasPrefix(k, ":") {
			h.Del(k)
		}
	}
	for _, o := range hm.GetSetHeaders() {
		k := o.GetHeader().GetKey()
		if !httpguts.ValidHeaderFieldName(k) || isHopByHop(k) {
			continue
		}
		v := string(o.GetHeader().GetRawValue())
		if len(o.GetHeader().GetRawValue()) == 0 {
			v = o.GetHeader().GetValue()
		}
		if !httpguts.ValidHeaderFieldValue(v) {
			continue
		}
		appendIt := false
		if a := o.GetAppend(); a != nil {
			appendIt = a.GetValue()
		} else {
			switch o.GetAppendAction() {
			case corev3.HeaderValueOption_ADD_IF_ABSENT:
				if h.Get(k) != "" {
					continue
				}
			case corev3.HeaderValueOption_OVERWRITE_IF_EXISTS:
				if h.Get(k) == "" {
					continue
				}
			}
		}
		if appendIt {
			h.Add(k, v)
		} else {
			h.Set(k, v)
		}
	}
}

func isHopByHop(k string) bool {
	switch strings.ToLower(k) {
	case "connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade", "te", "trailer", "content-length":
		return true
	}
	return false
}

// requestHeaderMap is the request's headers as Envoy sends them: lower-case names, the
// pseudo-headers first.
func requestHeaderMap(r *http.Request) *corev3.HeaderMap {
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	path := r.URL.Path
	if r.URL.RawQuery != "" {
		path += "?" + r.URL.RawQuery
	}
	return headerMap(r.Header, ":method", r.Method, ":path", path, ":scheme", scheme, ":authority", r.Host)
}

func headerMap(h http.Header, pseudo ...string) *corev3.HeaderMap {
	hm := &corev3.HeaderMap{}
	for i := 0; i+1 < len(pseudo); i += 2 {
		hm.Headers = append(hm.Headers, &corev3.HeaderValue{Key: pseudo[i], RawValue: []byte(pseudo[i+1])})
	}
	for k, vs := range h {
		lk := strings.ToLower(k)
		for _, v := range vs {
			hm.Headers = append(hm.Headers, &corev3.HeaderValue{Key: lk, RawValue: []byte(v)})
		}
	}
	return hm
}

func stringList(ss []string) *structpb.Value {
	vs := make([]*structpb.Value, len(ss))
	for i, s := range ss {
		vs[i] = structpb.NewStringValue(s)
	}
	return structpb.NewListValue(&structpb.ListValue{Values: vs})
}

// responseHeaders sends the engine's response headers with the served endpoint.
func (x *eppStream) responseHeaders(status int, h http.Header, served string, eos bool) error {
	return x.send(&extprocv3.ProcessingRequest{
		Request: &extprocv3.ProcessingRequest_ResponseHeaders{ResponseHeaders: &extprocv3.HttpHeaders{
			Headers: headerMap(h, ":status", strconv.Itoa(status)), EndOfStream: eos,
		}},
		MetadataContext: &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{
			router.MetadataNamespace: {Fields: map[string]*structpb.Value{router.HeaderDestinationServed: structpb.NewStringValue(served)}},
		}},
	})
}

func (x *eppStream) responseBody(b []byte, eos bool) error {
	return x.send(&extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_ResponseBody{
		ResponseBody: &extprocv3.HttpBody{Body: b, EndOfStream: eos},
	}})
}
