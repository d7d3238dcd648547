package main

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/kvgate/kvgate/replay"
	"github.com/kvgate/kvgate/router"
	"github.com/kvgate/kvgate/workload"
)

// trafficFlags are the router's admission queue and session affinity (kvgate router, up).
type trafficFlags struct {
	queueSize       int
	queueTTL        time.Duration
	defaultPriority int
	modelPriority   map[string]int
	maxInflight     int
	quantum         int
	queueThreshold  float64
	kvThreshold     float64
	sessions        string
	sessionTTL      time.Duration
}

func (t *trafficFlags) add(cmd *cobra.Command) {
	f := cmd.Flags()
	d := router.DefaultConfig()
	f.IntVar(&t.queueSize, "queue-size", router.DefaultQueueSize,
		"requests that may wait per model and priority band while every endpoint is saturated (negative: no queue, saturated endpoints are picked)")
	f.DurationVar(&t.queueTTL, "queue-ttl", router.DefaultQueueTTL,
		"longest wait in the admission queue; then 429 with Retry-After (x-kvgate-rejected-reason: rejected-ttl)")
	f.IntVar(&t.defaultPriority, "default-priority", 0,
		"priority band of requests without an x-kvgate-priority header (negative: sheddable)")
	f.StringToIntVar(&t.modelPriority, "model-priority", nil,
		"priority band per model for requests without the header, e.g. batch-model=-1")
	f.IntVar(&t.maxInflight, "max-inflight", 0,
		"an endpoint holding this many requests routed by this router is saturated (0: no limit)")
	f.IntVar(&t.quantum, "fairness-quantum", router.DefaultFairnessQuantum,
		"uncached prompt tokens each fairness ID may dispatch per deficit-round-robin round")
	f.Float64Var(&t.queueThreshold, "saturation-waiting", d.QueueThreshold,
		"an endpoint whose engine reports more waiting requests is saturated (0: off)")
	f.Float64Var(&t.kvThreshold, "saturation-kv-usage", d.KVUsageThreshold,
		"an endpoint whose engine reports a higher KV-cache usage (0..1) is saturated (0: off)")
	f.StringVar(&t.sessions, "session-affinity", router.SessionSoft,
		"x-kvgate-session-id binding: soft (preferred until saturated), hard (always, waiting for it) or off")
	f.DurationVar(&t.sessionTTL, "session-ttl", router.DefaultSessionTTL,
		"a session binding idle this long is forgotten")
}

func (t *trafficFlags) apply(cfg *router.Config) {
	cfg.QueueSize = t.queueSize
	cfg.QueueTTL = t.queueTTL
	cfg.DefaultPriority = t.defaultPriority
	cfg.ModelPriority = t.modelPriority
	cfg.MaxInflight = t.maxInflight
	cfg.FairnessQuantum = t.quantum
	cfg.QueueThreshold = t.queueThreshold
	cfg.KVUsageThreshold = t.kvThreshold
	cfg.SessionAffinity = t.sessions
	cfg.SessionTTL = t.sessionTTL
}

// replayTrafficFlags add tenants, priorities and sessions to kvgate replay's synthetic
// workload and turn the router's admission queue on.
type replayTrafficFlags struct {
	on         bool
	adm        replay.Admission
	tenants    []float64
	priorities []string
}

func (r *replayTrafficFlags) add(cmd *cobra.Command) {
	f := cmd.Flags()
	f.BoolVar(&r.on, "admission", false, "turn the router's admission queue on (with the trace's tenants, priorities and sessions); reports TTFT per band and service per tenant")
	f.IntVar(&r.adm.MaxInflight, "admission-max-inflight", 64, "admission: requests per engine before it is saturated")
	f.IntVar(&r.adm.QueueSize, "admission-queue-size", router.DefaultQueueSize, "admission: waiting requests per priority band at most")
	f.DurationVar(&r.adm.QueueTTL, "admission-queue-ttl", router.DefaultQueueTTL, "admission: longest wait in the queue (virtual time)")
	f.StringVar(&r.adm.Sessions, "admission-sessions", router.SessionSoft, "admission: session affinity of conversations: soft, hard or off")
	f.Float64SliceVar(&r.tenants, "syn-tenants", nil, "synthetic: tenants' relative shares of the conversations, e.g. 10,1")
	f.StringSliceVar(&r.priorities, "syn-priorities", nil, "synthetic: priority bands and their shares of the conversations, e.g. 10=1,0=2,-1=1")
}

// apply sets the workload's tenants and priorities and the replay's admission.
func (r *replayTrafficFlags) apply(syn *workload.Synthetic, cfg *replay.Config) error {
	syn.TenantWeights = r.tenants
	syn.PriorityShares = nil
	for _, p := range r.priorities {
		band, share, ok := strings.Cut(p, "=")
		prio, err1 := strconv.Atoi(band)
		sh, err2 := strconv.ParseFloat(share, 64)
		if !ok || err1 != nil || err2 != nil {
			return fmt.Errorf("--syn-priorities %q: want BAND=SHARE, e.g. 10=1", p)
		}
		syn.PriorityShares = append(syn.PriorityShares, workload.PriorityShare{Priority: prio, Share: sh})
	}
	if r.on {
		a := r.adm
		cfg.Admission = &a
	}
	return nil
}
