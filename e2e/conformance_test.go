package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/kvgate/kvgate/conformance"
	"github.com/kvgate/kvgate/porttest"
	"github.com/kvgate/kvgate/tokenizer"
)

// TestConformanceRouter runs `kvgate conformance --json` as a process against `kvgate router`
// in front of two `kvgate sim` processes, with a third pool endpoint that is down: every
// check passes except shed-429, which is skipped (kvgate router has no sheddable-request
// header).
func TestConformanceRouter(t *testing.T) {
	sims := startSims(t, 2)
	dead := fmt.Sprintf("127.0.0.1:%d", porttest.Free(t))
	// The router's pool: the two sims, then the dead endpoint (no events, model given so
	// that nobody asks it); startRouter waits until it counts only the sims healthy.
	r := startRouter(t, sims, nil, "--endpoint", "http://"+dead, "--kv-events", "none", "--served-model", tokenizer.DefaultModel)
	args := []string{"--epp", r.grpc, "--unready-endpoint", dead, "--model", tokenizer.DefaultModel}
	for _, s := range sims {
		args = append(args, "--endpoint", "http://"+s.addr)
	}
	rep, err, stderr := runConformance(t, args...)
	names := map[string]bool{}
	for _, c := range rep.Checks {
		names[c.Name] = true
		switch {
		case c.Skipped && c.Name == "shed-429":
		case c.Skipped:
			t.Errorf("%s skipped: %s", c.Name, c.Detail)
		case !c.Pass:
			t.Errorf("%s failed: %s", c.Name, c.Detail)
		}
	}
	for _, want := range []string{"health/liveness", "health/readiness", "health/ext_proc", "streaming-mode",
		"destination/header-metadata-agree", "destination/fallbacks-in-pool", "subset/list", "subset/string",
		"subset/empty-503", "subset/unsatisfiable-503", "no-ready-endpoint-503", "served-accepted",
		"body/chunked-within-limits", "client-gone", "behaviour/prefix-affinity", "behaviour/load-spread"} {
		if !names[want] {
			t.Errorf("no check %q in the report", want)
		}
	}
	if err != nil && !t.Failed() {
		t.Errorf("exit %v with every check passing:\n%s", err, stderr)
	}
	if l := waitNoLoad(t, r.base); l != 0 {
		t.Errorf("the router still counts load %v after the suite (a stream leaked it)", l)
	}
}

// runConformance runs `kvgate conformance --json` as a process with args and returns its
// report, its exit error and its stderr.
func runConformance(t *testing.T, args ...string) (conformance.Report, error, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, kvgateBin, append([]string{"conformance", "--json"}, args...)...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	var rep conformance.Report
	if jerr := json.Unmarshal(out, &rep); jerr != nil {
		t.Fatalf("output is not the JSON report (%v; exit %v):\n%s\n%s", jerr, err, out, stderr.String())
	}
	return rep, err, stderr.String()
}
