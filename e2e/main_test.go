// Package e2e runs the kvgate binary and its peers as real processes on loopback and talks
// to them as clients do.
package e2e

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kvgate/kvgate/polltest"
	"github.com/kvgate/kvgate/porttest"
)

// kvgateBin is the binary built once by TestMain (or named by $KVGATE_BIN).
var kvgateBin string

func TestMain(m *testing.M) {
	if bin := os.Getenv("KVGATE_BIN"); bin != "" { // a binary built elsewhere
		kvgateBin = bin
		os.Exit(m.Run())
	}
	dir, err := os.MkdirTemp("", "kvgate-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	kvgateBin = filepath.Join(dir, "kvgate")
	build := exec.Command("go", "build", "-o", kvgateBin, "./cmd/kvgate")
	build.Dir = ".."
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "e2e: building kvgate:", err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// proc is a started process whose output is kept for failure reports.
type proc struct {
	cmd  *exec.Cmd
	mu   sync.Mutex
	out  strings.Builder
	done chan struct{}
}

func (p *proc) output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.String()
}

// startProc starts name with args; cleanup stops it with SIGINT, then kills it.
func startProc(t testing.TB, name string, args ...string) *proc {
	t.Helper()
	return startProcEnv(t, nil, name, args...)
}

// startProcEnv is startProc with env added to the environment.
func startProcEnv(t testing.TB, env []string, name string, args ...string) *proc {
	t.Helper()
	p := &proc{cmd: exec.Command(name, args...), done: make(chan struct{})}
	p.cmd.Env = append(os.Environ(), env...)
	pr, pw := io.Pipe()
	p.cmd.Stdout, p.cmd.Stderr = pw, pw
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			p.mu.Lock()
			if p.out.Len() < 1<<20 {
				p.out.WriteString(sc.Text() + "\n")
			}
			p.mu.Unlock()
		}
	}()
	go func() { _ = p.cmd.Wait(); pw.Close(); close(p.done) }()
	t.Cleanup(func() {
		_ = p.cmd.Process.Signal(os.Interrupt)
		select {
		case <-p.done:
		case <-time.After(10 * time.Second):
			_ = p.cmd.Process.Kill()
			<-p.done
		}
		if t.Failed() {
			t.Logf("%s output:\n%s", filepath.Base(name), tail(p.output(), 4000))
		}
	})
	return p
}

func tail(s string, n int) string {
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}

// waitHTTP waits until url answers 200 or the process exits.
func waitHTTP(t testing.TB, p *proc, url string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		select {
		case <-p.done:
			t.Fatalf("process exited before %s answered:\n%s", url, tail(p.output(), 4000))
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		resp, err := http.DefaultClient.Do(req)
		cancel()
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("%s did not answer within %v:\n%s", url, timeout, tail(p.output(), 4000))
}

// up starts `kvgate up` with args on a free port and returns its base URL.
func up(t testing.TB, args ...string) (string, *proc) {
	t.Helper()
	addr := fmt.Sprintf("127.0.0.1:%d", porttest.Free(t))
	p := startProc(t, kvgateBin, append([]string{"up", "--http", addr}, args...)...)
	base := "http://" + addr
	waitHTTP(t, p, base+"/health", 60*time.Second)
	return base, p
}

// waitIndexed waits until the router whose /metrics is at metricsURL holds at least n KV
// blocks in its index for the engine at address: blocks that only the engine's BlockStored
// events put there. Tests about KV events wait on this (with the router's in-flight credit,
// --pending-ttl, turned off), never on a sleep: the credit alone would route a repeat to the
// same engine and report cached blocks with the event pipeline broken.
func waitIndexed(t testing.TB, metricsURL, address string, n float64) {
	t.Helper()
	var got float64
	if !polltest.Wait(30*time.Second, func() bool {
		got = metric(t, metricsURL, "kvgate_router_endpoint_cached_blocks", `address="`+address+`"`)
		return got >= n
	}) {
		t.Fatalf("the router's index holds %v blocks for %s after 30s, want at least %v (KV events not arriving?)", got, address, n)
	}
}

// metric returns the sum of every series of name on url's /metrics, matching all of the
// label fragments (e.g. `endpoint="127.0.0.1:80"`).
func metric(t testing.TB, url, name string, labels ...string) float64 {
	t.Helper()
	resp, err := http.Get(url + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sum := 0.0
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, name+" ") && !strings.HasPrefix(line, name+"{") {
			continue
		}
		ok := true
		for _, l := range labels {
			ok = ok && strings.Contains(line, l)
		}
		if !ok {
			continue
		}
		var v float64
		if _, err := fmt.Sscan(line[strings.LastIndexByte(line, ' ')+1:], &v); err == nil {
			sum += v
		}
	}
	return sum
}
