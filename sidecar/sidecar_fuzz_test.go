package sidecar_test

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/kvgate/kvgate/openai"
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

// streams is an in-memory set of engines for a migration: the prefill engine answers
// kv_transfer_params, the local decode engine streams one event and breaks off, the fallback
// decode endpoint streams one event and [DONE].
type streams struct {
	decode, fallback string
	first, second    []byte
}

func (st *streams) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.Body != nil {
		_, _ = io.ReadAll(r.Body)
	}
	typ, body := "application/json", []byte(`{"kv_transfer_params":{"remote_block_ids":[1]}}`)
	switch r.URL.Host {
	case st.decode:
		typ, body = "text/event-stream", append(append([]byte("data: "), st.first...), "\n\n"...)
	case st.fallback:
		typ, body = "text/event-stream", append(append([]byte("data: "), st.second...), "\n\ndata: [DONE]\n\n"...)
	}
	return &http.Response{StatusCode: 200, Header: http.Header{"Content-Type": {typ}},
		Body: io.NopCloser(bytes.NewReader(body)), Request: r}, nil
}

// FuzzSidecarMigration: whatever the client's body and the chunks the failing decode engine
// and the fallback send, the sidecar does not panic (an aborted response aside) and a stream
// it does not abort ends with [DONE].
func FuzzSidecarMigration(f *testing.F) {
	f.Add([]byte(`{"model":"m","prompt":"a","stream":true,"max_tokens":5}`),
		[]byte(`{"id":"x","choices":[{"index":0,"text":" the"}],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}`),
		[]byte(`{"id":"y","choices":[{"index":0,"text":" end","finish_reason":"length"}]}`))
	f.Add([]byte(`{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":true,"stream_options":{"include_usage":true}}`),
		[]byte(`{"error":{"message":"boom"}}`), []byte(`not json`))
	f.Add([]byte(`{"stream":true,"prompt":"x","max_tokens":1}`), []byte(`{"choices":[{"text":"a"}]}`), []byte(`{}`))
	st := &streams{decode: "127.0.0.1:9", fallback: "127.0.0.1:10"}
	s, err := sidecar.New(sidecar.Config{Engine: st.decode, Transport: st, Prefill: sidecar.NewPrefillSet("127.0.0.1:11"),
		Decode: sidecar.NewPrefillSet(st.fallback)}, nil, nil)
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, body, first, second []byte) {
		if bytes.ContainsAny(first, "\r\n") || bytes.ContainsAny(second, "\r\n") {
			return // one event each
		}
		st.first, st.second = first, second // one input at a time per fuzzing process
		for _, path := range []string{"/v1/completions", "/v1/chat/completions"} {
			req := httptest.NewRequest(http.MethodPost, path, bytes.NewReader(body))
			req.Header.Set(sidecar.HeaderPrefiller, "127.0.0.1:11")
			req.Header.Set(sidecar.HeaderDestination, "127.0.0.1:12,"+st.fallback)
			w := httptest.NewRecorder()
			aborted := func() (aborted bool) {
				defer func() {
					if p := recover(); p != nil {
						if p != http.ErrAbortHandler {
							panic(p)
						}
						aborted = true
					}
				}()
				s.ServeHTTP(w, req)
				return false
			}()
			if !aborted && w.Header().Get("Content-Type") == "text/event-stream" && openai.NewStitch(path, body) != nil &&
				!bytes.HasSuffix(w.Body.Bytes(), []byte("data: [DONE]\n\n")) {
				t.Fatalf("a stream not aborted ends with %q", w.Body.Bytes())
			}
		}
	})
}
