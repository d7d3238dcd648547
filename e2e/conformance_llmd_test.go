package e2e

import (
	"fmt"
	"strings"
	"testing"

	"github.com/kvgate/kvgate/kubetest"
	"github.com/kvgate/kvgate/kubetest/apiserver"
	"github.com/kvgate/kvgate/tokenizer"
)

// llmdOutcome is what docs/CONFORMANCE.md says llm-d's EPP gets on a check.
type llmdOutcome struct {
	result string // "PASS", "FAIL", "SKIP", or "EITHER" (varies run to run)
	detail string // for FAIL (and a failing EITHER): a part of the detail that says why
}

// llmdTable is the llm-d column of docs/CONFORMANCE.md, the same for both profiles. Keep
// the two in step.
var llmdTable = map[string]llmdOutcome{
	"health/liveness":                   {result: "PASS"},
	"health/readiness":                  {result: "PASS"},
	"health/ext_proc":                   {result: "PASS"},
	"streaming-mode":                    {result: "PASS"},
	"destination/header-metadata-agree": {result: "PASS"},
	"destination/fallbacks-in-pool":     {result: "PASS"},
	"subset/list":                       {result: "PASS"},
	// GIE v1.4.0 reads the hint only as a list; a string is no hint: the whole pool.
	"subset/string":              {result: "FAIL", detail: "with the subset ["},
	"subset/empty-503":           {result: "PASS"},
	"subset/unsatisfiable-503":   {result: "PASS"},
	"no-ready-endpoint-503":      {result: "PASS"},
	"shed-429":                   {result: "SKIP"},
	"served-accepted":            {result: "PASS"},
	"body/chunked-within-limits": {result: "PASS"},
	"client-gone":                {result: "PASS"},
	"behaviour/prefix-affinity":  {result: "PASS"},
	// Its load scorers read engine metrics it scrapes every 50 ms and do not count its own
	// picks: 8 requests at once go wherever the last scrape looked best, or spread by its
	// random tie-break.
	"behaviour/load-spread": {result: "EITHER", detail: "(want at least two engines, none over 75%)"},
}

// TestConformanceLLMD runs `kvgate conformance --json` as a process against llm-d's EPP,
// unmodified, in its approximate and precise profiles, over two `kvgate sim` Pods and a
// third Pod of the pool that is not ready, and holds the report to the llm-d column of
// docs/CONFORMANCE.md: what passes there passes, what fails there fails for the reason
// given.
func TestConformanceLLMD(t *testing.T) {
	kube := apiserver.Start(t)
	for _, profile := range []string{llmdApprox, llmdPrecise} {
		t.Run(profile, func(t *testing.T) {
			f := startLLMDFleet(t, kube, 2, "--speed", "50")
			// A third Pod of the pool, not ready (nothing listens there either).
			downIP := fmt.Sprintf("127.0.0.%d", len(f.sims)+2)
			down := fmt.Sprintf("%s:%d", downIP, f.port)
			f.kube.SetPod(t, kubetest.Pod{Namespace: f.namespace, Name: "sim-down", IP: downIP, NotReady: true, Labels: map[string]string{"app": "kvgate-sim"}})
			e := startLLMDEPP(t, f, profile)
			if profile == llmdPrecise {
				// The precise scorer's index must hear each sim's events before the
				// prefix-affinity check means anything (docs/LLMD.md: ZMQ drops what a
				// sim publishes before its subscription is through).
				primeLLMDEvents(t, startEPPGateway(t, e.grpc, f.sims), f.sims, e.metrics)
			}
			args := []string{"--epp", e.grpc, "--health", e.health, "--unready-endpoint", down, "--model", tokenizer.DefaultModel}
			for _, s := range f.sims {
				args = append(args, "--endpoint", "http://"+s.addr)
			}
			rep, err, stderr := runConformance(t, args...)
			var table strings.Builder
			_ = rep.WriteTable(&table)
			t.Logf("kvgate conformance against llm-d's EPP (%s):\n%s", profile, table.String())
			seen := map[string]bool{}
			for _, c := range rep.Checks {
				seen[c.Name] = true
				want, ok := llmdTable[c.Name]
				if !ok {
					t.Errorf("check %s is not in the llm-d table: %+v", c.Name, c)
					continue
				}
				got := "PASS"
				switch {
				case c.Skipped:
					got = "SKIP"
				case !c.Pass:
					got = "FAIL"
				}
				switch {
				case want.result == "EITHER" && got == "PASS":
				case want.result == "EITHER" || want.result == "FAIL":
					if got != "FAIL" || !strings.Contains(c.Detail, want.detail) {
						t.Errorf("%s: %s (%s), the table says it fails with %q", c.Name, got, c.Detail, want.detail)
					}
				case got != want.result:
					t.Errorf("%s: %s (%s), the table says %s", c.Name, got, c.Detail, want.result)
				}
			}
			for name := range llmdTable {
				if !seen[name] {
					t.Errorf("no check %q in the report", name)
				}
			}
			// subset/string fails, so the process must say so.
			if err == nil {
				t.Errorf("kvgate conformance exited 0 with a failed check:\n%s", stderr)
			}
			if processExited(e.p) {
				t.Errorf("llm-d's EPP exited during the suite:\n%s", tail(e.p.output(), 4000))
			}
		})
	}
}
