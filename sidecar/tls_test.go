package sidecar_test

import (
	"context"
	"crypto/tls"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/kvgate/kvgate/sidecar"
	"github.com/kvgate/kvgate/tlsconfig/tlsconfigtest"
)

// TestSidecarTLS: with TLS configured the sidecar serves HTTPS and, with a CA, only to
// clients holding a certificate that CA signed; plaintext and foreign certificates get
// nothing through to the engine.
func TestSidecarTLS(t *testing.T) {
	pki := tlsconfigtest.New(t)
	srvTLS, err := pki.Server.Server()
	if err != nil {
		t.Fatal(err)
	}
	dec := newFakeEngine(t, decodeOK)
	s, _ := startSidecar(t, dec.addr(), func(c *sidecar.Config) { c.TLS = srvTLS })
	do := func(scheme string, files *tls.Config) (*http.Response, error) {
		c := &http.Client{Transport: &http.Transport{TLSClientConfig: files}}
		req, _ := http.NewRequestWithContext(context.Background(), http.MethodPost, scheme+"://"+s.Addr()+"/v1/chat/completions", strings.NewReader(chatReq))
		return c.Do(req)
	}
	good, err := pki.Client.Client()
	if err != nil {
		t.Fatal(err)
	}
	resp, err := do("https", good)
	if err != nil {
		t.Fatalf("mTLS client refused: %v", err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || len(dec.requests()) != 1 {
		t.Fatalf("mTLS client: %d, engine saw %d", resp.StatusCode, len(dec.requests()))
	}

	other, err := pki.Other.Client()
	if err != nil {
		t.Fatal(err)
	}
	if resp, err := do("https", other); err == nil {
		resp.Body.Close()
		t.Errorf("a client certificate from another CA got %d", resp.StatusCode)
	}
	noCert := &tls.Config{RootCAs: pki.Pool, MinVersion: tls.VersionTLS12}
	if resp, err := do("https", noCert); err == nil {
		resp.Body.Close()
		t.Errorf("a client without a certificate got %d", resp.StatusCode)
	}
	if resp, err := do("http", nil); err == nil {
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			t.Error("plaintext HTTP got 200 from a TLS sidecar")
		}
	}
	if n := len(dec.requests()); n != 1 {
		t.Fatalf("the engine saw %d requests, want only the mTLS client's", n)
	}
}
