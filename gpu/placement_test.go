package gpu_test

import (
	"slices"
	"strings"
	"testing"

	"github.com/kvgate/kvgate/gpu"
)

func TestAssign(t *testing.T) {
	inv := gpu.FakeInventory(4, "H100", 80<<30)
	inv.Devices[1].MemoryUsed = 70 << 30 // busy
	inv.Devices[3].MIG = true            // not assignable as a whole device
	tests := []struct {
		name    string
		inv     gpu.Inventory
		want    int
		used    map[int]bool
		out     []int
		wantErr string
	}{
		{name: "none wanted", inv: inv, want: 0},
		{name: "one prefers idle lowest", inv: inv, want: 1, out: []int{0}},
		{name: "two avoid busy", inv: inv, want: 2, out: []int{0, 2}},
		{name: "three take busy last", inv: inv, want: 3, out: []int{0, 1, 2}},
		{name: "used skipped", inv: inv, want: 1, used: map[int]bool{0: true}, out: []int{2}},
		{name: "too many", inv: inv, want: 4, wantErr: "need 4 GPU(s), 3 free of 4"},
		{name: "no driver", inv: gpu.Inventory{Reason: "nvml init: libnvidia-ml.so.1 not found"}, want: 1, wantErr: "not found"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := gpu.Assign(tc.inv, tc.want, tc.used)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil || !slices.Equal(got, tc.out) {
				t.Fatalf("Assign = %v, %v; want %v", got, err, tc.out)
			}
		})
	}
}

func TestVisibleDevices(t *testing.T) {
	if got := gpu.VisibleDevices([]int{0, 2, 5}); got != "0,2,5" {
		t.Fatalf("got %q", got)
	}
	if got := gpu.VisibleDevices(nil); got != "" {
		t.Fatalf("got %q", got)
	}
}
