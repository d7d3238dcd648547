package gpu

import (
	"fmt"
	"slices"
)

// Assign picks want free devices from inv, skipping those in used, and returns their indexes
// in ascending order. It prefers devices with the most free memory, so that two engines on a
// node with a busy GPU avoid it. want <= 0 returns nil. When too few devices are free, the
// error says how many exist, how many are taken and why the inventory may be empty.
func Assign(inv Inventory, want int, used map[int]bool) ([]int, error) {
	if want <= 0 {
		return nil, nil
	}
	var free []Device
	for _, d := range inv.Devices {
		if !used[d.Index] && !d.MIG {
			free = append(free, d)
		}
	}
	if len(free) < want {
		msg := fmt.Sprintf("need %d GPU(s), %d free of %d on this node", want, len(free), len(inv.Devices))
		if inv.Reason != "" {
			msg += " (" + inv.Reason + ")"
		}
		return nil, fmt.Errorf("gpu: %s", msg)
	}
	slices.SortStableFunc(free, func(a, b Device) int {
		fa, fb := a.MemoryTotal-min(a.MemoryUsed, a.MemoryTotal), b.MemoryTotal-min(b.MemoryUsed, b.MemoryTotal)
		switch {
		case fa > fb:
			return -1
		case fa < fb:
			return 1
		}
		return a.Index - b.Index
	})
	out := make([]int, 0, want)
	for _, d := range free[:want] {
		out = append(out, d.Index)
	}
	slices.Sort(out)
	return out, nil
}

// VisibleDevices formats indexes for CUDA_VISIBLE_DEVICES.
func VisibleDevices(idx []int) string {
	s := ""
	for i, x := range idx {
		if i > 0 {
			s += ","
		}
		s += fmt.Sprint(x)
	}
	return s
}
