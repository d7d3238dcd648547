package fleet

// Metric names of the planner loop.
const (
	MetricArrivalRate    = "kvgate_planner_arrival_rate"           // observed requests/s per pool
	MetricPromptTokens   = "kvgate_planner_prompt_tokens"          // observed mean prompt tokens per request
	MetricOutputTokens   = "kvgate_planner_output_tokens"          // observed mean output tokens per request
	MetricPrefixHitRate  = "kvgate_planner_prefix_hit_rate"        // observed fraction of prompt tokens cached
	MetricQueuedPrefill  = "kvgate_planner_queued_prefill_tokens"  // observed
	MetricKVUsage        = "kvgate_planner_kv_usage"               // observed mean over the pool's engines
	MetricTTFTP90        = "kvgate_planner_ttft_p90_seconds"       // observed, from the routers' histograms
	MetricITLP90         = "kvgate_planner_itl_p90_seconds"        // observed, from the routers' histograms
	MetricForecastRate   = "kvgate_planner_forecast_arrival_rate"  // sla: requests/s sized for
	MetricForecastPrompt = "kvgate_planner_forecast_prompt_tokens" // sla: mean prompt tokens sized for
	MetricForecastOutput = "kvgate_planner_forecast_output_tokens" // sla: mean output tokens sized for
	MetricNeeded         = "kvgate_planner_needed_replicas"        // fractional engines computed
	MetricNeededUpper    = "kvgate_planner_needed_upper_replicas"  // sla: the upper band a scale-down must fit
	MetricCorrection     = "kvgate_planner_latency_correction"     // sla: factor learnt from latency
	MetricDesired        = "kvgate_planner_desired_replicas"
	MetricReplicas       = "kvgate_planner_replicas" // by state: ready, pending
	MetricDecisions      = "kvgate_planner_decisions_total"
	MetricActions        = "kvgate_planner_actions_total" // by action (start, drain) and outcome
	MetricGPUsUsed       = "kvgate_planner_gpus_used"
	MetricGPUBudget      = "kvgate_planner_gpu_budget"
	MetricStepErrors     = "kvgate_planner_observe_errors_total" // a node or router that could not be read
	MetricSteps          = "kvgate_planner_steps_total"
)

// Actions and outcomes (labels of MetricActions).
const (
	ActionStart     = "start"
	ActionDrain     = "drain"
	OutcomeOK       = "ok"
	OutcomeFailed   = "failed"
	OutcomeAdvisory = "advisory" // --advisory: recommended, not done
)

// Engine states as workerd reports them (api/fleet/v1).
const (
	stateRunning  = "running"
	stateDraining = "draining"
	stateStopped  = "stopped"
)
