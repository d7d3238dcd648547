package replay_test

import (
	"testing"
	"time"

	"github.com/kvgate/kvgate/replay"
	"github.com/kvgate/kvgate/router"
	"github.com/kvgate/kvgate/workload"
)

func overloaded(t *testing.T, n int, rate float64, tenants []float64, prios []workload.PriorityShare) *workload.Trace {
	t.Helper()
	s := workload.DefaultSynthetic()
	s.Conversations, s.Turns, s.Rate, s.OutputTokens = n, 1, rate, 256
	s.TenantWeights, s.PriorityShares = tenants, prios
	tr, err := s.Generate()
	if err != nil {
		t.Fatal(err)
	}
	return tr
}

func admissionConfig() replay.Config {
	return replay.Config{Engines: 4, Policy: router.PolicyKV, EventDelay: 5 * time.Millisecond, Seed: 1,
		Admission: &replay.Admission{MaxInflight: 16, QueueTTL: 10 * time.Second}}
}

// TestReplayFairness: two tenants offering 10:1 to a saturated fleet (the small one alone
// offers more than half the fleet's capacity) each get at least 40% of the tokens served.
func TestReplayFairness(t *testing.T) {
	res := run(t, admissionConfig(), overloaded(t, 4000, 600, []float64{10, 1}, nil))
	if len(res.Tenants) != 2 {
		t.Fatalf("tenants %+v", res.Tenants)
	}
	for _, tn := range res.Tenants {
		if tn.Share < 0.4 {
			t.Fatalf("tenant %d got %.2f of the service: %+v", tn.Tenant, tn.Share, res.Tenants)
		}
	}
	if res.Tenants[0].Rejected == 0 {
		t.Fatal("the fleet was not saturated: nothing refused")
	}
}

// TestReplayPriorities: under overload the high band is served at once, the low band waits
// (its TTFT is far above the high band's) and sheddable requests are refused first.
func TestReplayPriorities(t *testing.T) {
	res := run(t, admissionConfig(), overloaded(t, 1500, 50, nil,
		[]workload.PriorityShare{{Priority: 10, Share: 1}, {Priority: 0, Share: 2}, {Priority: -1, Share: 1}}))
	if len(res.Bands) != 3 {
		t.Fatalf("bands %+v", res.Bands)
	}
	high, low, shed := res.Bands[0], res.Bands[1], res.Bands[2]
	if high.Served != high.Requests || len(high.Rejected) != 0 {
		t.Fatalf("high band refused: %+v", high)
	}
	if shed.Rejected[router.RejectedSheddable] == 0 || low.Rejected[router.RejectedSheddable] != 0 {
		t.Fatalf("sheddable %+v, low %+v", shed, low)
	}
	if !(low.TTFTP90 > 4*high.TTFTP90) {
		t.Fatalf("low band TTFT p90 %.0f ms, high %.0f ms: the low band did not queue behind the high one", low.TTFTP90, high.TTFTP90)
	}
}
