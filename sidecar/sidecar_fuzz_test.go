package sidecar_test

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/kvgate/kvgate/sidecar"
)

// roundTrip is an in-memory pair of engines: the prefill engine (any host but the decode
// engine's) answers with answer; the decode engine echoes the body it got.
type roundTrip struct {
	decode string
	answer []byte
}

func (rt *roundTrip) RoundTrip(r *http.Request) (*http.Response, error) {
	var b []byte
	if r.Body != nil { // a request without a body has none (http.RoundTripper's contract)
		b, _ = io.ReadAll(r.Body)
	}
	body := rt.answer
	if r.URL.Host == rt.decode {
		body = b
	}
	return &http.Response{StatusCode: 200, Header: http.Header{"Content-Type": {"application/json"}},
		Body: io.NopCloser(bytes.NewReader(body)), Request: r}, nil
}

// FuzzSidecar: whatever the request body, the prefiller header and the prefill engine's
// answer, the sidecar neither panics nor fails the client: the decode engine gets the
// client's body unchanged after a fallback, and a JSON object carrying the prefill's
// kv_transfer_params object after a remote prefill.
func FuzzSidecar(f *testing.F) {
	f.Add([]byte(`{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":true}`), "10.0.0.1:8000",
		[]byte(`{"kv_transfer_params":{"do_remote_prefill":true,"remote_block_ids":[1]}}`))
	f.Add([]byte(`{"prompt":"x","max_tokens":3}`), "10.0.0.1:8000", []byte(`{"kv_transfer_params":null}`))
	f.Add([]byte(`[]`), "h:1", []byte(`{}`))
	f.Add([]byte(`{"a":1,"a":2}`), "[::1]:80", []byte(`{"kv_transfer_params":{}}`))
	f.Add([]byte(`not json`), "", []byte(`garbage`))
	rt := &roundTrip{decode: "127.0.0.1:9"}
	known := sidecar.NewPrefillSet()
	s, err := sidecar.New(sidecar.Config{Engine: rt.decode, Transport: rt, Prefill: known}, nil, nil)
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, body []byte, prefiller string, answer []byte) {
		rt.answer = answer // one input at a time per fuzzing process
		known.Set([]string{prefiller})
		req := httptest.NewRequest(http.MethodPost, "/v1/chat/completions", bytes.NewReader(body))
		if prefiller != "" && !strings.ContainsAny(prefiller, "\r\n\x00") {
			req.Header.Set(sidecar.HeaderPrefiller, prefiller)
		}
		w := httptest.NewRecorder()
		s.ServeHTTP(w, req)
		if w.Code != 200 {
			t.Fatalf("client got %d: %s", w.Code, w.Body.Bytes())
		}
		got := w.Body.Bytes()
		if w.Header().Get(sidecar.HeaderPrefillEndpoint) == "" {
			if !bytes.Equal(got, body) {
				t.Fatalf("without a remote prefill the decode engine got %q, want the client's %q", got, body)
			}
			return
		}
		var m map[string]json.RawMessage
		if err := json.Unmarshal(got, &m); err != nil {
			t.Fatalf("decode body after a remote prefill is not an object: %v: %q", err, got)
		}
		if p := bytes.TrimSpace(m["kv_transfer_params"]); len(p) == 0 || p[0] != '{' {
			t.Fatalf("decode body without the prefill's kv_transfer_params: %q", got)
		}
	})
}
