package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/kvgate/kvgate/kubetest/apiserver"
	"github.com/kvgate/kvgate/router"
)

// The side-by-side measurement: the same sims, the same traffic (`kvgate bench` through
// `kvgate gateway --epp`), once per picker: kvgate router, llm-d's EPP with its approximate
// profile, and with its precise profile. Off unless KVGATE_SIDEBYSIDE=1 (scripts/sidebyside.sh);
// it takes minutes and its figures mean something only on a quiet machine.

const sideBySideEnv = "KVGATE_SIDEBYSIDE"

// sideWorkload is one bench workload.
type sideWorkload struct {
	name string
	args []string
}

func sideWorkloads() []sideWorkload {
	return []sideWorkload{
		{"synthetic multi-turn chat", []string{"--synthetic", "--syn-conversations", envInt("KVGATE_SIDEBYSIDE_CONVERSATIONS", 48),
			"--syn-turns", "4", "--syn-system-prompts", "4", "--syn-system-tokens", "1024", "--syn-user-tokens", "128",
			"--syn-output-tokens", "32", "--syn-rate", "4", "--syn-think-time", "2s"}},
		{"Mooncake trace", []string{"--trace", "../workload/testdata/mooncake_synthetic_trace.jsonl",
			"--max-requests", envInt("KVGATE_SIDEBYSIDE_MOONCAKE", 150), "--rate-scale", "2"}},
	}
}

func envInt(name string, def int) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return strconv.Itoa(def)
}

// sideResult is one picker's figures on one workload.
type sideResult struct {
	picker, workload    string
	bench               benchReport
	decisionMs          float64 // the picker's own time per request (its metric)
	cpuS, idleCPUS      float64 // picker process CPU seconds during the run; idle CPU over as long
	rssMiB              float64 // picker process peak RSS
	helperCPUS          float64 // the tokenization service's CPU seconds (precise only)
	helperRSSMiB        float64
	benchWall, idleWall time.Duration
}

type benchReport struct {
	Requests int            `json:"requests"`
	Errors   int            `json:"errors"`
	ByKind   map[string]int `json:"errors_by_kind"`
	HitRatio float64        `json:"hit_ratio"`
	TTFT     struct {
		P50 float64 `json:"p50_ms"`
		P90 float64 `json:"p90_ms"`
	} `json:"ttft"`
	ITL struct {
		P90 float64 `json:"p90_ms"`
	} `json:"itl"`
	Duration float64 `json:"duration_s"`
}

// procCPU returns a process's user+system CPU seconds and peak RSS in MiB, from /proc.
func procCPU(t *testing.T, pid int) (cpu, rssMiB float64) {
	t.Helper()
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	// Fields after the command (which may hold spaces) start after the last ')'.
	f := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+2:]))
	ut, _ := strconv.ParseFloat(f[11], 64) // utime is field 14, the 12th after ')'
	st, _ := strconv.ParseFloat(f[12], 64)
	cpu = (ut + st) / 100 // USER_HZ is 100 on Linux
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.SplitSeq(string(status), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, _ := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 64)
			rssMiB = kb / 1024
		}
	}
	return cpu, rssMiB
}

// histMeanMs is a histogram's sum over count, in ms.
func histMeanMs(t *testing.T, url, name string) float64 {
	n := metric(t, url, name+"_count")
	if n == 0 {
		return 0
	}
	return metric(t, url, name+"_sum") / n * 1000
}

// TestSideBySide runs every picker on every workload and logs the table docs/BENCHMARKS.md
// holds ("kvgate router vs llm-d EPP").
func TestSideBySide(t *testing.T) {
	// Without the switch (CI) it is a smoke run of the same harness: 2 engines, a few
	// conversations, no idle window; every picker must serve every request. With it
	// (scripts/sidebyside.sh) it is the measurement docs/BENCHMARKS.md holds.
	full := os.Getenv(sideBySideEnv) == "1"
	n, _ := strconv.Atoi(envInt("KVGATE_SIDEBYSIDE_ENGINES", 4))
	idle := 10 * time.Second
	workloads := sideWorkloads()
	if !full {
		n, idle = 2, 0
		workloads = []sideWorkload{{"synthetic multi-turn chat (smoke)", []string{"--synthetic", "--syn-conversations", "3",
			"--syn-turns", "2", "--syn-system-prompts", "1", "--syn-system-tokens", "512", "--syn-user-tokens", "64",
			"--syn-output-tokens", "8", "--syn-rate", "4", "--syn-think-time", "100ms"}}}
	}
	var results []sideResult
	kube := apiserver.Start(t) // llm-d's EPP finds the sims through it; kvgate router is given them
	for _, w := range workloads {
		for _, picker := range []string{"kvgate router", "llm-d " + llmdApprox, "llm-d " + llmdPrecise} {
			t.Run(w.name+"/"+picker, func(t *testing.T) {
				r := sideResult{picker: picker, workload: w.name}
				var pid int
				var eppAddr, metricsURL, decision string
				var helper *proc
				if picker == "kvgate router" {
					f := startPoolSims(t, n, false)
					rt := startRouter(t, f.sims, nil)
					pid, eppAddr, metricsURL, decision = rt.p.cmd.Process.Pid, rt.grpc, rt.base, router.MetricDecisionSeconds
					run(t, &r, w, f, eppAddr, pid, idle, helper)
				} else {
					profile := strings.TrimPrefix(picker, "llm-d ")
					f := startLLMDFleet(t, kube, n)
					e := startLLMDEPP(t, f, profile)
					if profile == llmdPrecise {
						helper = f.tokenizer
					}
					pid, eppAddr, metricsURL, decision = e.p.cmd.Process.Pid, e.grpc, e.metrics, llmdSchedulerTime
					run(t, &r, w, f, eppAddr, pid, idle, helper)
				}
				r.decisionMs = histMeanMs(t, metricsURL, decision)
				if !full && (r.bench.Requests == 0 || r.bench.Errors != 0 || r.cpuS <= 0) {
					t.Errorf("%s on %s: %d requests, %d errors %v, %.3f s CPU: want every request served and the picker's CPU counted",
						picker, w.name, r.bench.Requests, r.bench.Errors, r.bench.ByKind, r.cpuS)
				}
				results = append(results, r)
			})
		}
	}
	var b strings.Builder
	fmt.Fprintf(&b, "| workload | picker | requests | errors | hit ratio | TTFT p50 ms | TTFT p90 ms | ITL p90 ms | picker time/req ms | picker CPU ms/req (gross) | net of idle | peak RSS MiB | tokenizer CPU ms/req | tokenizer RSS MiB |\n")
	fmt.Fprintf(&b, "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n")
	for _, r := range results {
		per := func(cpu float64) float64 { return cpu / float64(max(r.bench.Requests, 1)) * 1000 }
		net := r.cpuS
		if r.idleWall > 0 {
			net -= r.idleCPUS * r.benchWall.Seconds() / r.idleWall.Seconds()
		}
		helper, helperRSS := "-", "-"
		if r.helperRSSMiB > 0 {
			helper, helperRSS = fmt.Sprintf("%.2f", per(r.helperCPUS)), fmt.Sprintf("%.0f", r.helperRSSMiB)
		}
		fmt.Fprintf(&b, "| %s | %s | %d | %d | %.3f | %.0f | %.0f | %.1f | %.3f | %.2f | %.2f | %.0f | %s | %s |\n",
			r.workload, r.picker, r.bench.Requests, r.bench.Errors, r.bench.HitRatio, r.bench.TTFT.P50, r.bench.TTFT.P90, r.bench.ITL.P90,
			r.decisionMs, per(r.cpuS), per(net), r.rssMiB, helper, helperRSS)
	}
	t.Logf("side by side (%d engines):\n%s", n, b.String())
	if out := os.Getenv("KVGATE_SIDEBYSIDE_OUT"); out != "" {
		if err := os.WriteFile(out, []byte(b.String()), 0o644); err != nil {
			t.Error(err)
		}
	}
}

// run measures the picker's idle CPU, then drives the workload through `kvgate gateway --epp`
// with `kvgate bench` and records the bench report and the picker's CPU and memory.
func run(t *testing.T, r *sideResult, w sideWorkload, f *llmdFleet, epp string, pid int, idle time.Duration, helper *proc) {
	t.Helper()
	base := startEPPGateway(t, epp, f.sims)
	c1, _ := procCPU(t, pid)
	if idle > 0 { // the picker's CPU over a quiet window of this length is the measurement
		c0 := c1
		<-time.After(idle)
		c1, _ = procCPU(t, pid)
		r.idleCPUS, r.idleWall = c1-c0, idle
	}
	var h0 float64
	if helper != nil {
		h0, _ = procCPU(t, helper.cmd.Process.Pid)
	}
	start := time.Now()
	args := append([]string{"bench", "--url", base, "--api", "chat", "--json", "--no-progress"}, w.args...)
	cmd := exec.Command(kvgateBin, args...)
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("kvgate bench: %v\n%s", err, out)
	}
	r.benchWall = time.Since(start)
	c2, rss := procCPU(t, pid)
	r.cpuS, r.rssMiB = c2-c1, rss
	if helper != nil {
		h1, hrss := procCPU(t, helper.cmd.Process.Pid)
		r.helperCPUS, r.helperRSSMiB = h1-h0, hrss
	}
	if err := json.Unmarshal(out, &r.bench); err != nil {
		t.Fatalf("bench output: %v\n%s", err, out)
	}
	t.Logf("%s / %s: %+v cpu %.2fs rss %.0f MiB", r.workload, r.picker, r.bench, r.cpuS, r.rssMiB)
}
