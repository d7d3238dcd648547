//go:build unix

package kvindex_test

import (
	"syscall"
	"time"
)

// processCPU returns the CPU time (user+system) the process has used so
// far. On a shared machine it tracks the work done, where wall time also
// counts the time other processes held the cores.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
