package main

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/spf13/cobra"

	"github.com/kvgate/kvgate/engine/sim"
	"github.com/kvgate/kvgate/engine/sim/simtest"
	"github.com/kvgate/kvgate/porttest"
	"github.com/kvgate/kvgate/router"
	"github.com/kvgate/kvgate/tlsconfig/tlsconfigtest"
	"github.com/kvgate/kvgate/tokenizer"
)

// TestRouterReachesMTLSEngine runs `kvgate router --endpoint https://... --engine-tls-*` in
// front of a simulated engine that serves only mutual TLS: the router learns the engine's
// models from its /v1/models over TLS (no --served-model) and its gateway answers a chat
// from that engine; so does one given the engine's https:// address in an endpoints file.
func TestRouterReachesMTLSEngine(t *testing.T) {
	pki := tlsconfigtest.New(t)
	stc, err := pki.Server.Server()
	if err != nil {
		t.Fatal(err)
	}
	s := simtest.Start(t, sim.ServerConfig{Addr: "127.0.0.1:0", TLS: stc}, nil, nil)

	eng := "https://" + s.Addr()
	file := filepath.Join(t.TempDir(), "engines.yaml")
	if err := os.WriteFile(file, []byte("- {address: \""+eng+"\", models: ["+tokenizer.DefaultModel+"]}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	tlsFlags := []string{"--engine-tls-ca", pki.Client.CA, "--engine-tls-cert", pki.Client.Cert, "--engine-tls-key", pki.Client.Key}
	for _, tc := range []struct {
		name string
		args []string
	}{
		{"--endpoint", []string{"--endpoint", eng, "--kv-events", "none"}}, // models asked from /v1/models over TLS
		{"--endpoints file", []string{"--endpoints", file}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			httpAddr := net.JoinHostPort("127.0.0.1", strconv.Itoa(porttest.Free(t)))
			runCmd(t, newRouterCmd, append(append([]string{"--grpc", "127.0.0.1:0", "--http", httpAddr}, tc.args...), tlsFlags...)...)
			chat := `{"model":"` + tokenizer.DefaultModel + `","messages":[{"role":"user","content":"hi"}],"max_tokens":4}`
			var code int
			var served, body string
			waitFor(t, "a chat through kvgate router to the mTLS engine", func() bool {
				resp, err := http.Post("http://"+httpAddr+"/v1/chat/completions", "application/json", strings.NewReader(chat))
				if err != nil {
					return false
				}
				defer resp.Body.Close()
				b, _ := io.ReadAll(resp.Body)
				code, served, body = resp.StatusCode, resp.Header.Get(router.HeaderEndpoint), string(b)
				return code == http.StatusOK
			})
			if served != s.Addr() || !strings.Contains(body, `"choices"`) {
				t.Fatalf("chat: %d from %q: %s", code, served, body)
			}
		})
	}
}

// TestEngineTLSFlagErrors: an --engine-tls-* flag naming a missing or non-PEM CA, or a
// certificate without its key, stops kvgate router, gateway and up at start with an error
// naming the flags, before any engine is dialled.
func TestEngineTLSFlagErrors(t *testing.T) {
	dir := t.TempDir()
	notPEM := filepath.Join(dir, "ca.txt")
	if err := os.WriteFile(notPEM, []byte("not a certificate\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	pki := tlsconfigtest.New(t)
	eps := []string{"--endpoint", "https://127.0.0.1:1", "--served-model", "m"}
	cmds := []struct {
		name   string
		newCmd func(*globals) *cobra.Command
		args   []string
	}{
		{"router", newRouterCmd, append([]string{"--grpc", "127.0.0.1:0"}, eps...)},
		{"gateway", newGatewayCmd, append([]string{"--epp", "127.0.0.1:1", "--http", "127.0.0.1:0"}, eps...)},
		{"up", newUpCmd, append([]string{"--http", "127.0.0.1:0"}, eps...)},
	}
	bad := []struct {
		name  string
		flags []string
		want  string
	}{
		{"missing CA", []string{"--engine-tls-ca", filepath.Join(dir, "nope.pem")}, "no such file"},
		{"CA not PEM", []string{"--engine-tls-ca", notPEM}, "no PEM certificate"},
		{"cert without key", []string{"--engine-tls-ca", pki.CA, "--engine-tls-cert", pki.Client.Cert}, "needs its key"},
	}
	for _, c := range cmds {
		for _, b := range bad {
			t.Run(c.name+"/"+b.name, func(t *testing.T) {
				cmd := c.newCmd(&globals{log: slog.New(slog.DiscardHandler)})
				cmd.SetArgs(append(append([]string{}, c.args...), b.flags...))
				cmd.SetOut(io.Discard)
				cmd.SilenceUsage, cmd.SilenceErrors = true, true
				err := cmd.ExecuteContext(context.Background())
				if err == nil || !strings.Contains(err.Error(), "--engine-tls-*") || !strings.Contains(err.Error(), b.want) {
					t.Fatalf("err = %v, want --engine-tls-* and %q", err, b.want)
				}
			})
		}
	}
}
