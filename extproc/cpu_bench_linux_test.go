package extproc_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	filterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"

	"google.golang.org/grpc"

	"github.com/kvgate/kvgate/engine"
	"github.com/kvgate/kvgate/extproc"
	"github.com/kvgate/kvgate/extproc/extproctest"
	"github.com/kvgate/kvgate/router"
)

// cpuServerEnv makes TestCPUServer the server: BenchmarkExtProcCPU runs the server in a
// child process (this test binary) so that the client's CPU is not counted.
const cpuServerEnv = "KVGATE_EXTPROC_CPU_SERVER"

// TestCPUServer is the child of BenchmarkExtProcCPU: it serves ext_proc with the default
// routing policy, prints its address, and then answers each line on stdin with its own CPU
// time (ns, user+system) and heap allocation count, until stdin closes.
// Run as an ordinary test, it checks that harness: the child serves a request and reports
// CPU time and allocations that grow with the work.
func TestCPUServer(t *testing.T) {
	if os.Getenv(cpuServerEnv) == "" {
		checkCPUServer(t)
		return
	}
	if path := os.Getenv(cpuServerEnv + "_ALLOCS"); path != "" { // an allocation profile
		runtime.MemProfileRate = 512
		defer func() {
			pf, err := os.Create(path)
			if err == nil {
				_ = pprof.Lookup("allocs").WriteTo(pf, 0)
				pf.Close()
			}
		}()
	}
	if kind := os.Getenv(floorEnv); kind != "" { // a protocol floor server (BenchmarkExtProcFloor)
		if path := os.Getenv(cpuServerEnv + "_PROFILE"); path != "" { // its own profile
			t.Setenv(cpuServerEnv+"_PROFILE", path+"."+kind)
		}
		serveCPUStats(t, startFloor(t, kind))
		return
	}
	skip := os.Getenv(cpuServerEnv+"_SKIP") != ""
	f := startRouter(t, extproc.Config{SkipResponseBody: skip}, func(c *router.Config) {
		c.Policy = router.DefaultConfig().Policy
		if skip {
			c.ForceStreamUsage = false
		}
	})
	if skip { // exact mode: no decision needs its usage
		for _, ep := range endpoints {
			f.router.ApplyEvents(ep.Name, engine.EventBatch{})
		}
	}
	addr, err := f.server.Addr(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	serveCPUStats(t, addr.String())
}

// serveCPUStats is the server child's side of the harness: it prints the server's address,
// then answers each line on stdin with the process's CPU time (ns, user+system), heap
// allocation count and bytes, until stdin closes; with KVGATE_EXTPROC_CPU_SERVER_PROFILE set,
// under a CPU profile written there (a floor server's: there with ".grpc" or ".tcp" added).
func serveCPUStats(t *testing.T, addr string) {
	if path := os.Getenv(cpuServerEnv + "_PROFILE"); path != "" { // a CPU profile of the server
		pf, err := os.Create(path)
		if err != nil {
			t.Fatal(err)
		}
		if err := pprof.StartCPUProfile(pf); err != nil {
			t.Fatal(err)
		}
		defer func() { pprof.StopCPUProfile(); pf.Close() }()
	}
	fmt.Println(addr)
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		fmt.Println(processCPU().Nanoseconds(), ms.Mallocs, ms.TotalAlloc)
	}
}

// checkCPUServer starts the child as the benchmark does, has it serve one chat request
// through ext_proc, and checks its reports: CPU time and allocations both grow.
func checkCPUServer(t *testing.T) {
	srv := startCPUServer(t, os.Args[0])
	cpu0, mallocs0, _ := srv.stats(t)
	c, err := extproctest.Dial(srv.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	body, _ := json.Marshal(map[string]any{"model": model, "messages": []map[string]string{{"role": "user", "content": "how much CPU does a pick cost?"}}})
	up := extproctest.Upstream{Header: http.Header{"Content-Type": {"application/json"}}, Chunks: [][]byte{[]byte(`{"usage":{"prompt_tokens":9,"completion_tokens":1}}`)}}
	res, err := c.Do(context.Background(), extproctest.Mode{RequestBody: filterv3.ProcessingMode_BUFFERED, ResponseBody: filterv3.ProcessingMode_STREAMED},
		extproctest.Request{Method: "POST", Path: "/v1/chat/completions", Header: http.Header{"Content-Type": {"application/json"}}, Body: body},
		func(*extproctest.Result) extproctest.Upstream { return up })
	if err != nil || res.Immediate != nil {
		t.Fatalf("the child did not route the request: %v %+v", err, res)
	}
	cpu1, mallocs1, _ := srv.stats(t)
	if cpu1 < cpu0 || mallocs1 <= mallocs0 { // CPU time may advance in ticks coarser than one request
		t.Errorf("the child's reports did not follow a request: CPU %v -> %v, allocations %d -> %d", cpu0, cpu1, mallocs0, mallocs1)
	}
}

// processCPU is the CPU time (user and system) this process has used.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// cpuServer is the child process serving ext_proc.
type cpuServer struct {
	cmd  *exec.Cmd
	in   io.WriteCloser
	out  *bufio.Scanner
	addr string
}

// startCPUServer starts bin (this test binary, or another build of it) as the server.
func startCPUServer(b testing.TB, bin string, env ...string) *cpuServer {
	b.Helper()
	cmd := exec.Command(bin, "-test.run", "^TestCPUServer$")
	cmd.Env = append(append(os.Environ(), cpuServerEnv+"=1"), env...)
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	outp, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	s := &cpuServer{cmd: cmd, in: in, out: bufio.NewScanner(outp)}
	b.Cleanup(func() { _ = in.Close(); _ = cmd.Wait() })
	if !s.out.Scan() {
		b.Fatalf("the server process printed no address: %v", s.out.Err())
	}
	s.addr = strings.TrimSpace(s.out.Text())
	return s
}

// stats returns the server process's CPU time and allocation count so far.
func (s *cpuServer) stats(b testing.TB) (cpu time.Duration, mallocs, bytes uint64) {
	b.Helper()
	if _, err := io.WriteString(s.in, "\n"); err != nil {
		b.Fatal(err)
	}
	if !s.out.Scan() {
		b.Fatalf("the server process did not answer: %v", s.out.Err())
	}
	var ns int64
	if _, err := fmt.Sscan(s.out.Text(), &ns, &mallocs, &bytes); err != nil {
		b.Fatalf("server stats %q: %v", s.out.Text(), err)
	}
	return time.Duration(ns), mallocs, bytes
}

// prose4k returns n different chat bodies of about 4,096 prompt tokens each: real prose from
// the repository's docs, each body starting at its own offset so that no two tokenize alike.
func prose4k(b testing.TB, n int) [][]byte {
	b.Helper()
	var text strings.Builder
	for _, p := range []string{"../README.md", "../docs/ARCHITECTURE.md", "../docs/BENCHMARKS.md", "../docs/bench/router.md"} {
		t, err := os.ReadFile(p)
		if err != nil {
			b.Fatal(err)
		}
		text.Write(t)
	}
	corpus := text.String()
	const size = 16 << 10 // about 4,096 tokens of English prose
	if len(corpus) < size+n {
		b.Fatalf("corpus of %d bytes is too small", len(corpus))
	}
	out := make([][]byte, n)
	for i := range out {
		off := i * (len(corpus) - size) / n
		body, err := json.Marshal(map[string]any{
			"model":    model,
			"messages": []map[string]string{{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": corpus[off : off+size]}},
			"stream":   true,
		})
		if err != nil {
			b.Fatal(err)
		}
		out[i] = body
	}
	return out
}

// cpuBaselineEnv names another build of this test binary (a baseline: the code before a
// change) that BenchmarkExtProcCPU's full-duplex and buffered runs pair with.
const cpuBaselineEnv = "KVGATE_EXTPROC_CPU_BASELINE"

// BenchmarkExtProcCPU measures what the ext_proc server process spends per chat request of
// about 4,096 prompt tokens (issue 18): its CPU time (user+system, from getrusage in the
// server's own process, which runs apart from the client) and its heap allocations, over
// sequential whole requests as Envoy drives them (request headers and body, the pick, response
// headers and three SSE chunks, stream end), for FULL_DUPLEX_STREAMED and BUFFERED, and the
// messages each request took, both ways. It also routes the same bodies with router.Route
// alone in this process (same configuration: the default policy) and reports the difference
// as the protocol's share.
//
// A run can be paired: a second server process is driven with the same requests, one each
// in turn, so that both see the same load on a noisy machine; its figures are reported as
// pair-*, and cpu-ratio is server / pair. buffered-skip always pairs: both servers have
// SkipResponseBody on, usage not forced and every endpoint's cache known from KV events
// (exact mode), so they ask for no response body; its client honours the mode_override, the
// pair's plays an Envoy without allow_mode_override (the body still comes). With
// KVGATE_EXTPROC_CPU_BASELINE=BINARY, full-duplex and buffered pair with a server from that
// test binary (old code, same requests).
func BenchmarkExtProcCPU(b *testing.B) {
	bodies := prose4k(b, 64)
	upstream := cachedUpstream
	baseline := os.Getenv(cpuBaselineEnv)
	buffered := extproctest.Mode{RequestBody: filterv3.ProcessingMode_BUFFERED, ResponseBody: filterv3.ProcessingMode_STREAMED}
	for _, m := range []struct {
		name string
		mode extproctest.Mode
		skip bool // SkipResponseBody (and exact mode) on the server, allow_mode_override on the client
	}{
		{"full-duplex", extproctest.Mode{RequestBody: filterv3.ProcessingMode_FULL_DUPLEX_STREAMED, ResponseBody: filterv3.ProcessingMode_FULL_DUPLEX_STREAMED}, false},
		{"buffered", buffered, false},
		{"buffered-skip", buffered, true},
	} {
		b.Run(m.name, func(b *testing.B) {
			var env []string
			if m.skip {
				env = append(env, cpuServerEnv+"_SKIP=1")
			}
			var runs []*cpuRun
			add := func(prefix, bin string, allow bool) {
				r := &cpuRun{prefix: prefix, srv: startCPUServer(b, bin, env...)}
				r.do = extprocRequests(b, r, m.mode, allow, bodies, upstream, nil)
				runs = append(runs, r)
			}
			add("", os.Args[0], m.skip)
			switch {
			case m.skip:
				add("pair-", os.Args[0], false)
			case baseline != "":
				add("pair-", baseline, false)
			}
			n := driveCPU(b, runs, len(bodies))
			for _, r := range runs {
				r.report(b)
			}
			if len(runs) > 1 && runs[1].cpu > 0 {
				b.ReportMetric(runs[0].cpu/runs[1].cpu, "cpu-ratio")
			}
			decision := decisionCPU(b, bodies, n, m.skip)
			b.ReportMetric(runs[0].cpu-decision, "protocol-µs-cpu/req")
		})
	}
}

// cachedUpstream is the engine of the CPU benchmarks: three SSE chunks, the last with the
// usage. It reports as cached what the router predicted (16-token blocks), as an engine
// holding the predicted prefix does: a report of fewer makes approximate mode correct its
// record (kvindex.Approx.Forget), decision work that is not the protocol's and that, with
// every body sharing its first blocks, took 40% of the server's CPU.
func cachedUpstream(r *extproctest.Result) extproctest.Upstream {
	cached, _ := strconv.Atoi(r.Header.Get(router.HeaderCachedBlocks))
	usage := fmt.Sprintf(`{"prompt_tokens":4096,"completion_tokens":2,"total_tokens":4098,"prompt_tokens_details":{"cached_tokens":%d}}`, cached*16)
	return extproctest.Upstream{Header: http.Header{"Content-Type": {"text/event-stream"}}, Chunks: sseChunks(usage)}
}

// cpuRun is one server process of a CPU benchmark with its client and counters.
type cpuRun struct {
	prefix string // of its metrics: "" for the server measured, "pair-" for its pair, ...
	srv    *cpuServer
	do     func(i int) // one whole request on body i
	msgs   int         // messages both ways, counted by do

	cpu0             time.Duration
	mallocs0, bytes0 uint64

	// per request, once driveCPU has run
	cpu, allocs, bytes, msgsPerReq float64
}

// report reports the run's figures per request under its prefix.
func (r *cpuRun) report(b *testing.B) {
	b.ReportMetric(r.cpu, r.prefix+"server-µs-cpu/req")
	b.ReportMetric(r.allocs, r.prefix+"server-allocs/req")
	b.ReportMetric(r.bytes, r.prefix+"server-B/req")
	b.ReportMetric(r.msgsPerReq, r.prefix+"msgs/req")
}

// extprocRequests returns r's request function: whole requests through ext_proc as Envoy
// drives them in mode, from a client of its own (with more dial options, if any), with
// allow_mode_override as allow.
func extprocRequests(b *testing.B, r *cpuRun, mode extproctest.Mode, allow bool, bodies [][]byte, upstream func(*extproctest.Result) extproctest.Upstream, opts []grpc.DialOption) func(int) {
	c, err := extproctest.DialOptions(r.srv.addr, nil, opts...)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { c.Close() })
	c.EarlyWait = -1
	c.AllowModeOverride = allow
	ctx := context.Background()
	return func(i int) {
		req := extproctest.Request{Method: "POST", Path: "/v1/chat/completions", Header: http.Header{"Content-Type": {"application/json"}}, Body: bodies[i%len(bodies)]}
		res, err := c.Do(ctx, mode, req, upstream)
		if err != nil || res.Immediate != nil {
			b.Fatal(err, res)
		}
		r.msgs += res.Sent + res.Messages
	}
}

// driveCPU drives runs in turn, one request each, each turn starting with the next run, so
// that all see the same load on a noisy machine: first over the other half of the bodies (warming the caches on other text than
// the measured), then through b.Loop. It fills each run's figures per request and returns the
// requests each took.
func driveCPU(b *testing.B, runs []*cpuRun, nbodies int) int {
	for i := range nbodies {
		for _, r := range runs {
			r.do(i + nbodies/2)
		}
	}
	// No idle cost to take off: the servers run nothing between requests (the router's Run,
	// with its scrapes and probes, is never started), so all their CPU is the requests'.
	for _, r := range runs {
		r.cpu0, r.mallocs0, r.bytes0 = r.srv.stats(b)
		r.msgs = 0
	}
	n := 0
	for b.Loop() {
		// Each turn starts with the next run: the first of a turn is measurably cheaper on
		// this machine (a build paired with a copy of itself gave 0.95-1.05 without rotation).
		for j := range runs {
			runs[(n+j)%len(runs)].do(n)
		}
		n++
	}
	for _, r := range runs {
		cpu1, mallocs1, bytes1 := r.srv.stats(b)
		r.cpu = float64(cpu1-r.cpu0) / 1e3 / float64(n)
		r.allocs = float64(mallocs1-r.mallocs0) / float64(n)
		r.bytes = float64(bytes1-r.bytes0) / float64(n)
		r.msgsPerReq = float64(r.msgs) / float64(n)
	}
	return n
}

// decisionCPU routes n of the bodies with router.Route alone in this process (the
// configuration TestCPUServer serves with; exact: every endpoint's cache known from KV
// events), after a warm-up on the other half, and reports and returns its CPU per request.
func decisionCPU(b *testing.B, bodies [][]byte, n int, exact bool) float64 {
	rt := newDecisionRouter(b, exact)
	for i := range len(bodies) {
		route(b, rt, bodies[(i+len(bodies)/2)%len(bodies)])
	}
	var ms0, ms1 runtime.MemStats
	runtime.ReadMemStats(&ms0)
	d0 := processCPU()
	for i := range n {
		route(b, rt, bodies[i%len(bodies)])
	}
	decision := float64((processCPU() - d0).Microseconds()) / float64(n)
	runtime.ReadMemStats(&ms1)
	b.ReportMetric(decision, "decision-µs-cpu/req")
	b.ReportMetric(float64(ms1.Mallocs-ms0.Mallocs)/float64(n), "decision-allocs/req")
	return decision
}

// newDecisionRouter is the router TestCPUServer serves with.
func newDecisionRouter(b *testing.B, exact bool) *router.Router {
	f := startRouter(b, extproc.Config{}, func(c *router.Config) {
		c.Policy = router.DefaultConfig().Policy
		c.ForceStreamUsage = !exact
	})
	f.stop()
	if exact {
		for _, ep := range endpoints {
			f.router.ApplyEvents(ep.Name, engine.EventBatch{})
		}
	}
	return f.router
}

func route(b *testing.B, rt *router.Router, body []byte) {
	d, err := rt.Route(context.Background(), router.Request{Path: "/v1/chat/completions", Body: body})
	if err != nil {
		b.Fatal(err)
	}
	d.Done(nil, nil)
}
