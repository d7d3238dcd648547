package extproc

import (
	"net/http"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/kvgate/kvgate/openai"
	"github.com/kvgate/kvgate/router"
)

// headerMap turns Envoy's header map into an http.Header and returns the pseudo-header
// :path apart (the other pseudo-headers are dropped).
func headerMap(m *corev3.HeaderMap) (h http.Header, path string) {
	kvs := m.GetHeaders()
	h = make(http.Header, len(kvs))
	for _, kv := range kvs {
		k := kv.GetKey()
		if strings.HasPrefix(k, ":") {
			if k == ":path" {
				path = value(kv)
			}
			continue
		}
		h.Add(k, value(kv))
	}
	return h, path
}

// headerValue is the first value of the header named name (any case) in m, "" when absent.
func headerValue(m *corev3.HeaderMap, name string) string {
	for _, kv := range m.GetHeaders() {
		if strings.EqualFold(kv.GetKey(), name) {
			return value(kv)
		}
	}
	return ""
}

// value is a header's value: raw_value when set (Envoy sends that), else value.
func value(kv *corev3.HeaderValue) string {
	if raw := kv.GetRawValue(); len(raw) > 0 {
		return string(raw)
	}
	return kv.GetValue()
}

// setHeaders is a header mutation that sets every header of h, replacing what is there
// (headerSet.mutation: keys lower-case and sorted, several values joined by commas; at
// most maxSet headers, where the error answers that use it carry two or three).
func setHeaders(h http.Header) *extprocv3.HeaderMutation {
	var hs headerSet
	for k, v := range h {
		hs.set(strings.ToLower(k), strings.Join(v, ","))
	}
	return hs.mutation()
}

// pickMetadata is the dynamic metadata that names the destination: namespace envoy.lb,
// key x-gateway-destination-endpoint, the same value as the header.
// Its messages are one allocation besides the two maps.
func pickMetadata(dest string) *structpb.Struct {
	m := &metadataMessage{}
	m.str.StringValue = dest
	m.dest.Kind = &m.str
	m.inner.Fields = map[string]*structpb.Value{router.HeaderDestination: &m.dest}
	m.sv.StructValue = &m.inner
	m.ns.Kind = &m.sv
	m.outer.Fields = map[string]*structpb.Value{router.MetadataNamespace: &m.ns}
	return &m.outer
}

// metadataMessage is pickMetadata's messages in one allocation.
type metadataMessage struct {
	outer, inner structpb.Struct
	ns, dest     structpb.Value
	sv           structpb.Value_StructValue
	str          structpb.Value_StringValue
}

// subsetHint returns the endpoints the proxy restricts the pick to, from the filter
// metadata envoy.lb.subset_hint / x-gateway-destination-endpoint-subset; nil when unset.
// A present but empty list returns an empty non-nil slice: nothing may be picked.
func subsetHint(md *corev3.Metadata) []string {
	ns, ok := md.GetFilterMetadata()[router.SubsetNamespace]
	if !ok {
		return nil
	}
	v, ok := ns.GetFields()[router.SubsetKey]
	if !ok {
		return nil
	}
	out := []string{}
	switch x := v.GetKind().(type) {
	case *structpb.Value_ListValue:
		for _, e := range x.ListValue.GetValues() {
			if s := strings.TrimSpace(e.GetStringValue()); s != "" {
				out = append(out, s)
			}
		}
	case *structpb.Value_StringValue:
		for _, s := range strings.Split(x.StringValue, ",") {
			if s = strings.TrimSpace(s); s != "" {
				out = append(out, s)
			}
		}
	}
	return out
}

// servedEndpoint returns the endpoint the proxy reports having used, from the metadata
// envoy.lb / x-gateway-destination-endpoint-served, or else from the header of that name.
func servedEndpoint(md *corev3.Metadata, h *corev3.HeaderMap) string {
	if ns, ok := md.GetFilterMetadata()[router.MetadataNamespace]; ok {
		if v := ns.GetFields()[router.HeaderDestinationServed].GetStringValue(); v != "" {
			return v
		}
	}
	return headerValue(h, router.HeaderDestinationServed)
}

// immediate is the ImmediateResponse carrying err as an OpenAI error body.
func immediate(err *openai.Error) *extprocv3.ProcessingResponse {
	return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ImmediateResponse{
		ImmediateResponse: &extprocv3.ImmediateResponse{
			Status:  &typev3.HttpStatus{Code: typev3.StatusCode(err.Status)},
			Headers: setHeaders(errorHeaders(err)),
			Body:    err.Body(),
			Details: err.Message,
		},
	}}
}

// errorHeaders are the headers of an error answer: err's own (Retry-After, a rejection
// reason) and the JSON content type.
func errorHeaders(err *openai.Error) http.Header {
	h := http.Header{}
	for k, v := range err.Header {
		h[strings.ToLower(k)] = v
	}
	h["content-type"] = []string{"application/json"}
	return h
}

// continueHeaders answers a request or response headers message, applying mut; its parts
// are one allocation.
func continueHeaders(response bool, mut *extprocv3.HeaderMutation, clearRoute bool) *extprocv3.ProcessingResponse {
	m := &headersMessage{}
	m.cr.HeaderMutation, m.cr.ClearRouteCache = mut, clearRoute
	m.hr.Response = &m.cr
	if response {
		m.resp.ResponseHeaders = &m.hr
		m.pr.Response = &m.resp
	} else {
		m.req.RequestHeaders = &m.hr
		m.pr.Response = &m.req
	}
	return &m.pr
}

// headersMessage is a headers response with its parts in one allocation.
type headersMessage struct {
	pr   extprocv3.ProcessingResponse
	req  extprocv3.ProcessingResponse_RequestHeaders
	resp extprocv3.ProcessingResponse_ResponseHeaders
	hr   extprocv3.HeadersResponse
	cr   extprocv3.CommonResponse
}

// bodyResponse answers a request or response body message with cr.
func bodyResponse(response bool, cr *extprocv3.CommonResponse) *extprocv3.ProcessingResponse {
	m := &bodyMessage{}
	m.br.Response = cr
	return m.wrap(response)
}

// bodyMessage is a body response with its parts in one allocation.
type bodyMessage struct {
	pr   extprocv3.ProcessingResponse
	req  extprocv3.ProcessingResponse_RequestBody
	resp extprocv3.ProcessingResponse_ResponseBody
	br   extprocv3.BodyResponse
}

func (m *bodyMessage) wrap(response bool) *extprocv3.ProcessingResponse {
	if response {
		m.resp.ResponseBody = &m.br
		m.pr.Response = &m.resp
	} else {
		m.req.RequestBody = &m.br
		m.pr.Response = &m.req
	}
	return &m.pr
}

// streamedMessage is a streamed body response with its parts in one allocation.
type streamedMessage struct {
	bodyMessage
	cr extprocv3.CommonResponse
	bm extprocv3.BodyMutation
	sr extprocv3.BodyMutation_StreamedResponse
	sb extprocv3.StreamedBodyResponse
}

// streamedBody re-emits body as streamed body responses of at most MaxChunk bytes; the last
// carries endOfStream. An empty body is one empty chunk.
func streamedBody(response bool, body []byte, endOfStream bool) []*extprocv3.ProcessingResponse {
	return appendStreamedBody(make([]*extprocv3.ProcessingResponse, 0, 1+len(body)/MaxChunk), response, body, endOfStream)
}

// appendStreamedBody appends streamedBody's responses to out.
func appendStreamedBody(out []*extprocv3.ProcessingResponse, response bool, body []byte, endOfStream bool) []*extprocv3.ProcessingResponse {
	for {
		n := min(len(body), MaxChunk)
		last := n == len(body)
		m := &streamedMessage{}
		m.sb.Body, m.sb.EndOfStream = body[:n], last && endOfStream
		m.sr.StreamedResponse = &m.sb
		m.bm.Mutation = &m.sr
		m.cr.BodyMutation = &m.bm
		m.br.Response = &m.cr
		out = append(out, m.wrap(response))
		body = body[n:]
		if last {
			return out
		}
	}
}

// trailersResponse answers a trailers message without changes.
func trailersResponse(response bool) *extprocv3.ProcessingResponse {
	if response {
		return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ResponseTrailers{ResponseTrailers: &extprocv3.TrailersResponse{}}}
	}
	return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_RequestTrailers{RequestTrailers: &extprocv3.TrailersResponse{}}}
}
