package router_test

import (
	"runtime/metrics"
	"testing"
)

// gcMeter measures what garbage collection costs a benchmark's operations: the CPU time the
// runtime counts as GC (mark assists, dedicated, fractional and idle mark workers, pauses)
// and the cycles, read from runtime/metrics around the timed loop. On an otherwise idle
// core the idle mark workers take what they find, so the CPU share is an upper bound; the
// cycles per thousand operations are exact.
type gcMeter struct{ s []metrics.Sample }

func readGC() []metrics.Sample {
	s := []metrics.Sample{{Name: "/cpu/classes/gc/total:cpu-seconds"}, {Name: "/gc/cycles/total:gc-cycles"}, {Name: "/gc/scan/heap:bytes"}}
	metrics.Read(s)
	return s
}

func startGCMeter() gcMeter { return gcMeter{readGC()} }

// report adds gc-µs-cpu/op, gc-cycles/1k-op and the heap the last cycle scanned (MB) for n
// operations.
func (g gcMeter) report(b *testing.B, n int) {
	if n == 0 {
		return
	}
	s := readGC()
	b.ReportMetric((s[0].Value.Float64()-g.s[0].Value.Float64())*1e6/float64(n), "gc-µs-cpu/op")
	b.ReportMetric(float64(s[1].Value.Uint64()-g.s[1].Value.Uint64())*1000/float64(n), "gc-cycles/1k-op")
	b.ReportMetric(float64(s[2].Value.Uint64())/1e6, "gc-scan-MB")
}
