package sim

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/kvgate/kvgate/tlsconfig"
	"github.com/kvgate/kvgate/tlsconfig/tlsconfigtest"
)

// tlsClient is an HTTP client with tc whose connections close when the test ends.
func tlsClient(t *testing.T, tc *tls.Config) *http.Client {
	tr := &http.Transport{TLSClientConfig: tc}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 30 * time.Second}
}

// serverTLS and clientTLS build tlsconfig's configurations from f, failing the test on error.
func serverTLS(t *testing.T, f tlsconfig.Files) *tls.Config {
	t.Helper()
	tc, err := f.Server()
	if err != nil {
		t.Fatal(err)
	}
	return tc
}

func clientTLS(t *testing.T, f tlsconfig.Files) *tls.Config {
	t.Helper()
	tc, err := f.Client()
	if err != nil {
		t.Fatal(err)
	}
	return tc
}

// chatOver posts a short chat to s with c and returns the status, or the transport's error.
func chatOver(c *http.Client, s *Server) (int, error) {
	resp, err := c.Post(s.URL()+"/v1/chat/completions", "application/json",
		strings.NewReader(`{"messages":[{"role":"user","content":"hi"}],"max_tokens":4}`))
	if err != nil {
		return 0, err
	}
	resp.Body.Close()
	return resp.StatusCode, nil
}

// TestHTTPSServesTrustedClientsOnly: with TLS the OpenAI API answers over HTTPS a client that
// trusts the server's CA, and a client that does not trust it gets a certificate error, not
// an answer. With a client CA (mTLS) a client must also present a certificate that CA signed.
func TestHTTPSServesTrustedClientsOnly(t *testing.T) {
	pki := tlsconfigtest.New(t)
	trusting := tlsClient(t, &tls.Config{RootCAs: pki.Pool, MinVersion: tls.VersionTLS12})
	untrusting := tlsClient(t, &tls.Config{MinVersion: tls.VersionTLS12}) // system roots

	t.Run("TLS", func(t *testing.T) {
		only := pki.Server
		only.CA = "" // server identity, no client certificates asked for
		s := testServer(t, ServerConfig{TLS: serverTLS(t, only)})
		if !strings.HasPrefix(s.URL(), "https://") {
			t.Fatalf("URL %s", s.URL())
		}
		r := chat(t, trusting, s, map[string]any{"messages": msgs("hello there"), "max_tokens": 4, "ignore_eos": true})
		if len(r.Choices) != 1 || r.Usage.CompletionTokens != 4 {
			t.Fatalf("chat over HTTPS: %+v", r)
		}
		_, err := chatOver(untrusting, s)
		var unknown x509.UnknownAuthorityError
		if !errors.As(err, &unknown) {
			t.Fatalf("a client not trusting the CA: err %v, want an unknown-authority error", err)
		}
		resp, err := client(t).Get("http://" + s.Addr() + "/health")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				t.Fatal("plaintext HTTP got 200 from an HTTPS sim")
			}
		}
	})

	t.Run("mTLS", func(t *testing.T) {
		s := testServer(t, ServerConfig{TLS: serverTLS(t, pki.Server)})
		if code, err := chatOver(tlsClient(t, clientTLS(t, pki.Client)), s); err != nil || code != http.StatusOK {
			t.Fatalf("a client with a certificate from the CA: %d, %v", code, err)
		}
		if code, err := chatOver(trusting, s); err == nil {
			t.Fatalf("a client without a certificate got %d", code)
		}
		if code, err := chatOver(tlsClient(t, clientTLS(t, pki.Other)), s); err == nil {
			t.Fatalf("a client certificate from another CA got %d", code)
		}
		if got := counter(t, tlsClient(t, clientTLS(t, pki.Client)), s, MetricPromptTokens); got <= 0 {
			t.Fatalf("prompt tokens %v after the accepted chat", got)
		}
	})
}

// TestNewServerRefusesTLSWithoutCertificate: a TLS configuration without a server
// certificate is an error at start, not a failure at every handshake.
func TestNewServerRefusesTLSWithoutCertificate(t *testing.T) {
	_, err := NewServer(ServerConfig{TLS: &tls.Config{}, KVEvents: ""}, nil, nil)
	if err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("err %v, want one about the missing certificate", err)
	}
}

// TestPrefillDecodeTransferTLS: a prefill sim and a decode sim, both serving mTLS, move a
// request's blocks over the TLS transfer listener. Decode engines that do not trust the
// prefill engine's certificate, present one it does not trust, or dial it in plaintext get
// no blocks: each counts a transfer failure and answers by prefilling locally, and the
// prefill engine keeps the blocks for the decode engine that can pull them.
func TestPrefillDecodeTransferTLS(t *testing.T) {
	pki := tlsconfigtest.New(t)
	stranger := tlsconfigtest.New(t) // another CA altogether
	const bb = 8192
	srv := serverTLS(t, pki.Server)
	pre := testServer(t, ServerConfig{BlockBytes: bb, TLS: srv})
	dec := testServer(t, ServerConfig{BlockBytes: bb, TLS: srv, PeerTLS: clientTLS(t, pki.Client)})
	c := tlsClient(t, clientTLS(t, pki.Client))
	text := longText(21, 400)

	p := completion(t, c, pre, map[string]any{"prompt": text, "max_tokens": 1, "kv_transfer_params": map[string]any{"do_remote_decode": true}})
	var kv map[string]any
	if err := json.Unmarshal(p.KVTransferParams, &kv); err != nil {
		t.Fatalf("kv_transfer_params %s: %v", p.KVTransferParams, err)
	}
	ids, _ := kv["remote_block_ids"].([]any)
	if len(ids) == 0 {
		t.Fatalf("prefill returned no blocks: %s", p.KVTransferParams)
	}

	bad := []struct {
		name string
		peer *tls.Config
	}{
		{"server certificate not trusted", clientTLS(t, stranger.Client)},
		{"client certificate not trusted", clientTLS(t, pki.Other)},
		{"no client certificate", &tls.Config{RootCAs: pki.Pool, MinVersion: tls.VersionTLS12}},
		{"plaintext", nil},
	}
	for _, tc := range bad {
		t.Run(tc.name, func(t *testing.T) {
			d := testServer(t, ServerConfig{BlockBytes: bb, TLS: srv, PeerTLS: tc.peer})
			r := completion(t, c, d, map[string]any{"prompt": text, "max_tokens": 2, "ignore_eos": true, "kv_transfer_params": kv})
			if r.Usage.CachedTokens() != 0 || r.Usage.CompletionTokens != 2 {
				t.Fatalf("usage %+v, want a local prefill and 2 tokens", r.Usage)
			}
			if got := counter(t, c, d, MetricTransferFailures); got != 1 {
				t.Fatalf("transfer failures %v, want 1", got)
			}
			if got := counter(t, c, d, MetricTransferBytes); got != 0 {
				t.Fatalf("%v bytes transferred", got)
			}
			if st := pre.Stats(); st.Held != 1 {
				t.Fatalf("prefill engine holds %d requests after a refused pull, want 1", st.Held)
			}
		})
	}

	d := completion(t, c, dec, map[string]any{"prompt": text, "max_tokens": 3, "ignore_eos": true, "kv_transfer_params": kv})
	if d.Usage.CachedTokens() != len(ids)*16 {
		t.Fatalf("decode cached %d tokens over TLS, want %d", d.Usage.CachedTokens(), len(ids)*16)
	}
	if got := counter(t, c, dec, MetricTransferBytes); got != float64(len(ids)*bb) {
		t.Fatalf("transferred %v bytes, want %d", got, len(ids)*bb)
	}
	if got := counter(t, c, pre, MetricTransferServed); got != float64(len(ids)*bb) {
		t.Fatalf("served %v bytes, want %d", got, len(ids)*bb)
	}
	if st := pre.Stats(); st.Held != 0 {
		t.Fatalf("prefill engine still holds %d requests after the pull", st.Held)
	}
}

// TestP2PPullTLS: a peer pull between two mTLS sims, named by llm-d's header (the source's
// transfer address asked for over HTTPS) or by remote_kv_source, gets the prefix. A puller
// that does not trust the source's certificate, or one side in plaintext, recomputes and
// counts the failure: reason "tls" on the pull; a plaintext/TLS mismatch on the header's
// lookup (HTTP against HTTPS) is a "resolve" failure.
func TestP2PPullTLS(t *testing.T) {
	pki := tlsconfigtest.New(t)
	stranger := tlsconfigtest.New(t)
	srv := serverTLS(t, pki.Server)
	a := testServer(t, ServerConfig{TLS: srv})
	b := testServer(t, ServerConfig{TLS: srv, PeerTLS: clientTLS(t, pki.Client)})
	c := tlsClient(t, clientTLS(t, pki.Client))
	prompt := func(i int) map[string]any {
		return map[string]any{"prompt": longText(500+i, 150), "max_tokens": 2, "ignore_eos": true}
	}
	full := (completion(t, c, a, prompt(0)).Usage.PromptTokens - 1) / 16
	completion(t, c, a, prompt(1))

	h := http.Header{}
	h.Set(HeaderKVCacheSource, a.Addr())
	if got := cachedTokens(t, c, b, h, prompt(0)); got != full*16 {
		t.Fatalf("header pull over TLS: %d cached tokens, want %d", got, full*16)
	}
	viaBody := func(i int, src *Server) map[string]any {
		p := prompt(i)
		p["kv_transfer_params"] = map[string]any{"remote_kv_source": map[string]any{"remote_host": "127.0.0.1", "remote_port": src.TransferPort()}}
		return p
	}
	if got := cachedTokens(t, c, b, http.Header{}, viaBody(1, a)); got == 0 {
		t.Fatal("remote_kv_source pull over TLS: no cached tokens")
	}
	for _, reason := range p2pReasons {
		if got := labelled(t, c, b, MetricP2PFailures, "reason", reason); got != 0 {
			t.Fatalf("trusted puller: failures{reason=%q} = %v", reason, got)
		}
	}

	// A plaintext source holding prompts 0 and 1, for a TLS puller.
	plain := testServer(t, ServerConfig{})
	pc := client(t)
	completion(t, pc, plain, prompt(0))
	completion(t, pc, plain, prompt(1))
	ph := http.Header{}
	ph.Set(HeaderKVCacheSource, plain.Addr())

	cases := []struct {
		name   string
		tls    *tls.Config // the puller's server side (nil: plaintext)
		peer   *tls.Config // the puller's PeerTLS
		header http.Header // the first pull, by header
		body   *Server     // the second, by remote_kv_source to this source
		want   map[string]float64
	}{
		{"source not trusted", srv, clientTLS(t, stranger.Client), h, a, map[string]float64{p2pTLS: 2}},
		{"puller's certificate not trusted", srv, clientTLS(t, pki.Other), h, a, map[string]float64{p2pTLS: 2}},
		{"plaintext puller, TLS source", nil, nil, h, a, map[string]float64{p2pResolve: 1, p2pTLS: 1}},
		{"TLS puller, plaintext source", nil, clientTLS(t, pki.Client), ph, plain, map[string]float64{p2pResolve: 1, p2pTLS: 1}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			x := testServer(t, ServerConfig{TLS: tc.tls, PeerTLS: tc.peer})
			xc := pc
			if tc.tls != nil {
				xc = c
			}
			if got := cachedTokens(t, xc, x, tc.header, prompt(0)); got != 0 {
				t.Fatalf("header pull: %d cached tokens", got)
			}
			if got := cachedTokens(t, xc, x, http.Header{}, viaBody(1, tc.body)); got != 0 {
				t.Fatalf("remote_kv_source pull: %d cached tokens", got)
			}
			for _, reason := range p2pReasons {
				if got := labelled(t, xc, x, MetricP2PFailures, "reason", reason); got != tc.want[reason] {
					t.Errorf("failures{reason=%q} = %v, want %v", reason, got, tc.want[reason])
				}
			}
		})
	}
}
