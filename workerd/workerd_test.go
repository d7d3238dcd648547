package workerd

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	relayv1 "github.com/kvgate/kvgate/api/relay/v1"
	"github.com/kvgate/kvgate/discovery"
	"github.com/kvgate/kvgate/discovery/consultest"
	"github.com/kvgate/kvgate/engine"
	"github.com/kvgate/kvgate/gpu"
	"github.com/kvgate/kvgate/polltest"
	"github.com/kvgate/kvgate/relay"
	"github.com/kvgate/kvgate/relay/relaytest"
	"github.com/kvgate/kvgate/tokenizer"
)

// syncBuffer collects engine output from several goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func testLog(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func simSpec(name string) EngineSpec {
	return EngineSpec{Name: name, Kind: KindSim, Model: "sim-model", Env: map[string]string{simChildEnv: "1"}}
}

func selfCommand(t *testing.T) []string {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	return []string{exe}
}

// complete sends one completion to the engine and reads the whole answer.
func complete(t *testing.T, addr, prompt string) {
	t.Helper()
	body, _ := json.Marshal(map[string]any{"model": "sim-model", "prompt": prompt, "max_tokens": 2})
	resp, err := http.Post("http://"+addr+"/v1/completions", "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("completion: %s: %s", resp.Status, b)
	}
}

// completeUntil sends prompt, then fresh prompts every few seconds, until cond holds. A batch
// published before workerd's ZMQ subscription to a just-started engine is up is lost on the
// PUB socket; the next batch shows the gap and the subscriber fetches the missed one from the
// engine's replay socket, which is what the fresh prompts cause.
func completeUntil(t *testing.T, addr, p string, what string, cond func() bool) {
	t.Helper()
	complete(t, addr, p)
	deadline := time.Now().Add(30 * time.Second)
	for fresh := 1000; ; fresh++ {
		next := time.Now().Add(3 * time.Second)
		for time.Now().Before(next) {
			if cond() {
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		complete(t, addr, prompt(fresh))
	}
}

func prompt(seed int) string {
	words := make([]string, 0, 300)
	for i := range 300 {
		words = append(words, fmt.Sprintf("w%d_%d", seed, i%97))
	}
	return strings.Join(words, " ")
}

// storedSince returns the stored hashes of batches from index from on.
func storedSince(b []relaytest.Batch, from int) []uint64 {
	var hashes []uint64
	for _, x := range b[from:] {
		hashes = append(hashes, relaytest.StoredHashes(x.B)...)
	}
	return hashes
}

// storedAfterClear finds the first lone AllBlocksCleared batch at or after index from and
// returns the hashes stored after it.
func storedAfterClear(b []relaytest.Batch, from int) (hashes []uint64, cleared bool) {
	for i := from; i < len(b); i++ {
		if len(b[i].B.Events) == 1 && b[i].B.Events[0].Kind == engine.AllBlocksCleared {
			return storedSince(b, i+1), true
		}
	}
	return nil, false
}

// The whole daemon with a real Consul agent and a simulated engine as a child process:
// registration, relay snapshot and events, a killed engine restarted and cleared, a
// reconnecting client resumed, load relayed, re-registration after Consul restarts, and on
// shutdown the engine leaves Consul and its process is gone.
func TestWorkerdEndToEnd(t *testing.T) {
	agent := consultest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()

	out := &syncBuffer{}
	cfg := Config{
		Node:           "n1",
		Consul:         &ConsulConfig{Address: agent.Addr, CheckInterval: Duration(time.Second), ReregisterInterval: Duration(500 * time.Millisecond)},
		ScrapeInterval: Duration(200 * time.Millisecond),
		MinBackoff:     Duration(200 * time.Millisecond),
		MaxBackoff:     Duration(time.Second),
		DrainTimeout:   Duration(2 * time.Second),
		StopTimeout:    Duration(5 * time.Second),
		Engines:        []EngineSpec{simSpec("a")},
	}
	w, err := New(ctx, cfg, Options{
		Log: testLog(t), GPUs: gpu.NewFake(gpu.FakeInventory(0, "", 0)), SimCommand: selfCommand(t), EngineOutput: out,
	})
	if err != nil {
		t.Fatal(err)
	}
	runCtx, stopRun := context.WithCancel(ctx)
	runDone := make(chan error, 1)
	go func() { runDone <- w.Run(runCtx) }()
	defer func() { stopRun(); <-runDone }()

	// Consul: the engine appears, healthy, with the relay's address.
	dc, err := discovery.NewConsul(discovery.ConsulConfig{Address: agent.Addr, WaitTime: 2 * time.Second}, nil)
	if err != nil {
		t.Fatal(err)
	}
	watch := dc.Watch(ctx)
	var ep discovery.Endpoint
	waitSet(t, watch, 60*time.Second, "the engine healthy in consul", func(eps []discovery.Endpoint) bool {
		if len(eps) == 1 && eps[0].Healthy {
			ep = eps[0]
			return true
		}
		return false
	})
	// Consul's own check can pass before the supervisor's next health probe marks it running.
	polltest.Until(t, 30*time.Second, "the engine running in workerd", func() bool { return w.Engines()[0].State == StateRunning })
	st := w.Engines()[0]
	if ep.Name != "n1-a" || ep.Address != st.Address || ep.Workerd != w.Advertise() || ep.KVEvents != st.KVEvents ||
		ep.BlockSize != tokenizer.DefaultBlockSize || !slices.Equal(ep.Models, []string{"sim-model"}) || ep.Meta[discovery.MetaEngine] != KindSim {
		t.Fatalf("consul endpoint %+v, engine %+v", ep, st)
	}

	// The relay lists what runs here.
	conn, err := grpc.NewClient(w.Addr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	list, err := relayv1.NewRelayClient(conn).Engines(ctx, &relayv1.EnginesRequest{})
	if err != nil || len(list.GetEngines()) != 1 {
		t.Fatalf("Engines = %v, %v", list, err)
	}
	if e := list.GetEngines()[0]; e.GetName() != "n1-a" || e.GetKind() != KindSim || e.GetState() != StateRunning || e.GetAddress() != st.Address {
		t.Fatalf("Engines[0] = %v", e)
	}

	// Relay: snapshot first, then the blocks of a completion.
	client := relay.NewClientConfig(relay.ClientConfig{Addr: w.Addr(), Engine: "n1-a", MinBackoff: 20 * time.Millisecond, MaxBackoff: 200 * time.Millisecond})
	rec := relaytest.NewLoadRecorder()
	stopClient := relaytest.Run(t, client, rec)
	relaytest.WaitFor(t, 10*time.Second, "the snapshot", func() bool { b, _ := rec.Snapshot(); return len(b) >= 1 })
	if b, _ := rec.Snapshot(); b[0].B.Events[0].Kind != engine.AllBlocksCleared {
		t.Fatalf("first batch is not a snapshot: %+v", b[0])
	}
	var first []uint64
	completeUntil(t, st.Address, prompt(1), "stored blocks of the first prompt", func() bool {
		b, _ := rec.Snapshot()
		first = storedSince(b, 1)
		return len(first) >= 10
	})
	b, _ := rec.Snapshot()
	for i := 1; i < len(b); i++ {
		if b[i].Seq != b[i-1].Seq+1 {
			t.Fatalf("relay seqs %d then %d", b[i-1].Seq, b[i].Seq)
		}
	}
	relaytest.WaitFor(t, 5*time.Second, "a load report", func() bool { return rec.Count() > 0 })

	// Kill the engine: workerd restarts it; the relay sends a clear, then the new blocks.
	mark := len(b)
	if err := syscall.Kill(st.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	relaytest.WaitFor(t, 30*time.Second, "the engine restarted and running", func() bool {
		s := w.Engines()[0]
		return s.Restarts == 1 && s.State == StateRunning && s.PID != st.PID
	})
	completeUntil(t, st.Address, prompt(1), "a clear then the first prompt's blocks again", func() bool {
		b, _ := rec.Snapshot()
		again, cleared := storedAfterClear(b, mark)
		return cleared && len(again) >= len(first)
	})
	b, gaps := rec.Snapshot()
	again, _ := storedAfterClear(b, mark)
	if !slices.Equal(again[:len(first)], first) {
		t.Fatalf("blocks after restart %v differ from before %v", again, first)
	}
	if len(gaps) != 0 {
		t.Fatalf("gaps %v on a live stream", gaps)
	}

	// A router that reconnects resumes from its last seq: no gap, no snapshot.
	stopClient()
	_, last := client.LastSeq()
	complete(t, st.Address, prompt(2))
	rec2 := relaytest.NewRecorder()
	relaytest.Run(t, client, rec2)
	relaytest.WaitFor(t, 10*time.Second, "the second prompt's blocks after the reconnect", func() bool {
		b, _ := rec2.Snapshot()
		return len(storedSince(b, 0)) >= 10
	})
	b2, gaps2 := rec2.Snapshot()
	if len(gaps2) != 0 || b2[0].Seq != last+1 || b2[0].B.Events[0].Kind == engine.AllBlocksCleared {
		t.Fatalf("after reconnect: first seq %d (last %d), gaps %v, first event %v", b2[0].Seq, last, gaps2, b2[0].B.Events[0].Kind)
	}

	if !strings.Contains(out.String(), "n1-a | ") {
		t.Fatalf("engine output not captured with its name:\n%s", out.String())
	}

	// Consul restarts and forgets everything (dev mode): workerd registers the engine again.
	agent.Restart()
	waitSet(t, watch, 30*time.Second, "the engine back in consul after the agent restart", func(eps []discovery.Endpoint) bool {
		return len(eps) == 1 && eps[0].Name == "n1-a" && eps[0].Healthy && eps[0].Workerd == w.Advertise()
	})

	// Shut down: the engine leaves Consul and its process is gone.
	pid := w.Engines()[0].PID
	stopRun()
	select {
	case err := <-runDone:
		if err != nil {
			t.Fatal(err)
		}
		runDone <- nil
	case <-time.After(30 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
	waitSet(t, watch, 10*time.Second, "no engines in consul", func(eps []discovery.Endpoint) bool { return len(eps) == 0 })
	if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
		t.Fatalf("engine process %d still exists after shutdown (kill 0: %v)", pid, err)
	}
	if s := w.Engines()[0]; s.State != StateStopped {
		t.Fatalf("state after shutdown %q", s.State)
	}
}

func waitSet(t *testing.T, ch <-chan []discovery.Endpoint, d time.Duration, what string, ok func([]discovery.Endpoint) bool) {
	t.Helper()
	deadline := time.After(d)
	for {
		select {
		case eps, open := <-ch:
			if !open {
				t.Fatalf("watch closed waiting for %s", what)
			}
			if ok(eps) {
				return
			}
		case <-deadline:
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}
