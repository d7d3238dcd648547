package replay_test

import (
	"testing"
	"time"

	"github.com/kvgate/kvgate/planner"
	"github.com/kvgate/kvgate/workload"
)

// With engines that take long to start, a 3x burst is over before a reactive count serves
// it; the sla planner's headroom (the forecast's upper bound over the start-up horizon)
// holds engines for part of it in advance and meets the SLA for more requests.
func TestPlannerHeadroomHoldsABurstWithLongStartup(t *testing.T) {
	s := workload.DefaultSynthetic()
	s.Conversations, s.Turns, s.SystemPrompts, s.SystemTokens = 2000, 1, 4, 512
	s.UserTokens, s.OutputTokens, s.Rate = 512, 32, 2
	tr, err := s.Generate()
	if err != nil {
		t.Fatal(err)
	}
	p, err := workload.ParseRateProfile("0:1,400:3,550:1")
	if err != nil {
		t.Fatal(err)
	}
	tr.ApplyRateProfile(p)

	attainment := map[float64]float64{}
	for _, headroom := range []float64{0, 1} {
		cfg := plannerConfig(planner.ModeSLA, 20, 120*time.Second)
		cfg.Planner.Planner.Headroom = headroom
		r := run(t, cfg, tr)
		attainment[headroom] = r.SLAAttainment
		t.Logf("headroom %v: attainment %.3f, %.3f GPU-hours, %d engines at most", headroom, r.SLAAttainment, r.GPUHours, r.MaxEnginesUsed)
	}
	if attainment[1] < attainment[0]+0.05 {
		t.Fatalf("attainment %.3f with headroom 1, %.3f without; want at least 5 points more", attainment[1], attainment[0])
	}
}
