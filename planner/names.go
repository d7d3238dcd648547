package planner

// Modes of a Planner (Config.Mode).
const (
	ModeSLA    = "sla"    // profile-based capacity against the TTFT and ITL targets, with a forecast
	ModeLoad   = "load"   // thresholds on queued prefill tokens and KV usage, one step at a time
	ModeStatic = "static" // hold each pool where it is (or at its Static count)
)

// Reasons of a Decision. A Decision whose Desired equals Current carries the reason the pool
// was held (for example ReasonCooldown when a lower count was wanted but not allowed yet).
const (
	ReasonSteady          = "steady"                      // the pool fits its load
	ReasonStatic          = "static"                      // static mode
	ReasonPrefillForecast = "forecast-prefill-throughput" // sla: prompt-token throughput at the TTFT target
	ReasonDecodeForecast  = "forecast-decode-throughput"  // sla: output-token throughput at the ITL target
	ReasonSLAMissed       = "sla-missed"                  // sla: observed TTFT or ITL over the target while at capacity
	ReasonLowLoad         = "low-load"                    // sla: the forecast fits in fewer engines
	ReasonQueueHigh       = "prefill-queue-high"          // load: queued prefill tokens per engine over the threshold
	ReasonKVHigh          = "kv-usage-high"               // load: KV usage over the threshold
	ReasonLoadLow         = "load-low"                    // load: queue and KV usage both under the low thresholds
	ReasonCooldown        = "cooldown"                    // a scale-down held back by the cooldown
	ReasonHysteresis      = "hysteresis"                  // a scale-down within the hysteresis band
	ReasonGPUBudget       = "gpu-budget"                  // cut to fit the GPU budget
	ReasonMinReplicas     = "min-replicas"                // raised to the pool's minimum
	ReasonMaxReplicas     = "max-replicas"                // cut to the pool's maximum
	ReasonMaxStep         = "max-step"                    // a change limited to the maximum step
)

// Reasons lists every reason, for metrics that pre-create their series.
func Reasons() []string {
	return []string{ReasonSteady, ReasonStatic, ReasonPrefillForecast, ReasonDecodeForecast, ReasonSLAMissed,
		ReasonLowLoad, ReasonQueueHigh, ReasonKVHigh, ReasonLoadLow, ReasonCooldown, ReasonHysteresis,
		ReasonGPUBudget, ReasonMinReplicas, ReasonMaxReplicas, ReasonMaxStep}
}
