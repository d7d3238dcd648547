package conformance

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	filterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/protobuf/types/known/structpb"
)

// stream is one ext_proc stream to the EPP under test, driven message by message as Envoy
// does in FULL_DUPLEX_STREAMED mode. A reader goroutine receives; recv hands messages out.
type stream struct {
	s      extprocv3.ExternalProcessor_ProcessClient
	cancel context.CancelFunc
	recvc  chan recvd
	done   chan struct{}
	sent   bool
	early  *recvd // a message taken before it was due, handed out first
}

type recvd struct {
	m   *extprocv3.ProcessingResponse
	err error
}

func (s *Suite) open(ctx context.Context) (*stream, error) {
	ctx, cancel := context.WithCancel(ctx)
	c, err := s.client.Process(ctx)
	if err != nil {
		cancel()
		return nil, err
	}
	x := &stream{s: c, cancel: cancel, recvc: make(chan recvd, 64), done: make(chan struct{})}
	go func() {
		defer close(x.done)
		for {
			m, err := c.Recv()
			select {
			case x.recvc <- recvd{m, err}:
			case <-ctx.Done():
				return
			}
			if err != nil {
				return
			}
		}
	}()
	return x, nil
}

func (x *stream) close() {
	x.cancel()
	<-x.done
}

func (x *stream) send(m *extprocv3.ProcessingRequest) error {
	if !x.sent {
		x.sent = true
		m.ProtocolConfig = &extprocv3.ProtocolConfiguration{
			RequestBodyMode:  filterv3.ProcessingMode_FULL_DUPLEX_STREAMED,
			ResponseBodyMode: filterv3.ProcessingMode_FULL_DUPLEX_STREAMED,
		}
	}
	return x.s.Send(m)
}

// recv returns the next message within wait.
func (x *stream) recv(wait time.Duration) (*extprocv3.ProcessingResponse, error) {
	if r := x.early; r != nil {
		x.early = nil
		return r.m, r.err
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case r := <-x.recvc:
		return r.m, r.err
	case <-t.C:
		return nil, fmt.Errorf("no answer within %s", wait)
	}
}

// earlyWait is how long, before the last body piece of a request sent in several, the
// driver watches for an answer that came too early.
const earlyWait = 250 * time.Millisecond

// exchange is what the request path of one stream produced.
type exchange struct {
	immediate   *extprocv3.ImmediateResponse
	header      string // x-gateway-destination-endpoint from the header mutation
	meta        string // the same from envoy.lb dynamic metadata
	metaIsList  bool
	body        []byte // the request body the EPP sent back
	chunks      []int  // sizes of its pieces
	early       bool   // the headers answer came before the whole body was sent
	bodyAnswers int
}

// request options: the subset hint as sent (nil: none) and the body's piece size.
type request struct {
	body   []byte
	subset *structpb.Value
	chunk  int
	header map[string]string
}

// requestHeaders is the request headers message of r, with its subset hint. Envoy attaches
// the forwarded dynamic metadata to every message of the stream, not only the first: the
// body messages carry the same metadata context (an EPP may read the hint from any of them).
func requestHeaders(r request) *extprocv3.ProcessingRequest {
	hm := &corev3.HeaderMap{Headers: []*corev3.HeaderValue{
		{Key: ":method", RawValue: []byte("POST")}, {Key: ":path", RawValue: []byte("/v1/chat/completions")},
		{Key: ":scheme", RawValue: []byte("http")}, {Key: ":authority", RawValue: []byte("conformance")},
		{Key: "content-type", RawValue: []byte("application/json")},
		{Key: "content-length", RawValue: []byte(fmt.Sprint(len(r.body)))},
	}}
	for k, v := range r.header {
		hm.Headers = append(hm.Headers, &corev3.HeaderValue{Key: strings.ToLower(k), RawValue: []byte(v)})
	}
	first := &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_RequestHeaders{RequestHeaders: &extprocv3.HttpHeaders{Headers: hm}}}
	if r.subset != nil {
		first.MetadataContext = &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{
			subsetNamespace: {Fields: map[string]*structpb.Value{subsetKey: r.subset}},
		}}
	}
	return first
}

// servedMetadata is the served-endpoint report.
func servedMetadata(served string) *corev3.Metadata {
	return &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{
		lbNamespace: {Fields: map[string]*structpb.Value{servedKey: structpb.NewStringValue(served)}},
	}}
}

// requestPath sends headers and body and reads the pick, in FULL_DUPLEX_STREAMED.
func (x *stream) requestPath(r request, wait time.Duration) (*exchange, error) {
	first := requestHeaders(r)
	if err := x.send(first); err != nil {
		return nil, err
	}
	ex := &exchange{}
	chunk := r.chunk
	if chunk <= 0 {
		chunk = len(r.body)
	}
	for off := 0; off < len(r.body); off += chunk {
		end := min(off+chunk, len(r.body))
		if end == len(r.body) && off > 0 {
			// Before the last piece: nothing may have come back yet (a pick needs the body).
			select {
			case rv := <-x.recvc:
				x.early = &rv
				if rv.err == nil && rv.m.GetImmediateResponse() == nil {
					ex.early = true
				}
			case <-time.After(earlyWait):
			}
		}
		if err := x.send(&extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_RequestBody{
			RequestBody: &extprocv3.HttpBody{Body: r.body[off:end], EndOfStream: end == len(r.body)},
		}, MetadataContext: first.MetadataContext}); err != nil {
			if errors.Is(err, io.EOF) {
				break
			}
			return nil, err
		}
	}
	m, err := x.recv(wait)
	if err != nil {
		return nil, fmt.Errorf("waiting for the pick: %w", err)
	}
	if ex.immediate = m.GetImmediateResponse(); ex.immediate != nil {
		return ex, nil
	}
	rh := m.GetRequestHeaders()
	if rh == nil {
		return nil, fmt.Errorf("the first answer is %T, want request_headers", m.GetResponse())
	}
	ex.take(m, rh.GetResponse())
	for {
		m, err := x.recv(wait)
		if err != nil {
			return nil, fmt.Errorf("waiting for the body: %w", err)
		}
		if ex.immediate = m.GetImmediateResponse(); ex.immediate != nil {
			return ex, nil
		}
		rb := m.GetRequestBody()
		if rb == nil {
			return nil, fmt.Errorf("answer %T where a request body piece was due", m.GetResponse())
		}
		ex.take(m, rb.GetResponse())
		sr := rb.GetResponse().GetBodyMutation().GetStreamedResponse()
		if sr == nil {
			return nil, errors.New("a request body answer without streamed_response in FULL_DUPLEX_STREAMED")
		}
		ex.bodyAnswers++
		ex.body = append(ex.body, sr.GetBody()...)
		ex.chunks = append(ex.chunks, len(sr.GetBody()))
		if sr.GetEndOfStream() {
			return ex, nil
		}
	}
}

func (ex *exchange) take(m *extprocv3.ProcessingResponse, cr *extprocv3.CommonResponse) {
	for _, o := range cr.GetHeaderMutation().GetSetHeaders() {
		if strings.EqualFold(o.GetHeader().GetKey(), headerDestination) {
			v := string(o.GetHeader().GetRawValue())
			if v == "" {
				v = o.GetHeader().GetValue()
			}
			ex.header = v
		}
	}
	if v := m.GetDynamicMetadata().GetFields()[lbNamespace].GetStructValue().GetFields()[headerDestination]; v != nil {
		if l := v.GetListValue(); l != nil {
			ex.metaIsList = true
			var parts []string
			for _, e := range l.GetValues() {
				parts = append(parts, e.GetStringValue())
			}
			ex.meta = strings.Join(parts, ",")
		} else {
			ex.meta = v.GetStringValue()
		}
	}
}

// responseHeaders is the engine's response headers message as Envoy sends it: a header map
// with :status (never absent), and the served-endpoint report.
func responseHeaders(served string) *extprocv3.ProcessingRequest {
	hm := &corev3.HeaderMap{Headers: []*corev3.HeaderValue{
		{Key: ":status", RawValue: []byte("200")}, {Key: "content-type", RawValue: []byte("application/json")},
	}}
	return &extprocv3.ProcessingRequest{
		Request:         &extprocv3.ProcessingRequest_ResponseHeaders{ResponseHeaders: &extprocv3.HttpHeaders{Headers: hm}},
		MetadataContext: servedMetadata(served),
	}
}

// responsePath plays the engine's answer through the EPP: headers with the served report,
// then the body pieces; it returns the body the EPP sent back.
func (x *stream) responsePath(served string, chunks [][]byte, wait time.Duration) ([]byte, error) {
	if err := x.send(responseHeaders(served)); err != nil {
		return nil, err
	}
	for i, c := range chunks {
		if err := x.send(&extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_ResponseBody{
			ResponseBody: &extprocv3.HttpBody{Body: c, EndOfStream: i == len(chunks)-1},
		}, MetadataContext: servedMetadata(served)}); err != nil {
			return nil, err
		}
	}
	r, err := x.recv(wait)
	if err != nil {
		return nil, fmt.Errorf("waiting for the response headers answer: %w", err)
	}
	if r.GetResponseHeaders() == nil {
		return nil, fmt.Errorf("answer %T to the response headers", r.GetResponse())
	}
	var body []byte
	for len(chunks) > 0 {
		r, err := x.recv(wait)
		if err != nil {
			return nil, fmt.Errorf("waiting for the response body: %w", err)
		}
		sr := r.GetResponseBody().GetResponse().GetBodyMutation().GetStreamedResponse()
		if sr == nil {
			return nil, fmt.Errorf("answer %T where a response body piece was due", r.GetResponse())
		}
		body = append(body, sr.GetBody()...)
		if sr.GetEndOfStream() {
			break
		}
	}
	if err := x.s.CloseSend(); err != nil {
		return nil, err
	}
	if r, err := x.recv(wait); err == nil {
		return nil, fmt.Errorf("unexpected message after the response: %T", r.GetResponse())
	} else if !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("the stream did not end cleanly after the response: %w", err)
	}
	return body, nil
}
