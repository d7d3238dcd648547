package replay_test

import (
	"testing"

	"github.com/kvgate/kvgate/engine/sim"
	"github.com/kvgate/kvgate/replay"
	"github.com/kvgate/kvgate/workload"
)

// TestDisaggThresholds: the router's conditional disaggregation shows in a replay: with the
// default thresholds, follow-up turns whose long system prompt is cached on their decode
// engine stay there; with every check off each request is prefilled remotely.
func TestDisaggThresholds(t *testing.T) {
	s := workload.DefaultSynthetic()
	s.Conversations, s.Turns, s.SystemTokens = 30, 3, 4096
	tr, err := s.Generate()
	if err != nil {
		t.Fatal(err)
	}
	base := replay.Config{Prefill: 1, Decode: 2, Policy: "kv", Engine: sim.Config{NumBlocks: 8000}, Seed: 1}
	always := base
	always.Disagg = &replay.DisaggThresholds{}
	def := base
	d := replay.DefaultDisaggThresholds()
	def.Disagg = &d
	never := base
	never.Disagg = &replay.DisaggThresholds{MinUncachedTokens: 1 << 30}

	ra, rd, rn := run(t, always, tr), run(t, def, tr), run(t, base, tr)
	if ra.Disaggregated != len(tr.Requests) {
		t.Errorf("thresholds off: %d of %d requests disaggregated, want all", ra.Disaggregated, len(tr.Requests))
	}
	if rd.Disaggregated == 0 || rd.Disaggregated >= ra.Disaggregated {
		t.Errorf("default thresholds: %d disaggregated (all: %d); want some, not all", rd.Disaggregated, ra.Disaggregated)
	}
	if rn.Disaggregated != rd.Disaggregated {
		t.Errorf("nil Disagg (%d) should behave as the router's defaults (%d)", rn.Disaggregated, rd.Disaggregated)
	}
	if r := run(t, never, tr); r.Disaggregated != 0 || r.TransferredBytes != 0 {
		t.Errorf("unreachable threshold: %d disaggregated, %d bytes moved", r.Disaggregated, r.TransferredBytes)
	}
}
