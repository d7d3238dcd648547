package replay

import "github.com/kvgate/kvgate/router"

// DisaggThresholds are the router's conditional-disaggregation settings for a disaggregated
// replay (router.Config's Disagg* fields; 0 turns a check off, as there).
type DisaggThresholds struct {
	MinUncachedTokens int
	MinUncachedRatio  float64
	MaxPrefillTokens  int64
	MaxPrefillQueue   float64
}

// DefaultDisaggThresholds are the router's defaults.
func DefaultDisaggThresholds() DisaggThresholds {
	return DisaggThresholds{
		MinUncachedTokens: router.DefaultDisaggMinUncachedTokens, MinUncachedRatio: router.DefaultDisaggMinUncachedRatio,
		MaxPrefillTokens: router.DefaultDisaggMaxPrefillTokens, MaxPrefillQueue: router.DefaultDisaggMaxPrefillQueue,
	}
}

func (d DisaggThresholds) apply(rc *router.Config) {
	rc.DisaggMinUncachedTokens, rc.DisaggMinUncachedRatio = d.MinUncachedTokens, d.MinUncachedRatio
	rc.DisaggMaxPrefillTokens, rc.DisaggMaxPrefillQueue = d.MaxPrefillTokens, d.MaxPrefillQueue
}
