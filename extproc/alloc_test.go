package extproc

import (
	"net/http"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/protobuf/proto"
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
