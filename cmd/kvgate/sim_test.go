package main

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/kvgate/kvgate/polltest"
	"github.com/kvgate/kvgate/porttest"
	"github.com/kvgate/kvgate/tlsconfig/tlsconfigtest"
)

// TestSimListensOnLoopbackByDefault: the simulated engine's HTTP, KV-event and replay
// sockets bind loopback unless a flag says otherwise.
func TestSimListensOnLoopbackByDefault(t *testing.T) {
	f := newSimCmd(&globals{}).Flags()
	for _, name := range []string{"host", "kv-events", "kv-events-replay"} {
		v := f.Lookup(name).DefValue
		host := strings.TrimPrefix(v, "tcp://")
		if h, _, err := net.SplitHostPort(host); err == nil {
			host = h
		}
		if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
			t.Errorf("--%s defaults to %q, want a loopback address", name, v)
		}
	}
}

// TestSimServesMutualTLS runs `kvgate sim --tls-cert --tls-key --tls-ca --peer-tls-*`: the
// OpenAI API answers a chat over HTTPS (HTTP/2) to a client holding a certificate from the
// CA, refuses one without, and the command returns cleanly when its context ends.
func TestSimServesMutualTLS(t *testing.T) {
	pki := tlsconfigtest.New(t)
	port := strconv.Itoa(porttest.Free(t))
	addr := net.JoinHostPort("127.0.0.1", port)
	root := newRootCmd()
	root.SetArgs([]string{"sim", "--port", port, "--kv-events", "", "--kv-events-replay", "", "--num-blocks", "512",
		"--tls-cert", pki.Server.Cert, "--tls-key", pki.Server.Key, "--tls-ca", pki.Server.CA,
		"--peer-tls-ca", pki.Client.CA, "--peer-tls-cert", pki.Client.Cert, "--peer-tls-key", pki.Client.Key})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- root.ExecuteContext(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("kvgate sim: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("kvgate sim did not return")
		}
	})

	ctc, err := pki.Client.Client()
	if err != nil {
		t.Fatal(err)
	}
	tr := &http.Transport{TLSClientConfig: ctc, ForceAttemptHTTP2: true}
	t.Cleanup(tr.CloseIdleConnections)
	good := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	polltest.Until(t, 30*time.Second, "the sim answers /health over HTTPS", func() bool {
		select {
		case err := <-done:
			t.Fatalf("kvgate sim exited: %v", err)
		default:
		}
		resp, err := good.Get("https://" + addr + "/health")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	chat := `{"messages":[{"role":"user","content":"hi"}],"max_tokens":4}`
	resp, err := good.Post("https://"+addr+"/v1/chat/completions", "application/json", strings.NewReader(chat))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), `"choices"`) || resp.ProtoMajor != 2 {
		t.Fatalf("chat over mTLS: %d over %s: %s", resp.StatusCode, resp.Proto, body)
	}
	noCert := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pki.Pool, MinVersion: tls.VersionTLS12}}, Timeout: 10 * time.Second}
	if resp, err := noCert.Post("https://"+addr+"/v1/chat/completions", "application/json", strings.NewReader(chat)); err == nil {
		resp.Body.Close()
		t.Fatalf("a client without a certificate got %d", resp.StatusCode)
	}
}

// TestSimTLSFlagErrors: a TLS flag naming a missing or wrong file, or half of a key pair,
// stops `kvgate sim` at start with an error naming the flags.
func TestSimTLSFlagErrors(t *testing.T) {
	pki := tlsconfigtest.New(t)
	missing := filepath.Join(t.TempDir(), "missing.pem")
	base := []string{"sim", "--port", "0", "--kv-events", "", "--kv-events-replay", ""}
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"certificate without key", []string{"--tls-cert", pki.Server.Cert}, "--tls-*"},
		{"missing key file", []string{"--tls-cert", pki.Server.Cert, "--tls-key", missing}, "missing.pem"},
		{"client CA without certificate", []string{"--tls-ca", pki.CA}, "--tls-*"},
		{"client CA not PEM", []string{"--tls-cert", pki.Server.Cert, "--tls-key", pki.Server.Key, "--tls-ca", pki.Server.Key}, "no PEM certificate"},
		{"missing peer CA", []string{"--peer-tls-ca", missing}, "--peer-tls-*"},
		{"peer certificate without key", []string{"--peer-tls-ca", pki.CA, "--peer-tls-cert", pki.Client.Cert}, "--peer-tls-*"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := runKvgate(t, append(base, tc.args...)...)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want one containing %q", err, tc.want)
			}
		})
	}
}
