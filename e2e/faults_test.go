package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/kvgate/kvgate/polltest"
	"github.com/kvgate/kvgate/porttest"
	"github.com/kvgate/kvgate/router"
)

// outcome is what one streamed request looked like to its client.
type outcome int

const (
	outcomeOK       outcome = iota // 200, events, [DONE]
	outcomeFailed                  // refused before the first byte (an error status or no answer)
	outcomeCut                     // the stream failed visibly: an error event and/or an aborted body
	outcomeSilent                  // the stream ended normally without [DONE]: a cut that looks like success
	outcomeCanceled                // the test stopped it
)

// streamOnce sends one streamed chat and classifies how it ended. A 200 answer's headers
// arrive with the engine's first body bytes: from then until the end, streaming[engine]
// counts the stream.
func streamOnce(ctx context.Context, base, prompt string, streaming *sync.Map) outcome {
	body, _ := json.Marshal(map[string]any{
		"model": "Qwen/Qwen3-8B", "stream": true, "max_tokens": 60, "ignore_eos": true,
		"messages": []map[string]string{{"role": "user", "content": prompt}},
	})
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, base+"/v1/chat/completions", bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return outcomeCanceled
		}
		return outcomeFailed
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return outcomeFailed
	}
	n, _ := streaming.LoadOrStore(resp.Header.Get(router.HeaderEndpoint), new(atomic.Int64))
	n.(*atomic.Int64).Add(1)
	defer n.(*atomic.Int64).Add(-1)
	rd := bufio.NewReader(resp.Body)
	errorEvent := false
	for {
		line, err := rd.ReadString('\n')
		if err != nil {
			switch {
			case ctx.Err() != nil:
				return outcomeCanceled
			case errors.Is(err, io.EOF) && !errorEvent:
				return outcomeSilent
			}
			return outcomeCut
		}
		data, ok := strings.CutPrefix(strings.TrimSpace(line), "data: ")
		switch {
		case !ok:
		case data == "[DONE]":
			if errorEvent {
				return outcomeSilent // an error then a normal end: still ends like success
			}
			_, _ = io.Copy(io.Discard, rd)
			return outcomeOK
		case strings.HasPrefix(data, `{"error"`):
			errorEvent = true
		}
	}
}

// TestEnginesKilledUnderStreamingLoad runs `kvgate router` with its gateway in front of three
// `kvgate sim` processes under streaming load, SIGKILLs one engine and SIGSTOPs another for a
// while, and counts what the clients saw: every stream the kill cut must fail visibly to its
// client (none may end like a success), requests after the kill go to the survivors (retried
// past the dead engine, never failed), the stopped engine's requests finish once it
// continues, the router holds no load afterwards, and no kvgate process crashed.
func TestEnginesKilledUnderStreamingLoad(t *testing.T) {
	var args []string
	var sims []*proc
	for range 3 {
		port, kv := porttest.Free(t), porttest.Free(t)
		sim := startProc(t, kvgateBin, "sim", "--host", "127.0.0.1", "--port", fmt.Sprint(port),
			"--kv-events", fmt.Sprintf("tcp://127.0.0.1:%d", kv), "--kv-events-replay", "", "--speed", "2")
		addr := fmt.Sprintf("127.0.0.1:%d", port)
		waitHTTP(t, sim, "http://"+addr+"/health", 30*time.Second)
		sims = append(sims, sim)
		args = append(args, "--endpoint", "http://"+addr, "--kv-events", fmt.Sprintf("tcp://127.0.0.1:%d", kv))
	}
	httpAddr := fmt.Sprintf("127.0.0.1:%d", porttest.Free(t))
	rt := startProc(t, kvgateBin, append([]string{"router", "--grpc", fmt.Sprintf("127.0.0.1:%d", porttest.Free(t)),
		"--http", httpAddr, "--policy", "round-robin", "--migration-limit", "0"}, args...)...) // cuts, not migrations (migration_test.go)
	base := "http://" + httpAddr
	waitHTTP(t, rt, base+"/health", 30*time.Second)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var counts [outcomeCanceled + 1]atomic.Int64
	var sent atomic.Int64
	var streaming sync.Map // engine address -> *atomic.Int64 streams receiving its body
	var wg sync.WaitGroup
	for w := range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ctx.Err() == nil; i++ {
				sent.Add(1)
				counts[streamOnce(ctx, base, fmt.Sprintf("worker %d request %d: tell me about caches", w, i), &streaming)].Add(1)
			}
		}()
	}
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		if !polltest.Wait(60*time.Second, cond) {
			t.Fatalf("timed out waiting for %s (sent %d, ok %d, failed %d, cut %d, silent %d)", what,
				sent.Load(), counts[outcomeOK].Load(), counts[outcomeFailed].Load(), counts[outcomeCut].Load(), counts[outcomeSilent].Load())
		}
	}
	waitFor("streams to complete", func() bool { return counts[outcomeOK].Load() >= 6 })

	// SIGKILL engine 0 while streams run on it.
	dead := strings.TrimPrefix(args[1], "http://")
	// A request still waiting for its first byte is retried elsewhere; one past it can only be cut.
	waitFor("a stream receiving engine 0's body", func() bool {
		n, ok := streaming.Load(dead)
		return ok && n.(*atomic.Int64).Load() > 0
	})
	if err := sims[0].cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-sims[0].done
	okAtKill := counts[outcomeOK].Load()
	waitFor("streams to complete after the kill", func() bool { return counts[outcomeOK].Load() >= okAtKill+12 })

	// SIGSTOP engine 1 for a second: its streams stall, then finish.
	if err := sims[1].cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second) // the fault's duration, not a wait for a condition
	if err := sims[1].cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	okAtCont := counts[outcomeOK].Load()
	waitFor("streams to complete after the stop", func() bool { return counts[outcomeOK].Load() >= okAtCont+12 })

	// Stop the load; the workers finish or cancel their last requests.
	cancel()
	wg.Wait()
	retried := metric(t, base, "kvgate_gateway_retries_total")
	cutSeen := metric(t, base, "kvgate_gateway_streams_cut_total")
	t.Logf("sent %d: ok %d, failed %d, cut %d (gateway counted %v), silent %d, canceled %d; retried %v",
		sent.Load(), counts[outcomeOK].Load(), counts[outcomeFailed].Load(), counts[outcomeCut].Load(), cutSeen,
		counts[outcomeSilent].Load(), counts[outcomeCanceled].Load(), retried)

	if n := counts[outcomeSilent].Load(); n != 0 {
		t.Errorf("%d streams ended like a success without [DONE]", n)
	}
	if n := counts[outcomeFailed].Load(); n != 0 {
		t.Errorf("%d requests failed before their first byte although live fallbacks existed", n)
	}
	if n := counts[outcomeCut].Load(); n == 0 || float64(n) != cutSeen {
		t.Errorf("clients saw %d cut streams, the gateway counted %v", n, cutSeen)
	}
	// Load left in the router: none once every request has ended (client cancellations
	// included).
	waitFor("the router's load to drain", func() bool {
		return metric(t, base, "kvgate_router_endpoint_requests")+metric(t, base, "kvgate_router_endpoint_prefill_tokens")+
			metric(t, base, "kvgate_router_endpoint_decode_blocks") == 0
	})
	for i, p := range []*proc{rt, sims[1], sims[2]} {
		select {
		case <-p.done:
			t.Errorf("process %d exited during the faults:\n%s", i, tail(p.output(), 2000))
		default:
		}
	}
}
