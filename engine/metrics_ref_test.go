package engine_test

import (
	"errors"
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/kvgate/kvgate/engine"
)

// parseLoadFull is ParseLoad as it was before it skipped the lines of the families it does
// not read: Prometheus's text parser over the whole page. It is the reference model of
// FuzzParseLoadMatchesFullParse and the baseline of BenchmarkParseLoad.
func parseLoadFull(r io.Reader) (engine.Load, error) {
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(r)
	if err != nil {
		return engine.Load{}, fmt.Errorf("engine: parse metrics: %w", err)
	}
	var l engine.Load
	found := false
	sum := func(names ...string) float64 {
		var total float64
		for _, n := range names {
			if v, ok := valuesFull(fams[n]); ok {
				found = true
				for _, x := range v {
					total += x
				}
			}
		}
		return total
	}
	l.Running = sum(engine.VLLMNumRequestsRunning, engine.SGLangNumRunningReqs)
	l.Waiting = sum(engine.VLLMNumRequestsWaiting, engine.SGLangNumQueueReqs)
	for _, n := range []string{engine.VLLMKVCacheUsage, engine.VLLMGPUCacheUsage, engine.SGLangTokenUsage} {
		v, ok := valuesFull(fams[n])
		if !ok {
			continue
		}
		found = true
		for _, x := range v {
			l.KVUsage = math.Max(l.KVUsage, min(x, 1))
		}
		break // the current name wins over the older one
	}
	if !found {
		return engine.Load{}, errors.New("engine: metrics carry no vLLM or SGLang load gauges")
	}
	loraInfoFull(fams[engine.VLLMLoRARequestsInfo], &l)
	if v, ok := valuesFull(fams[engine.ProcessStartTime]); ok {
		for _, x := range v {
			l.StartTime = max(l.StartTime, x)
		}
	}
	return l, nil
}

// loraInfo fills l's LoRA fields from the newest series of vllm:lora_requests_info.
func loraInfoFull(f *dto.MetricFamily, l *engine.Load) {
	if f == nil {
		return
	}
	best := math.Inf(-1)
	for _, m := range f.GetMetric() {
		v := m.GetGauge().GetValue()
		if m.GetGauge() == nil {
			v = m.GetUntyped().GetValue()
		}
		if math.IsNaN(v) || v < best {
			continue
		}
		best, l.LoRA = v, true
		l.MaxLoRA, l.RunningLoRAs, l.WaitingLoRAs = 0, nil, nil
		for _, lp := range m.GetLabel() {
			switch lp.GetName() {
			case "max_lora":
				if n, err := strconv.Atoi(lp.GetValue()); err == nil && n > 0 {
					l.MaxLoRA = n
				}
			case "running_lora_adapters":
				l.RunningLoRAs = splitNamesFull(lp.GetValue())
			case "waiting_lora_adapters":
				l.WaitingLoRAs = splitNamesFull(lp.GetValue())
			}
		}
	}
}

func splitNamesFull(s string) []string {
	var out []string
	for _, n := range strings.Split(s, ",") {
		if n = strings.TrimSpace(n); n != "" {
			out = append(out, n)
		}
	}
	return out
}

// values returns the finite, non-negative gauge (or untyped) values of a
// family.
func valuesFull(f *dto.MetricFamily) ([]float64, bool) {
	if f == nil {
		return nil, false
	}
	var out []float64
	for _, m := range f.GetMetric() {
		var v float64
		switch {
		case m.GetGauge() != nil:
			v = m.GetGauge().GetValue()
		case m.GetUntyped() != nil:
			v = m.GetUntyped().GetValue()
		case m.GetCounter() != nil:
			v = m.GetCounter().GetValue()
		default:
			continue
		}
		if math.IsNaN(v) || math.IsInf(v, 0) || v < 0 {
			continue
		}
		out = append(out, v)
	}
	return out, len(out) > 0
}
