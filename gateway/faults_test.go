package gateway_test

import (
	"bufio"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
	"golang.org/x/net/http2"

	"github.com/kvgate/kvgate/gateway"
	"github.com/kvgate/kvgate/metricstest"
	"github.com/kvgate/kvgate/openai"
	"github.com/kvgate/kvgate/router"
	"github.com/kvgate/kvgate/tlsconfig/tlsconfigtest"
)

// dyingEngine streams two tokens and then dies: the handler aborts, so its connection closes
// without the terminating chunk, as when the engine process is killed.
func dyingEngine(t *testing.T) *engine {
	return newEngine(t, func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "text/event-stream")
		for i := range 2 {
			fmt.Fprintf(w, "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"t%d\"}}]}\n\n", i)
			w.(http.Flusher).Flush()
		}
		panic(http.ErrAbortHandler)
	})
}

// TestStreamCutIsAFailure checks that a stream whose engine dies midway reaches the client
// as a failure: an SSE error event, then an aborted response (no terminating chunk on
// HTTP/1.1, a reset stream on HTTP/2), never "[DONE]"; it is counted and not retried.
func TestStreamCutIsAFailure(t *testing.T) {
	pki := tlsconfigtest.New(t)
	for _, proto := range []string{"HTTP/1.1", "HTTP/2"} {
		t.Run(proto, func(t *testing.T) {
			a, b := dyingEngine(t), dyingEngine(t)
			cfg := gateway.Config{MigrationLimit: -1} // migration would move the stream (migrate_test.go)
			client := http.DefaultClient
			if proto == "HTTP/2" {
				stc, err := pki.Server.Server()
				if err != nil {
					t.Fatal(err)
				}
				ctc, err := pki.Client.Client()
				if err != nil {
					t.Fatal(err)
				}
				cfg.TLS = stc
				client = &http.Client{Transport: &http.Transport{TLSClientConfig: ctc, ForceAttemptHTTP2: true}}
			}
			f := start(t, cfg, a.addr(), b.addr())
			const n = 3
			for i := range n {
				resp, err := client.Post(f.url+"/v1/chat/completions", "application/json", strings.NewReader(chat(fmt.Sprint("cut ", i), true)))
				if err != nil {
					t.Fatal(err)
				}
				if want := map[string]int{"HTTP/1.1": 1, "HTTP/2": 2}[proto]; resp.ProtoMajor != want {
					t.Fatalf("spoke %s, want %s", resp.Proto, proto)
				}
				body, err := io.ReadAll(resp.Body)
				resp.Body.Close()
				if err == nil {
					t.Fatalf("request %d: the cut stream ended normally:\n%s", i, body)
				}
				if proto == "HTTP/1.1" && !errors.Is(err, io.ErrUnexpectedEOF) {
					t.Errorf("HTTP/1.1 read ended with %v, want an unexpected EOF (no terminating chunk)", err)
				}
				if proto == "HTTP/2" && !strings.Contains(err.Error(), "INTERNAL_ERROR") {
					t.Errorf("HTTP/2 read ended with %v, want a stream reset", err)
				}
				events := sseData(t, body)
				if len(events) != 3 || !strings.Contains(events[1], `"t1"`) {
					t.Fatalf("events %q, want two tokens and an error", events)
				}
				var eb struct{ Error openai.Error }
				if err := json.Unmarshal([]byte(events[2]), &eb); err != nil || eb.Error.Type == "" || eb.Error.Message == "" {
					t.Errorf("last event %q is not an OpenAI error (%v)", events[2], err)
				}
				if strings.Contains(events[2], a.addr()) || strings.Contains(events[2], b.addr()) {
					t.Errorf("the error event names an engine address: %s", events[2])
				}
			}
			waitReleased(t, f)
			if got := metricstest.Value(f.reg, gateway.MetricStreamsCut); got != n {
				t.Errorf("%s = %v, want %d", gateway.MetricStreamsCut, got, n)
			}
			if hits := a.hits.Load() + b.hits.Load(); hits != n {
				t.Errorf("engines saw %d requests for %d sent: a cut stream was retried", hits, n)
			}
			if got := metricstest.Value(f.reg, gateway.MetricRetries); got != 0 {
				t.Errorf("retries %v after the first byte", got)
			}
		})
	}
}

// sseData returns the data of each event in body.
func sseData(t *testing.T, body []byte) []string {
	t.Helper()
	var out []string
	sc := bufio.NewScanner(strings.NewReader(string(body)))
	for sc.Scan() {
		if d, ok := strings.CutPrefix(sc.Text(), "data: "); ok {
			out = append(out, d)
		}
	}
	return out
}

// acceptClose is an engine that accepts connections, reads the request and closes without
// answering (a process dying after accept). It returns its address.
func acceptClose(t *testing.T) (string, *sync.WaitGroup) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			http.ReadRequest(bufio.NewReader(c))
			c.Close()
		}
	}()
	t.Cleanup(func() { l.Close(); wg.Wait() })
	return l.Addr().String(), &wg
}

// TestRetryBeforeFirstByte checks that a request whose engine fails after accepting the
// connection, before any response byte (no headers; or headers and then nothing), goes to
// the next fallback and the client gets the fallback's 200.
func TestRetryBeforeFirstByte(t *testing.T) {
	headersOnly := newEngine(t, func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "text/event-stream")
		w.WriteHeader(200)
		w.(http.Flusher).Flush()
		panic(http.ErrAbortHandler)
	})
	closer, _ := acceptClose(t)
	for _, c := range []struct{ name, dead, reason string }{
		{"closed before headers", closer, "no_answer"},
		{"closed after headers", headersOnly.addr(), "no_body"},
	} {
		t.Run(c.name, func(t *testing.T) {
			live := jsonEngine(t, "A")
			// The dead engine is the kv policy's pick for every request of an empty index
			// only by chance; round-robin alternates, so half the requests start on it.
			f := start(t, gateway.Config{}, c.dead, live.addr())
			for i := range 4 {
				resp, body := post(t, f.url+"/v1/chat/completions", chat(fmt.Sprint("retry ", i), false))
				if resp.StatusCode != 200 {
					t.Fatalf("request %d: status %d: %s", i, resp.StatusCode, body)
				}
				if got := resp.Header.Get(router.HeaderEndpoint); got != live.addr() {
					t.Errorf("served by %q, want %q", got, live.addr())
				}
			}
			if got := retries(f, c.reason); got < 1 {
				t.Errorf("retries{reason=%q} = %v, want >= 1", c.reason, got)
			}
			waitReleased(t, f)
		})
	}
}

// TestRetryBounded checks that attempts stop at MaxAttempts and the client gets an OpenAI
// 502 that names no engine.
func TestRetryBounded(t *testing.T) {
	var dead []string
	for range 4 {
		a, _ := acceptClose(t)
		dead = append(dead, a)
	}
	f := start(t, gateway.Config{MaxAttempts: 2}, dead...)
	resp, body := post(t, f.url+"/v1/chat/completions", chat("nobody home", false))
	if resp.StatusCode != http.StatusBadGateway {
		t.Fatalf("status %d: %s", resp.StatusCode, body)
	}
	checkErrorBody(t, []byte(body), openai.TypeUnavailable)
	for _, a := range dead {
		if strings.Contains(body, a) {
			t.Errorf("the 502 names an engine address: %s", body)
		}
	}
	if got := metricstest.Value(f.reg, gateway.MetricRetries); got != 1 {
		t.Errorf("retries %v, want 1 (2 attempts)", got)
	}
	waitReleased(t, f)
}

func retries(f *fixture, reason string) float64 {
	mfs, _ := f.reg.Gather()
	for _, mf := range mfs {
		if mf.GetName() != gateway.MetricRetries {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "reason" && l.GetValue() == reason {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}

func checkErrorBody(t *testing.T, body []byte, typ string) {
	t.Helper()
	var eb struct {
		Error struct {
			Message, Type string
		}
	}
	if err := json.Unmarshal(body, &eb); err != nil || eb.Error.Message == "" {
		t.Errorf("not an OpenAI error body (%v): %s", err, body)
	}
	if eb.Error.Type != typ {
		t.Errorf("error type %q, want %q", eb.Error.Type, typ)
	}
}

// TestSlowBodyDropped checks that clients sending their body slower than BodyTimeout get an
// OpenAI 408 and their connection closed, leaving no goroutine behind.
func TestSlowBodyDropped(t *testing.T) {
	e := jsonEngine(t, "A")
	f := start(t, gateway.Config{BodyTimeout: 300 * time.Millisecond}, e.addr())
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent(), goleak.IgnoreAnyFunction("github.com/kvgate/kvgate/gateway.(*Gateway).Serve.func1"), goleak.IgnoreAnyFunction("github.com/kvgate/kvgate/httpproxy.Serve.func1"))
	addr := strings.TrimPrefix(f.url, "http://")
	const n = 20
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- slowClient(addr)
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	if got := metricstest.Value(f.reg, gateway.MetricBodyTimeouts); got != n {
		t.Errorf("%s = %v, want %d", gateway.MetricBodyTimeouts, got, n)
	}
	if e.hits.Load() != 0 {
		t.Errorf("a partial body reached the engine")
	}
	waitReleased(t, f)
}

// slowClient sends headers and one byte of a 100-byte body, then waits: it wants a 408 with
// an OpenAI body and the connection closed.
func slowClient(addr string) error {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	fmt.Fprintf(c, "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{")
	c.SetDeadline(time.Now().Add(10 * time.Second))
	rd := bufio.NewReader(c)
	resp, err := http.ReadResponse(rd, nil)
	if err != nil {
		return fmt.Errorf("no answer: %w", err)
	}
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusRequestTimeout {
		return fmt.Errorf("status %d: %s", resp.StatusCode, body)
	}
	var eb struct{ Error openai.Error }
	if json.Unmarshal(body, &eb) != nil || eb.Error.Type != openai.TypeInvalidRequest {
		return fmt.Errorf("408 body is not an OpenAI error: %s", body)
	}
	if _, err := rd.ReadByte(); err != io.EOF {
		return fmt.Errorf("connection left open after the 408 (%v)", err)
	}
	return nil
}

// TestTLS checks the gateway serves HTTPS with mutual TLS: a client with a certificate from
// the CA gets its answer over HTTP/2; one without, or from another CA, is refused.
func TestTLS(t *testing.T) {
	pki := tlsconfigtest.New(t)
	stc, err := pki.Server.Server()
	if err != nil {
		t.Fatal(err)
	}
	e := jsonEngine(t, "A")
	f := start(t, gateway.Config{TLS: stc}, e.addr())
	for _, c := range []struct {
		name string
		id   func() (*tls.Config, error)
		ok   bool
	}{
		{"client cert", pki.Client.Client, true},
		{"other CA", pki.Other.Client, false},
		{"no client cert", func() (*tls.Config, error) { return &tls.Config{RootCAs: pki.Pool}, nil }, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			tc, err := c.id()
			if err != nil {
				t.Fatal(err)
			}
			tr := &http2.Transport{TLSClientConfig: tc}
			defer tr.CloseIdleConnections()
			resp, err := (&http.Client{Transport: tr}).Post(f.url+"/v1/chat/completions", "application/json", strings.NewReader(chat("tls", false)))
			if !c.ok {
				if err == nil {
					resp.Body.Close()
					t.Fatalf("answered %d without a valid client certificate", resp.StatusCode)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			if resp.StatusCode != 200 || resp.ProtoMajor != 2 {
				t.Errorf("status %d over %s", resp.StatusCode, resp.Proto)
			}
		})
	}
	if resp, err := http.Post(strings.Replace(f.url, "https", "http", 1)+"/v1/chat/completions", "application/json", strings.NewReader(chat("plain", false))); err == nil {
		if resp.StatusCode == 200 {
			t.Error("plaintext request answered 200 by the TLS gateway")
		}
		resp.Body.Close()
	}
	waitReleased(t, f)
}
