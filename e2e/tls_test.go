package e2e

import (
	"context"
	"crypto/tls"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/kvgate/kvgate/polltest"
	"github.com/kvgate/kvgate/porttest"
	"github.com/kvgate/kvgate/tlsconfig/tlsconfigtest"
)

// TestUpServesMutualTLS starts `kvgate up --http-tls-*` and checks the gateway answers a
// client with a certificate from the CA over HTTPS and refuses one without.
func TestUpServesMutualTLS(t *testing.T) {
	pki := tlsconfigtest.New(t)
	addr := fmt.Sprintf("127.0.0.1:%d", porttest.Free(t))
	p := startProc(t, kvgateBin, "up", "--engines", "1", "--http", addr,
		"--http-tls-cert", pki.Server.Cert, "--http-tls-key", pki.Server.Key, "--http-tls-ca", pki.Server.CA)
	ctc, err := pki.Client.Client()
	if err != nil {
		t.Fatal(err)
	}
	good := &http.Client{Transport: &http.Transport{TLSClientConfig: ctc, ForceAttemptHTTP2: true}, Timeout: 10 * time.Second}
	bad := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pki.Pool}}, Timeout: 10 * time.Second}
	base := "https://" + addr
	var lastErr error
	if !polltest.Wait(60*time.Second, func() bool {
		select {
		case <-p.done:
			t.Fatalf("kvgate up exited:\n%s", tail(p.output(), 4000))
		default:
		}
		resp, err := good.Get(base + "/health")
		if lastErr = err; err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	}) {
		t.Fatalf("no HTTPS answer: %v\n%s", lastErr, tail(p.output(), 4000))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	body := `{"model":"Qwen/Qwen3-8B","max_tokens":4,"messages":[{"role":"user","content":"hi"}]}`
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, base+"/v1/chat/completions", strings.NewReader(body))
	resp, err := good.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.ProtoMajor != 2 {
		t.Errorf("status %d over %s", resp.StatusCode, resp.Proto)
	}
	if resp, err := bad.Get(base + "/health"); err == nil {
		resp.Body.Close()
		t.Errorf("a client without a certificate got %d", resp.StatusCode)
	}
	if resp, err := http.Get("http://" + addr + "/health"); err == nil {
		resp.Body.Close()
		if resp.StatusCode == 200 {
			t.Error("plaintext HTTP answered 200")
		}
	}
}
