package main

import (
	"strings"
	"testing"

	"github.com/kvgate/kvgate/porttest"
	"github.com/kvgate/kvgate/tokenizer"
)

// TestRouterPprof: `kvgate router --pprof-addr` serves Go's runtime profiles on that
// listener alone (not on the metrics one), and without the flag nothing serves them.
func TestRouterPprof(t *testing.T) {
	pprofAddr, metricsAddr := porttest.Addr(t), porttest.Addr(t)
	runCmd(t, newRouterCmd, "--endpoint", "127.0.0.1:1", "--served-model", tokenizer.DefaultModel, "--grpc", "127.0.0.1:0",
		"--metrics-addr", metricsAddr, "--pprof-addr", pprofAddr)
	waitFor(t, "the pprof listener", func() bool {
		return strings.Contains(get("http://"+pprofAddr+"/debug/pprof/"), "goroutine")
	})
	if g := get("http://" + pprofAddr + "/debug/pprof/goroutine?debug=1"); !strings.Contains(g, "goroutine profile:") {
		t.Errorf("goroutine profile: %.200q", g)
	}
	if m := get("http://" + metricsAddr + "/debug/pprof/"); strings.Contains(m, "goroutine") {
		t.Errorf("the metrics listener serves the profiles too: %.200q", m)
	}

	other := porttest.Addr(t)
	runCmd(t, newRouterCmd, "--endpoint", "127.0.0.1:1", "--served-model", tokenizer.DefaultModel, "--grpc", "127.0.0.1:0",
		"--metrics-addr", other)
	waitFor(t, "the second router's metrics", func() bool { return strings.Contains(get("http://"+other+"/metrics"), "go_goroutines") })
	if m := get("http://" + other + "/debug/pprof/"); strings.Contains(m, "goroutine") {
		t.Errorf("without --pprof-addr the metrics listener serves profiles: %.200q", m)
	}
}
