package sidecar_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kvgate/kvgate/engine/sim"
	"github.com/kvgate/kvgate/engine/sim/simtest"
	"github.com/kvgate/kvgate/metricstest"
	"github.com/kvgate/kvgate/openai"
	"github.com/kvgate/kvgate/polltest"
	"github.com/kvgate/kvgate/sidecar"
)

// chainSim runs a simulated engine with chained output (a continued request gets exactly
// the rest of the answer, so a repeated or lost token shows) at about 10 ms a token.
func chainSim(t *testing.T) *sim.Server {
	t.Helper()
	cfg := sim.ServerConfig{Addr: "127.0.0.1:0", ChainOutput: true}
	cfg.Engine.NumBlocks = 1024
	cfg.Engine.Timing = sim.DefaultTiming()
	cfg.Engine.Timing.Base = 10 * time.Millisecond
	s := simtest.Start(t, cfg, nil, nil)
	return s
}

// faultProxy is a TCP proxy in front of an engine that can be killed (every connection
// closed at once, as when the engine process dies) or frozen (the engine's bytes stop and
// the connections stay open, as a hung engine).
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

// TestSidecarMigratesDecode: a disaggregated stream (remote prefill on a sim, decode on a
// chained-output sim) whose decode engine is killed (or freezes) after 5 tokens continues on
// the router's fallback decode endpoint (a second sidecar and sim): the client gets one
// stream with one id, exactly the answer an unfailed engine gives (no token repeated or
// lost), and one usage with the true totals. A fallback outside the known decode endpoints
// is skipped. With migration off, the stream is cut.
func TestSidecarMigratesDecode(t *testing.T) {
	const maxTokens = 40
	for _, tc := range []struct {
		name   string
		path   string
		fault  string
		limit  int
		reason string
	}{
		{"chat killed", "/v1/chat/completions", "kill", 0, sidecar.MigrateFailed},
		{"completion killed", "/v1/completions", "kill", 0, sidecar.MigrateFailed},
		{"chat frozen", "/v1/chat/completions", "freeze", 0, sidecar.MigrateStall},
		{"chat killed without migration", "/v1/chat/completions", "kill", -1, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pre := chainSim(t)
			dec, fb := chainSim(t), chainSim(t)
			victim := newFaultProxy(t, dec.Addr())
			fbSidecar, fbReg := startSidecar(t, fb.Addr(), nil)
			s, reg := startSidecar(t, victim.addr(), func(c *sidecar.Config) {
				c.Prefill = sidecar.NewPrefillSet(pre.Addr())
				c.Decode = sidecar.NewPrefillSet(fbSidecar.Addr())
				c.MigrationLimit = tc.limit
				c.MigrationStall = 10 * time.Second // only the frozen engine stalls; a loaded machine must not look like one
				if tc.fault == "freeze" {
					c.MigrationStall = 300 * time.Millisecond
				}
			})
			chat := tc.path == "/v1/chat/completions"
			req := map[string]any{"model": "Qwen/Qwen3-8B", "stream": true, "max_tokens": maxTokens, "ignore_eos": true,
				"stream_options": map[string]any{"include_usage": true}}
			if chat {
				req["messages"] = []map[string]string{{"role": "user", "content": "Tell me about caches."}}
			} else {
				req["prompt"] = "Tell me about caches."
			}
			body, _ := json.Marshal(req)

			// The answer, straight from an engine that does not fail.
			direct, err := http.Post("http://"+fb.Addr()+tc.path, "application/json", strings.NewReader(string(body)))
			if err != nil {
				t.Fatal(err)
			}
			want := readStream(direct, chat, 0, nil)
			direct.Body.Close()
			if len(want.usage) != 1 || want.usage[0].CompletionTokens != maxTokens {
				t.Fatalf("direct answer usage %+v", want.usage)
			}

			hreq, _ := http.NewRequest(http.MethodPost, "http://"+s.Addr()+tc.path, strings.NewReader(string(body)))
			hreq.Header.Set("Content-Type", "application/json")
			hreq.Header.Set(sidecar.HeaderPrefiller, pre.Addr())
			// The router's pick (this sidecar), then its fallbacks: one unknown, one known.
			hreq.Header.Set(sidecar.HeaderDestination, s.Addr()+",127.0.0.1:1,"+fbSidecar.Addr())
			resp, err := http.DefaultClient.Do(hreq)
			if err != nil {
				t.Fatal(err)
			}
			if resp.Header.Get(sidecar.HeaderPrefillEndpoint) != pre.Addr() {
				t.Errorf("not prefilled remotely: headers %v", resp.Header)
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
				if got.done || got.err == nil {
					t.Errorf("without migration: done=%v err=%v, want a cut stream", got.done, got.err)
				}
				if n := metricstest.Series(reg, sidecar.MetricMigrations); n != 0 {
					t.Errorf("%d migration series without migration", n)
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
			polltest.Until(t, 5*time.Second, "the migration counted as completed", func() bool {
				return metricstest.Value(reg, sidecar.MetricMigratedRequests, "outcome", sidecar.OutcomeCompleted) == 1
			})
			if n := metricstest.Value(reg, sidecar.MetricMigrations, "reason", tc.reason); n != 1 {
				t.Errorf("%s{reason=%s} = %v, want 1", sidecar.MetricMigrations, tc.reason, n)
			}
			if n := metricstest.Value(reg, sidecar.MetricMigrationRefused); n != 1 {
				t.Errorf("%s = %v, want 1 (the unknown fallback)", sidecar.MetricMigrationRefused, n)
			}
			// The continuation reached the fallback as a plain request: no remote prefill there.
			if metricstest.Value(fbReg, sidecar.MetricRemotePrefills) != 0 || metricstest.Value(fbReg, sidecar.MetricRefused) != 0 {
				t.Errorf("the fallback sidecar was asked to prefill remotely")
			}
		})
	}
}

// TestSidecarPassThroughFullDuplex: an engine that starts its answer before it has read the
// whole request body (here the client sends the rest only after the answer's first event)
// still streams its whole answer through the sidecar. Without full duplex the sidecar's
// server closes the client's body at the answer's first write: here the answer never came;
// with a body already sent but its EOF not yet read by the proxy, the body copy to the engine
// failed and the answer was cut (a migration's continuation to another sidecar hit this).
func TestSidecarPassThroughFullDuplex(t *testing.T) {
	eng := newFakeEngine(t, func(w http.ResponseWriter, r *http.Request) {})
	eng.Config.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_ = http.NewResponseController(w).EnableFullDuplex()
		w.Header().Set("Content-Type", "text/event-stream")
		_, _ = io.WriteString(w, "data: {\"n\":1}\n\n")
		w.(http.Flusher).Flush()
		b, err := io.ReadAll(r.Body)
		if err != nil || !strings.HasSuffix(string(b), "rest\"}") {
			return // the body broke off: cut the answer
		}
		_, _ = io.WriteString(w, "data: {\"n\":2}\n\ndata: [DONE]\n\n")
	})
	s, _ := startSidecar(t, eng.addr(), nil)
	pr, pw := io.Pipe()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second) // a stuck answer fails, not hangs
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+s.Addr()+"/v1/completions", pr)
	req.Header.Set("Content-Type", "application/json")
	type result struct {
		resp *http.Response
		err  error
	}
	got := make(chan result, 1)
	go func() {
		resp, err := http.DefaultClient.Do(req)
		got <- result{resp, err}
	}()
	_, _ = io.WriteString(pw, `{"model":"m","prompt":"first`)
	t.Cleanup(func() { pr.CloseWithError(io.ErrClosedPipe) })
	var res result
	select {
	case res = <-got:
	case <-ctx.Done():
		t.Fatal("no answer while the client's body is open: the sidecar cannot stream an answer before the body ends")
	}
	if res.err != nil {
		t.Fatal(res.err)
	}
	defer res.resp.Body.Close()
	br := bufio.NewReader(res.resp.Body)
	if line, err := br.ReadString('\n'); err != nil || line != "data: {\"n\":1}\n" {
		t.Fatalf("first event %q, %v", line, err)
	}
	go func() { // a sidecar that closed the body never reads this: do not block the test on it
		_, _ = io.WriteString(pw, ` rest"}`)
		pw.Close()
	}()
	rest, err := io.ReadAll(br)
	if err != nil || !strings.Contains(string(rest), `data: {"n":2}`) || !strings.Contains(string(rest), "[DONE]") {
		t.Fatalf("after the body's end the answer went on with %q, %v; want the rest of the stream", rest, err)
	}
}

// running scrapes an engine's vllm:num_requests_running.
func running(t *testing.T, addr string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "vllm:num_requests_running"); ok {
			var f float64
			if _, err := fmt.Sscan(strings.TrimSpace(v[strings.LastIndex(v, "}")+1:]), &f); err == nil {
				return f
			}
		}
	}
	return -1
}

// TestSidecarMigratedClientLeaves: a client that leaves a stream after its decode half was
// migrated ends the continuation on the fallback engine too (no load left behind), and the
// migration is counted as client_gone.
func TestSidecarMigratedClientLeaves(t *testing.T) {
	pre, dec, fb := chainSim(t), chainSim(t), chainSim(t)
	victim := newFaultProxy(t, dec.Addr())
	fbSidecar, _ := startSidecar(t, fb.Addr(), nil)
	s, reg := startSidecar(t, victim.addr(), func(c *sidecar.Config) {
		c.Prefill = sidecar.NewPrefillSet(pre.Addr())
		c.Decode = sidecar.NewPrefillSet(fbSidecar.Addr())
	})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	body := `{"model":"Qwen/Qwen3-8B","stream":true,"max_tokens":2000,"ignore_eos":true,"prompt":"Leave early."}`
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+s.Addr()+"/v1/completions", strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set(sidecar.HeaderPrefiller, pre.Addr())
	req.Header.Set(sidecar.HeaderDestination, s.Addr()+","+fbSidecar.Addr())
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(resp.Body)
	n := 0
	for n < 15 && sc.Scan() {
		if strings.HasPrefix(sc.Text(), "data: {") {
			n++
			if n == 5 {
				victim.kill()
			}
		}
	}
	if n != 15 {
		t.Fatalf("stream ended after %d events: %v", n, sc.Err())
	}
	if got := running(t, fb.Addr()); got != 1 {
		t.Fatalf("fallback engine runs %v requests, want the continuation", got)
	}
	cancel()
	resp.Body.Close()
	polltest.Until(t, 10*time.Second, "the fallback engine to drop the continuation", func() bool { return running(t, fb.Addr()) == 0 })
	polltest.Until(t, 5*time.Second, "the migration counted as client_gone", func() bool {
		return metricstest.Value(reg, sidecar.MetricMigratedRequests, "outcome", sidecar.OutcomeClientGone) == 1
	})
}

// BenchmarkSidecarStreamMigration is the cost of the migrating decode path on a healthy
// stream (64 chunks with per-chunk usage, as every attempt asks for): the same remote
// prefill and decode through a sidecar with migration off (the byte proxy) and on (each
// event parsed and rewritten).
func BenchmarkSidecarStreamMigration(b *testing.B) {
	var stream strings.Builder
	for i := 1; i <= 64; i++ {
		fmt.Fprintf(&stream, `data: {"id":"c","object":"text_completion","created":1,"model":"m","choices":[{"index":0,"text":" word","finish_reason":null}],"usage":{"prompt_tokens":10,"completion_tokens":%d,"total_tokens":%d}}`+"\n\n", i, 10+i)
	}
	stream.WriteString(`data: {"id":"c","object":"text_completion","created":1,"model":"m","choices":[{"index":0,"text":"","finish_reason":"length"}],"usage":{"prompt_tokens":10,"completion_tokens":64,"total_tokens":74}}` + "\n\ndata: [DONE]\n\n")
	engine := func(typ, answer string) string {
		s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			_, _ = io.Copy(io.Discard, r.Body)
			w.Header().Set("Content-Type", typ)
			_, _ = io.WriteString(w, answer)
		}))
		b.Cleanup(s.Close)
		return strings.TrimPrefix(s.URL, "http://")
	}
	pre := engine("application/json", `{"choices":[{"index":0,"text":"a"}],"kv_transfer_params":`+transferParams+`}`)
	dec := engine("text/event-stream", stream.String())
	body := `{"model":"m","prompt":"` + strings.Repeat("lorem ipsum ", 300) + `","max_tokens":64,"stream":true}`
	start := func(limit int) string {
		s, err := sidecar.New(sidecar.Config{Engine: dec, Prefill: sidecar.NewPrefillSet(pre),
			Decode: sidecar.NewPrefillSet("127.0.0.1:1"), MigrationLimit: limit}, nil, nil)
		if err != nil {
			b.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- s.Run(ctx) }()
		b.Cleanup(func() { cancel(); <-done })
		return s.Addr()
	}
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 16}}
	for _, bc := range []struct {
		name  string
		limit int
	}{{"migration-off", -1}, {"migration-on", 0}} {
		addr := start(bc.limit)
		b.Run(bc.name, func(b *testing.B) {
			for b.Loop() {
				req, _ := http.NewRequest(http.MethodPost, "http://"+addr+"/v1/completions", strings.NewReader(body))
				req.Header.Set(sidecar.HeaderPrefiller, pre)
				req.Header.Set(sidecar.HeaderDestination, addr+",127.0.0.1:1")
				resp, err := client.Do(req)
				if err != nil {
					b.Fatal(err)
				}
				got, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 || !bytes.HasSuffix(got, []byte("data: [DONE]\n\n")) {
					b.Fatalf("status %d: %q", resp.StatusCode, got)
				}
			}
		})
	}
}
