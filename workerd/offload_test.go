package workerd

import (
	"context"
	"flag"
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/kvgate/kvgate/gpu"
)

var update = flag.Bool("update", false, "rewrite testdata golden files")

// TestOffloadGolden: the offloading fields of testdata/offload/engines.yaml become these
// command lines and environments (testdata/offload/engines.golden; -update rewrites it).
func TestOffloadGolden(t *testing.T) {
	cfg, _, err := LoadConfig("testdata/offload/engines.yaml")
	if err != nil {
		t.Fatal(err)
	}
	bin := fakeBinary(t, "engine")
	for i := range cfg.Engines {
		cfg.Engines[i].Binary = bin
	}
	plans, err := makePlans(context.Background(), cfg, cfg.Engines, gpu.FakeInventory(len(cfg.Engines), "H100", 80<<30), map[int]bool{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for _, p := range plans {
		fmt.Fprintf(&b, "# %s\nargv:", p.spec.Name)
		for _, a := range p.argv {
			fmt.Fprintf(&b, " %s", strings.ReplaceAll(a, bin, "<bin>"))
		}
		b.WriteString("\n")
		for _, e := range p.env {
			fmt.Fprintf(&b, "env: %s\n", e)
		}
	}
	const golden = "testdata/offload/engines.golden"
	if *update {
		if err := os.WriteFile(golden, []byte(b.String()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	if b.String() != string(want) {
		t.Fatalf("plans differ from %s (go test -run OffloadGolden -update ./workerd/ rewrites it):\n%s", golden, b.String())
	}
}

// TestOffloadRefusals: combinations an engine cannot honour are refused, by name.
func TestOffloadRefusals(t *testing.T) {
	tests := []struct {
		name   string
		engine string
		want   string
	}{
		{"native has no disk tier", "{kind: vllm, model: m, cpu_offload_gib: 8, disk_offload_path: /d, disk_offload_gib: 10}", "native offloading has a host (CPU) tier only"},
		{"native needs a host tier", "{kind: vllm, model: m, offload: native}", "without cpu_offload_gib"},
		{"unknown backend", "{kind: vllm, model: m, cpu_offload_gib: 8, offload: kvbm}", `offload "kvbm"`},
		{"disk size without path", "{kind: vllm, model: m, disk_offload_gib: 10, offload: lmcache}", "needs both disk_offload_path and disk_offload_gib"},
		{"disk path without size", "{kind: vllm, model: m, disk_offload_path: /d, offload: lmcache}", "needs both disk_offload_path and disk_offload_gib"},
		{"negative size", "{kind: vllm, model: m, cpu_offload_gib: -1}", "must not be negative"},
		{"P/D engine", "{kind: vllm, model: m, role: decode, cpu_offload_gib: 8}", "offloading on a decode engine is not supported"},
		{"lmcache on sglang", "{kind: sglang, model: m, cpu_offload_gib: 8, offload: lmcache}", "offload: lmcache is vLLM's"},
		{"sglang disk size", "{kind: sglang, model: m, cpu_offload_gib: 8, disk_offload_path: /d, disk_offload_gib: 10}", "disk_offload_gib: SGLang's file storage backend takes no size"},
		{"sglang disk without host tier", "{kind: sglang, model: m, disk_offload_path: /d}", "set cpu_offload_gib too"},
		{"sim disk path", "{kind: sim, disk_offload_path: /d, disk_offload_gib: 1}", "the simulator's disk tier is modelled"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := ParseConfig([]byte("engines:\n  - " + tc.engine + "\n"))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one containing %q", err, tc.want)
			}
		})
	}
}

func TestParseEngineFlagOffload(t *testing.T) {
	e, err := ParseEngineFlag("kind=vllm,model=m,cpu_offload_gib=16.5,disk_offload_gib=100,disk_offload_path=/nvme,offload=lmcache")
	if err != nil {
		t.Fatal(err)
	}
	if e.CPUOffloadGiB != 16.5 || e.DiskOffloadGiB != 100 || e.DiskOffloadPath != "/nvme" || e.Offload != "lmcache" {
		t.Fatalf("%+v", e)
	}
	if _, err := ParseEngineFlag("kind=vllm,cpu_offload_gib=x"); err == nil || !strings.Contains(err.Error(), "GiB") {
		t.Fatalf("error %v", err)
	}
}
