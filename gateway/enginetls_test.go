package gateway_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kvgate/kvgate/engine/sim"
	"github.com/kvgate/kvgate/engine/sim/simtest"
	"github.com/kvgate/kvgate/extproc"
	"github.com/kvgate/kvgate/gateway"
	"github.com/kvgate/kvgate/polltest"
	"github.com/kvgate/kvgate/router"
	"github.com/kvgate/kvgate/tlsconfig"
	"github.com/kvgate/kvgate/tlsconfig/tlsconfigtest"
	"github.com/kvgate/kvgate/tokenizer"
)

// mtlsSim starts a simulated engine serving its HTTP API over mutual TLS: it requires a
// client certificate signed by the PKI's CA.
func mtlsSim(t *testing.T, p tlsconfigtest.PKI) *sim.Server {
	t.Helper()
	cfg := sim.ServerConfig{Addr: "127.0.0.1:0", TLS: tlsOf(t, p.Server.Server)}
	cfg.Engine.NumBlocks = 2048
	s := simtest.Start(t, cfg, nil, nil)
	return s
}

func tlsOf(t *testing.T, build func() (*tls.Config, error)) *tls.Config {
	t.Helper()
	tc, err := build()
	if err != nil {
		t.Fatal(err)
	}
	return tc
}

// lockedBuffer is a log sink safe for the router's goroutines.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// tlsRouter is a running router over the engines at addrs, all with TLS set, reaching them
// with engineTLS; it logs into the returned buffer.
func tlsRouter(t *testing.T, engineTLS *tls.Config, addrs ...string) (*router.Router, *prometheus.Registry, *lockedBuffer) {
	t.Helper()
	reg := prometheus.NewRegistry()
	rc := router.DefaultConfig()
	rc.Policy = router.PolicyRoundRobin
	rc.Models = tokenizer.DefaultModelMap()
	rc.EngineTLS = engineTLS
	rc.ScrapeInterval = 50 * time.Millisecond
	for i, a := range addrs {
		rc.Endpoints = append(rc.Endpoints, router.Endpoint{Name: fmt.Sprint("e", i), Address: a, TLS: true,
			Models: []string{model}, Role: router.RoleAggregated, BlockSize: 16})
	}
	logs := &lockedBuffer{}
	rt, err := router.New(rc, slog.New(slog.NewTextHandler(logs, nil)), reg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- rt.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return rt, reg, logs
}

// runGateway runs gw and returns its base URL.
func runGateway(t *testing.T, gw *gateway.Gateway) string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- gw.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done; gw.Close() })
	actx, acancel := context.WithTimeout(ctx, 5*time.Second)
	defer acancel()
	addr, err := gw.Addr(actx)
	if err != nil {
		t.Fatal(err)
	}
	return "http://" + addr.String()
}

// postChat sends one chat completion and returns the status, the endpoint header and the body.
func postChat(t *testing.T, url, content string) (int, string, string) {
	t.Helper()
	resp, err := http.Post(url+"/v1/chat/completions", "application/json", bytes.NewReader(chatRequest(content)))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header.Get(router.HeaderEndpoint), string(b)
}

func chatRequest(content string) []byte {
	return []byte(fmt.Sprintf(`{"model":%q,"max_tokens":4,"messages":[{"role":"user","content":%q}]}`, model, content))
}

// TestEngineMTLS puts the router and the gateway in front of two simulated engines that
// serve only mutual TLS: with the client certificate, the router scrapes both engines' load
// from their /metrics over TLS and the gateway's requests reach both (200, the served
// endpoint named); in the remote-EPP data plane too. Without the certificate the engines
// refuse the router: both are out of rotation with the TLS error logged, and a request is a
// 503, not a panic or a plaintext attempt.
func TestEngineMTLS(t *testing.T) {
	p := tlsconfigtest.New(t)
	a, b := mtlsSim(t, p), mtlsSim(t, p)
	addrs := []string{a.Addr(), b.Addr()}
	client := tlsOf(t, p.Client.Client)

	t.Run("in-process router", func(t *testing.T) {
		rt, reg, _ := tlsRouter(t, client, addrs...)
		polltest.Until(t, 10*time.Second, "both engines scraped over TLS", func() bool {
			l := rt.Load()
			return len(l) == 2 && l[0].EngineFresh && l[1].EngineFresh &&
				l[0].LoadSource == router.LoadSourceEngine && l[1].LoadSource == router.LoadSourceEngine
		})
		gw, err := gateway.New(gateway.Config{Addr: "127.0.0.1:0", EngineTLS: client}, rt, nil, reg)
		if err != nil {
			t.Fatal(err)
		}
		url := runGateway(t, gw)
		served := map[string]int{}
		for i := range 4 {
			code, ep, body := postChat(t, url, fmt.Sprint("hello over TLS ", i))
			if code != http.StatusOK || !strings.Contains(body, `"choices"`) {
				t.Fatalf("request %d: %d %s", i, code, body)
			}
			if !slices.Contains(addrs, ep) {
				t.Fatalf("request %d served by %q, want one of %v", i, ep, addrs)
			}
			served[ep]++
		}
		if len(served) != 2 {
			t.Fatalf("round-robin over two TLS engines served %v, want both", served)
		}
		if st := a.Stats(); st.PromptTokens == 0 {
			t.Fatalf("engine a admitted no prompt: %+v", st)
		}
	})

	t.Run("remote EPP", func(t *testing.T) {
		rt, reg, _ := tlsRouter(t, client, addrs...)
		ec := gateway.EPPConfig{Addr: serveExtProc(t, extproc.Config{}, rt, reg)}
		for _, a := range addrs {
			ec.Pool = append(ec.Pool, router.Endpoint{Address: a, TLS: true, Models: []string{model}})
		}
		gw, err := gateway.NewEPP(gateway.Config{Addr: "127.0.0.1:0", EngineTLS: client}, ec, nil, prometheus.NewRegistry())
		if err != nil {
			t.Fatal(err)
		}
		url := runGateway(t, gw)
		for i := range 2 {
			code, ep, body := postChat(t, url, fmt.Sprint("hello through the EPP ", i))
			if code != http.StatusOK || !slices.Contains(addrs, ep) {
				t.Fatalf("request %d: %d from %q: %s", i, code, ep, body)
			}
		}
	})

	t.Run("no client certificate", func(t *testing.T) {
		noCert := tlsOf(t, tlsconfig.Files{CA: p.CA}.Client)
		rt, reg, logs := tlsRouter(t, noCert, addrs...)
		polltest.Until(t, 10*time.Second, "both engines out of rotation", func() bool {
			l := rt.Load()
			return len(l) == 2 && !l[0].Healthy && !l[1].Healthy
		})
		polltest.Until(t, 10*time.Second, "the TLS refusal logged", func() bool {
			return strings.Contains(logs.String(), "endpoint unreachable") && strings.Contains(logs.String(), "certificate")
		})
		gw, err := gateway.New(gateway.Config{Addr: "127.0.0.1:0", EngineTLS: noCert}, rt, nil, reg)
		if err != nil {
			t.Fatal(err)
		}
		url := runGateway(t, gw)
		if code, _, body := postChat(t, url, "refused"); code != http.StatusServiceUnavailable {
			t.Fatalf("request with every engine refusing the router: %d %s, want 503", code, body)
		}
	})
}
