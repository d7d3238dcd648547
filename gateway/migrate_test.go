package gateway_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/kvgate/kvgate/engine/sim"
	"github.com/kvgate/kvgate/engine/sim/simtest"
	"github.com/kvgate/kvgate/gateway"
	"github.com/kvgate/kvgate/metricstest"
	"github.com/kvgate/kvgate/openai"
	"github.com/kvgate/kvgate/polltest"
	"github.com/kvgate/kvgate/router"
)

// chainSim starts an in-process simulated engine with chained output (a continued request
// gets exactly the rest of the answer).
func chainSim(t *testing.T) *sim.Server {
	t.Helper()
	cfg := sim.ServerConfig{Addr: "127.0.0.1:0", ChainOutput: true}
	cfg.Engine.NumBlocks = 1024
	cfg.Engine.Timing = sim.DefaultTiming()
	cfg.Engine.Timing.Base = 10 * time.Millisecond // about 10 ms a token: the kill lands mid-stream
	s := simtest.Start(t, cfg, nil, nil)
	waitServing(t, s.Addr())
	return s
}

// waitServing returns once the engine at addr answers /health: its Run has started every
// goroutine it keeps for its lifetime, so a goleak snapshot taken after holds them all.
func waitServing(t *testing.T, addr string) {
	t.Helper()
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr, Timeout: time.Second}
	polltest.Until(t, 10*time.Second, "engine "+addr+" serving /health", func() bool {
		resp, err := c.Get("http://" + addr + "/health")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
}

// faultProxy is a TCP proxy in front of an engine that can be killed (every connection
// closed at once, as when the engine process dies) or frozen (the engine's bytes stop, the
// connections stay open, as a hung engine).
type faultProxy struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	conns  []net.Conn
	frozen bool
	stop   chan struct{}
	wg     sync.WaitGroup
}

func newFaultProxy(t *testing.T, target string) *faultProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &faultProxy{ln: ln, target: target, stop: make(chan struct{})}
	p.wg.Go(p.accept)
	t.Cleanup(func() { p.kill(); p.wg.Wait() })
	return p
}

func (p *faultProxy) addr() string { return p.ln.Addr().String() }

func (p *faultProxy) accept() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		u, err := net.Dial("tcp", p.target)
		if err != nil {
			c.Close()
			continue
		}
		p.mu.Lock()
		p.conns = append(p.conns, c, u)
		p.mu.Unlock()
		p.wg.Go(func() { _, _ = io.Copy(u, c); u.Close() })
		p.wg.Go(func() {
			buf := make([]byte, 4096)
			for {
				n, err := u.Read(buf)
				p.mu.Lock()
				frozen := p.frozen
				p.mu.Unlock()
				if frozen {
					<-p.stop
					return
				}
				if n > 0 {
					if _, werr := c.Write(buf[:n]); werr != nil {
						return
					}
				}
				if err != nil {
					c.Close()
					return
				}
			}
		})
	}
}

// kill closes the listener and every connection.
func (p *faultProxy) kill() {
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-p.stop:
		return
	default:
	}
	close(p.stop)
	p.ln.Close()
	for _, c := range p.conns {
		c.Close()
	}
}

// freeze stops forwarding the engine's bytes.
func (p *faultProxy) freeze() {
	p.mu.Lock()
	p.frozen = true
	p.mu.Unlock()
}

// streamed is what a client read of one SSE answer.
type streamed struct {
	text    string
	ids     map[string]bool
	usage   []openai.Usage
	done    bool
	err     error
	errEvts int
}

// readStream reads an SSE answer; after `after` content events it calls fault once.
func readStream(resp *http.Response, chat bool, after int, fault func()) streamed {
	out := streamed{ids: map[string]bool{}}
	sc := bufio.NewScanner(resp.Body)
	var text strings.Builder
	n := 0
	for sc.Scan() {
		data, ok := strings.CutPrefix(sc.Text(), "data: ")
		if !ok {
			continue
		}
		if data == openai.Done {
			out.done = true
			continue
		}
		var ch struct {
			ID      string `json:"id"`
			Choices []struct {
				Delta struct{ Content string } `json:"delta"`
				Text  string                   `json:"text"`
			} `json:"choices"`
			Usage *openai.Usage   `json:"usage"`
			Error json.RawMessage `json:"error"`
		}
		if err := json.Unmarshal([]byte(data), &ch); err != nil {
			out.err = err
			continue
		}
		if ch.Error != nil {
			out.errEvts++
			continue
		}
		out.ids[ch.ID] = true
		if ch.Usage != nil {
			out.usage = append(out.usage, *ch.Usage)
		}
		for _, c := range ch.Choices {
			piece := c.Text
			if chat {
				piece = c.Delta.Content
			}
			if piece != "" {
				text.WriteString(piece)
				n++
				if n == after && fault != nil {
					fault()
				}
			}
		}
	}
	if err := sc.Err(); err != nil && out.err == nil {
		out.err = err
	}
	out.text = text.String()
	return out
}

// TestMigrationStitchesOneStream kills (or freezes) the engine serving a stream after some
// tokens: with migration on, the client still gets one stream with the first id, exactly
// the answer the engine would have given (no repeated or missing token), and one usage with
// the true totals; with it off, the stream is cut.
func TestMigrationStitchesOneStream(t *testing.T) {
	const maxTokens = 40
	for _, tc := range []struct {
		name   string
		path   string
		fault  string
		limit  int
		reason string
	}{
		{"chat killed", "/v1/chat/completions", "kill", 0, "engine_failed"},
		{"completion killed", "/v1/completions", "kill", 0, "engine_failed"},
		{"chat frozen", "/v1/chat/completions", "freeze", 0, "stall"},
		{"chat killed without migration", "/v1/chat/completions", "kill", -1, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, b := chainSim(t), chainSim(t)
			pa, pb := newFaultProxy(t, a.Addr()), newFaultProxy(t, b.Addr())
			f := start(t, gateway.Config{MigrationLimit: tc.limit, MigrationStall: 300 * time.Millisecond}, pa.addr(), pb.addr())
			chat := tc.path == "/v1/chat/completions"
			req := map[string]any{"model": model, "stream": true, "max_tokens": maxTokens, "ignore_eos": true,
				"stream_options": map[string]any{"include_usage": true}}
			if chat {
				req["messages"] = []map[string]string{{"role": "user", "content": "Tell me about caches."}}
			} else {
				req["prompt"] = "Tell me about caches."
			}
			body, _ := json.Marshal(req)

			// The answer, straight from an engine that is not failed.
			direct, err := http.Post("http://"+b.Addr()+tc.path, "application/json", strings.NewReader(string(body)))
			if err != nil {
				t.Fatal(err)
			}
			want := readStream(direct, chat, 0, nil)
			direct.Body.Close()
			if len(want.usage) != 1 || want.usage[0].CompletionTokens != maxTokens {
				t.Fatalf("direct answer usage %+v", want.usage)
			}

			resp, err := http.Post(f.url+tc.path, "application/json", strings.NewReader(string(body)))
			if err != nil {
				t.Fatal(err)
			}
			victim := map[string]*faultProxy{pa.addr(): pa, pb.addr(): pb}[resp.Header.Get(router.HeaderEndpoint)]
			if victim == nil {
				t.Fatalf("served by %q, not one of the engines", resp.Header.Get(router.HeaderEndpoint))
			}
			got := readStream(resp, chat, 5, func() {
				if tc.fault == "kill" {
					victim.kill()
				} else {
					victim.freeze()
				}
			})
			resp.Body.Close()

			if tc.limit < 0 {
				if got.done || got.err == nil || got.errEvts != 1 {
					t.Errorf("without migration: done=%v err=%v error events=%d, want a cut stream", got.done, got.err, got.errEvts)
				}
				waitReleased(t, f)
				if n := metricstest.Value(f.reg, gateway.MetricStreamsCut); n != 1 {
					t.Errorf("%s = %v, want 1", gateway.MetricStreamsCut, n)
				}
				return
			}
			if got.err != nil || !got.done || got.errEvts != 0 {
				t.Fatalf("stream ended with err=%v done=%v error events=%d", got.err, got.done, got.errEvts)
			}
			if got.text != want.text {
				t.Errorf("stitched text\n%q\nwant\n%q", got.text, want.text)
			}
			if len(got.ids) != 1 {
				t.Errorf("chunk ids %v, want one", got.ids)
			}
			if len(got.usage) != 1 {
				t.Fatalf("usage chunks %+v, want one", got.usage)
			}
			u := got.usage[0]
			if u.PromptTokens != want.usage[0].PromptTokens || u.CompletionTokens != maxTokens || u.TotalTokens != u.PromptTokens+maxTokens {
				t.Errorf("usage %+v, want prompt %d completion %d", u, want.usage[0].PromptTokens, maxTokens)
			}
			waitReleased(t, f)
			if n := metricstest.Value(f.reg, gateway.MetricMigrations, "reason", tc.reason); n != 1 {
				t.Errorf("%s{reason=%s} = %v, want 1", gateway.MetricMigrations, tc.reason, n)
			}
			if n := metricstest.Value(f.reg, gateway.MetricMigratedRequests, "outcome", "completed"); n != 1 {
				t.Errorf("%s{outcome=completed} = %v, want 1", gateway.MetricMigratedRequests, n)
			}
			if n := metricstest.Value(f.reg, gateway.MetricStreamsCut); n != 0 {
				t.Errorf("%s = %v, want 0", gateway.MetricStreamsCut, n)
			}
		})
	}
}

// TestMigrationBounded checks that a stream whose every engine dies is migrated at most
// MigrationLimit times and then reaches the client as a failure; an engine that failed the
// request is never tried again for it.
func TestMigrationBounded(t *testing.T) {
	var engines []*engine
	var addrs []string
	for range 4 {
		e := dyingEngine(t)
		engines = append(engines, e)
		addrs = append(addrs, e.addr())
	}
	f := start(t, gateway.Config{MigrationLimit: 2}, addrs...)
	resp, err := http.Post(f.url+"/v1/chat/completions", "application/json", strings.NewReader(chat("bounded", true)))
	if err != nil {
		t.Fatal(err)
	}
	_, err = io.ReadAll(resp.Body)
	resp.Body.Close()
	if err == nil || !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("read ended with %v, want an aborted response", err)
	}
	waitReleased(t, f)
	if n := metricstest.Value(f.reg, gateway.MetricMigratedRequests, "outcome", "limit"); n != 1 {
		t.Errorf("%s{outcome=limit} = %v, want 1", gateway.MetricMigratedRequests, n)
	}
	for i, e := range engines {
		if h := e.hits.Load(); h > 1 {
			t.Errorf("engine %d saw %d attempts of one request", i, h)
		}
	}
	if hits := engines[0].hits.Load() + engines[1].hits.Load() + engines[2].hits.Load() + engines[3].hits.Load(); hits != 3 {
		t.Errorf("engines saw %d attempts, want 3 (the first and 2 migrations)", hits)
	}
}

// TestMigratedClientLeaves: a client that leaves a stream after it was migrated releases
// the router's load and leaves no goroutine behind.
func TestMigratedClientLeaves(t *testing.T) {
	// Nothing the test starts outlives it: checked once the engines, proxies and gateway have
	// stopped (the first cleanup runs last).
	before := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, before) })
	// chainSim waits until each engine serves: a snapshot taken while a sim's Run was still
	// starting its goroutines (driver, transfer listener, HTTP server) counted them as leaks.
	a, b := chainSim(t), chainSim(t)
	pa, pb := newFaultProxy(t, a.Addr()), newFaultProxy(t, b.Addr())
	f := start(t, gateway.Config{}, pa.addr(), pb.addr())
	// Nothing of the request outlives the client, while every server still runs.
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent(), goleak.IgnoreAnyFunction("github.com/kvgate/kvgate/gateway.(*Gateway).Serve.func1"), goleak.IgnoreAnyFunction("github.com/kvgate/kvgate/httpproxy.Serve.func1"))
	body := `{"model":"` + model + `","stream":true,"max_tokens":200,"ignore_eos":true,"prompt":"Leave early."}`
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, f.url+"/v1/completions", strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	victim := map[string]*faultProxy{pa.addr(): pa, pb.addr(): pb}[resp.Header.Get(router.HeaderEndpoint)]
	sc := bufio.NewScanner(resp.Body)
	n := 0
	for sc.Scan() && n < 15 {
		if strings.HasPrefix(sc.Text(), "data: {") {
			n++
			if n == 5 {
				victim.kill()
			}
		}
	}
	cancel()
	resp.Body.Close()
	waitReleased(t, f)
	if got := metricstest.Value(f.reg, gateway.MetricMigrations); got != 1 {
		t.Errorf("%s = %v, want 1", gateway.MetricMigrations, got)
	}
	if got := metricstest.Value(f.reg, gateway.MetricMigratedRequests, "outcome", "client_gone"); got != 1 {
		t.Errorf("%s{outcome=client_gone} = %v, want 1", gateway.MetricMigratedRequests, got)
	}
}
