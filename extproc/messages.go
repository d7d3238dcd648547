package extproc

import (
	"net/http"
	"sort"
	"strconv"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/kvgate/kvgate/openai"
	"github.com/kvgate/kvgate/router"
)

// headerMap turns Envoy's header map into an http.Header and returns the pseudo-headers
// (":path", ":method", ":status", ...) apart, keyed by name.
func headerMap(m *corev3.HeaderMap) (http.Header, map[string]string) {
	h := http.Header{}
	pseudo := map[string]string{}
	for _, kv := range m.GetHeaders() {
		v := kv.GetValue()
		if raw := kv.GetRawValue(); len(raw) > 0 {
			v = string(raw)
		}
		k := kv.GetKey()
		if strings.HasPrefix(k, ":") {
			pseudo[k] = v
			continue
		}
		h.Add(k, v)
	}
	return h, pseudo
}

// setHeaders is a header mutation that sets every header of h, replacing what is there.
// Keys are sent lower-case and in sorted order, so the mutation is deterministic.
func setHeaders(h http.Header) *extprocv3.HeaderMutation {
	if len(h) == 0 {
		return nil
	}
	keys := make([]string, 0, len(h))
	for k := range h {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	mut := &extprocv3.HeaderMutation{}
	for _, k := range keys {
		mut.SetHeaders = append(mut.SetHeaders, &corev3.HeaderValueOption{
			Header: &corev3.HeaderValue{
				Key:      strings.ToLower(k),
				RawValue: []byte(strings.Join(h[k], ",")),
			},
			AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD,
		})
	}
	return mut
}

// pickHeaders are the request headers a decision sets upstream, with content-length fixed
// to the body that will be sent.
func pickHeaders(d *router.Decision, bodyLen int) http.Header {
	h := d.Header().Clone()
	if h == nil {
		h = http.Header{}
	}
	h.Set("content-length", strconv.Itoa(bodyLen))
	return h
}

// pickMetadata is the dynamic metadata that names the destination: namespace envoy.lb,
// key x-gateway-destination-endpoint, the same value as the header.
func pickMetadata(dest string) *structpb.Struct {
	return &structpb.Struct{Fields: map[string]*structpb.Value{
		router.MetadataNamespace: structpb.NewStructValue(&structpb.Struct{Fields: map[string]*structpb.Value{
			router.HeaderDestination: structpb.NewStringValue(dest),
		}}),
	}}
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
func servedEndpoint(md *corev3.Metadata, h http.Header) string {
	if ns, ok := md.GetFilterMetadata()[router.MetadataNamespace]; ok {
		if v := ns.GetFields()[router.HeaderDestinationServed].GetStringValue(); v != "" {
			return v
		}
	}
	return h.Get(router.HeaderDestinationServed)
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

// continueHeaders answers a request or response headers message, applying mut.
func continueHeaders(response bool, mut *extprocv3.HeaderMutation, clearRoute bool) *extprocv3.ProcessingResponse {
	hr := &extprocv3.HeadersResponse{Response: &extprocv3.CommonResponse{HeaderMutation: mut, ClearRouteCache: clearRoute}}
	if response {
		return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ResponseHeaders{ResponseHeaders: hr}}
	}
	return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_RequestHeaders{RequestHeaders: hr}}
}

// bodyResponse answers a request or response body message with cr.
func bodyResponse(response bool, cr *extprocv3.CommonResponse) *extprocv3.ProcessingResponse {
	br := &extprocv3.BodyResponse{Response: cr}
	if response {
		return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ResponseBody{ResponseBody: br}}
	}
	return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_RequestBody{RequestBody: br}}
}

// streamedBody re-emits body as streamed body responses of at most MaxChunk bytes; the last
// carries endOfStream. An empty body is one empty chunk.
func streamedBody(response bool, body []byte, endOfStream bool) []*extprocv3.ProcessingResponse {
	var out []*extprocv3.ProcessingResponse
	for {
		n := min(len(body), MaxChunk)
		last := n == len(body)
		out = append(out, bodyResponse(response, &extprocv3.CommonResponse{
			BodyMutation: &extprocv3.BodyMutation{Mutation: &extprocv3.BodyMutation_StreamedResponse{
				StreamedResponse: &extprocv3.StreamedBodyResponse{Body: body[:n], EndOfStream: last && endOfStream},
			}},
		}))
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
