package extproc

import (
	"net/http"
	"reflect"
	"strings"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/kvgate/kvgate/router"
)

// The answers the server builds for every message are cheap to build (issue 18: CPU per
// request) and still say what they said: a streamed body chunk is one allocation besides
// its slice, a header mutation three besides the mutation and the lower-cased keys.
func TestAnswerAllocations(t *testing.T) {
	body := []byte(`data: {"choices":[]}` + "\n\n")
	want := &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ResponseBody{ResponseBody: &extprocv3.BodyResponse{
		Response: &extprocv3.CommonResponse{BodyMutation: &extprocv3.BodyMutation{Mutation: &extprocv3.BodyMutation_StreamedResponse{
			StreamedResponse: &extprocv3.StreamedBodyResponse{Body: body, EndOfStream: true},
		}}},
	}}}
	got := streamedBody(true, body, true)
	if len(got) != 1 || !proto.Equal(got[0], want) {
		t.Fatalf("streamedBody = %v, want %v", got, want)
	}
	if n := testing.AllocsPerRun(100, func() { streamedBody(true, body, true) }); n > 2 {
		t.Errorf("streamedBody of one chunk: %v allocations, want <= 2", n)
	}

	h := http.Header{"X-B": {"2", "3"}, "X-A": {"1"}, "x-c": {"4"}}
	mut := setHeaders(h)
	wantMut := &extprocv3.HeaderMutation{}
	for _, kv := range [][2]string{{"x-a", "1"}, {"x-b", "2,3"}, {"x-c", "4"}} {
		wantMut.SetHeaders = append(wantMut.SetHeaders, &corev3.HeaderValueOption{
			Header:       &corev3.HeaderValue{Key: kv[0], RawValue: []byte(kv[1])},
			AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD,
		})
	}
	if !proto.Equal(mut, wantMut) {
		t.Fatalf("setHeaders = %v, want %v", mut, wantMut)
	}
	// keys, options, values, value bytes, the mutation and its slice; two keys to lower-case.
	if n := testing.AllocsPerRun(100, func() { setHeaders(h) }); n > 8 {
		t.Errorf("setHeaders of 3 headers: %v allocations, want <= 8", n)
	}
}

// TestDecisionHeaders keeps decisionHeaders equal to router.Decision.Header, which it builds
// without an http.Header, for every shape of decision: fallbacks, disaggregation, a P2P pull.
func TestDecisionHeaders(t *testing.T) {
	a, b, c := router.Endpoint{Address: "10.0.0.1:8000"}, router.Endpoint{Address: "10.0.0.2:8000"}, router.Endpoint{Address: "10.0.0.3:8000"}
	for _, tt := range []struct {
		name string
		d    *router.Decision
	}{
		{"target", &router.Decision{Endpoint: a, CachedBlocks: 7}},
		{"fallbacks", &router.Decision{Endpoint: a, Fallbacks: []router.Endpoint{b, c}, CachedBlocks: 1234}},
		{"disaggregated", &router.Decision{Endpoint: a, Prefill: &b}},
		{"pull", &router.Decision{Endpoint: a, Fallbacks: []router.Endpoint{c}, Pull: &router.Pull{From: b, Blocks: 3}}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var h headerSet
			decisionHeaders(&h, tt.d)
			got := http.Header{}
			for _, kv := range h.kv[:h.n] {
				got[http.CanonicalHeaderKey(kv[0])] = []string{kv[1]}
			}
			if want := tt.d.Header(); !reflect.DeepEqual(got, want) {
				t.Errorf("decisionHeaders = %v, Decision.Header = %v", got, want)
			}
			mut := h.mutation()
			for i, o := range mut.GetSetHeaders() {
				if i > 0 && mut.GetSetHeaders()[i-1].GetHeader().GetKey() >= o.GetHeader().GetKey() {
					t.Errorf("keys not sorted: %v", mut)
				}
				if o.GetHeader().GetKey() != strings.ToLower(o.GetHeader().GetKey()) {
					t.Errorf("key %q is not lower-case", o.GetHeader().GetKey())
				}
			}
		})
	}
	// The mutation, its slice, the options with their values, the value bytes.
	var h headerSet
	decisionHeaders(&h, &router.Decision{Endpoint: a, CachedBlocks: 7})
	if n := testing.AllocsPerRun(100, func() { h.mutation() }); n > 4 {
		t.Errorf("headerSet.mutation of 3 headers: %v allocations, want <= 4", n)
	}
}

// TestContinueHeadersAllocations checks a headers answer says what it did and is one
// allocation.
func TestContinueHeadersAllocations(t *testing.T) {
	mut := &extprocv3.HeaderMutation{RemoveHeaders: []string{"x"}}
	for _, response := range []bool{false, true} {
		hr := &extprocv3.HeadersResponse{Response: &extprocv3.CommonResponse{HeaderMutation: mut, ClearRouteCache: !response}}
		want := &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_RequestHeaders{RequestHeaders: hr}}
		if response {
			want = &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ResponseHeaders{ResponseHeaders: hr}}
		}
		if got := continueHeaders(response, mut, !response); !proto.Equal(got, want) {
			t.Errorf("continueHeaders(%v) = %v, want %v", response, got, want)
		}
		if n := testing.AllocsPerRun(100, func() { continueHeaders(response, mut, true) }); n > 1 {
			t.Errorf("continueHeaders: %v allocations, want 1", n)
		}
	}
}

// TestPickMetadataAllocations checks the pick's dynamic metadata says what it did and is
// five allocations: the messages, and two maps of two each.
func TestPickMetadataAllocations(t *testing.T) {
	dest := "10.0.0.1:8000,10.0.0.2:8000"
	want := &structpb.Struct{Fields: map[string]*structpb.Value{
		router.MetadataNamespace: structpb.NewStructValue(&structpb.Struct{Fields: map[string]*structpb.Value{
			router.HeaderDestination: structpb.NewStringValue(dest),
		}}),
	}}
	if got := pickMetadata(dest); !proto.Equal(got, want) {
		t.Fatalf("pickMetadata = %v, want %v", got, want)
	}
	if n := testing.AllocsPerRun(100, func() { pickMetadata(dest) }); n > 5 {
		t.Errorf("pickMetadata: %v allocations, want <= 5", n)
	}
}
