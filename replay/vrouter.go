package replay

import (
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"time"

	"github.com/kvgate/kvgate/engine"
	"github.com/kvgate/kvgate/engine/sim"
	"github.com/kvgate/kvgate/router"
	"github.com/kvgate/kvgate/tokenizer"
)

// Policies lists the router policies a replay can compare.
func Policies() []string {
	return []string{router.PolicyKV, router.PolicyApproxPrefix, router.PolicyLeastLoad, router.PolicyRoundRobin, router.PolicyRandom}
}

// replayModel is the model name every simulated engine serves.
const replayModel = "replay"

// scrapeEvery is how often the simulated engines' load reaches the router, as the router's
// default metrics scrape interval.
const scrapeEvery = 250 * time.Millisecond

// epoch anchors virtual time to the router's wall-clock API.
var epoch = time.Unix(1_700_000_000, 0)

// ticket is the router's decision for one request.
type ticket = *router.Decision

// virtualRouter is the real router driven in virtual time: no sockets, no scraping; the replay
// delivers KV events and load readings itself.
type virtualRouter struct {
	r         *router.Router
	now       time.Duration
	names     []string
	lastLoad  []time.Duration
	blockSize int
}

func newVirtualRouter(cfg Config, ecfg sim.Config) (*virtualRouter, error) {
	models, err := tokenizer.NewModelMap([]tokenizer.Model{{Name: replayModel, BlockSize: ecfg.BlockSize}})
	if err != nil {
		return nil, err
	}
	n := cfg.engines()
	p := &virtualRouter{names: make([]string, n), lastLoad: make([]time.Duration, n), blockSize: ecfg.BlockSize}
	rc := router.DefaultConfig()
	rc.Policy = cfg.Policy
	rc.Models = models
	rc.LazyTokenizers = true // the replay picks with token ids: no tokenizer to load
	rc.ScrapeInterval = -1
	rc.Seed = cfg.Seed + 1
	rc.Now = func() time.Time { return epoch.Add(p.now) }
	rc.MetricsStaleAfter = time.Hour
	if cfg.Disagg != nil {
		cfg.Disagg.apply(&rc)
	}
	if cfg.Admission != nil {
		cfg.Admission.apply(&rc)
	}
	if cfg.OverlapWeight > 0 {
		rc.Scoring.OverlapWeight = cfg.OverlapWeight
	}
	rc.PendingTTL = cfg.PendingTTL
	if cfg.MissWeight > 0 {
		rc.Scoring.MissWeight = cfg.MissWeight
	}
	rc.TierCredits, rc.P2P, rc.P2PMinTokens = cfg.TierCredits, cfg.P2P, cfg.P2PMinTokens
	rc.Tiers = tierModel(cfg, ecfg)
	for i := range p.names {
		p.names[i] = "engine-" + strconv.Itoa(i)
		role := router.RoleAggregated
		if cfg.Disaggregated() {
			role = router.RoleDecode
			if i < cfg.Prefill {
				role = router.RolePrefill
				p.names[i] = "prefill-" + strconv.Itoa(i)
			} else {
				p.names[i] = "decode-" + strconv.Itoa(i-cfg.Prefill)
			}
		}
		rc.Endpoints = append(rc.Endpoints, p.endpoint(i, role))
	}
	r, err := router.New(rc, slog.New(slog.DiscardHandler), nil)
	if err != nil {
		return nil, err
	}
	p.r = r
	return p, nil
}

// endpoint is engine i as the router sees it.
func (p *virtualRouter) endpoint(i int, role router.Role) router.Endpoint {
	return router.Endpoint{
		Role:      role,
		Name:      p.names[i],
		Address:   fmt.Sprintf("10.%d.%d.%d:8000", i/62500, i/250%250, i%250+1),
		Models:    []string{replayModel},
		BlockSize: p.blockSize,
		// A named event source without a subscription: the replay delivers the events.
		KVEvents: "replay://" + p.names[i],
	}
}

// addEngine names a new aggregated engine; it serves once setServing lists it.
func (p *virtualRouter) addEngine() int {
	i := len(p.names)
	p.names = append(p.names, "engine-"+strconv.Itoa(i))
	p.lastLoad = append(p.lastLoad, 0)
	return i
}

// setServing makes the aggregated engines in serving the router's endpoint set.
func (p *virtualRouter) setServing(now time.Duration, serving []int) {
	p.now = now
	eps := make([]router.Endpoint, len(serving))
	for j, i := range serving {
		eps[j] = p.endpoint(i, router.RoleAggregated)
	}
	p.r.SetEndpoints(eps)
}

// routed is one routing decision in engine indexes.
type routed struct {
	eng     int // the target
	prefill int // the prefill engine when disaggregated, else -1
	pull    int // leading blocks to pull from another engine (P2P), else 0
	ticket  ticket
}

// pick asks the router.
func (p *virtualRouter) pick(now time.Duration, tokens []uint32) (routed, error) {
	p.now = now
	d, err := p.r.Pick(router.Prompt{Model: replayModel, Tokens: tokens})
	if err != nil {
		return routed{}, err
	}
	return p.placed(d)
}

// placed maps a decision to engine indexes: the target, the prefill engine (-1 when the
// request is not disaggregated) and the blocks to pull.
func (p *virtualRouter) placed(d *router.Decision) (routed, error) {
	pk := routed{eng: slices.Index(p.names, d.Endpoint.Name), prefill: -1, ticket: d}
	if d.Prefill != nil {
		pk.prefill = slices.Index(p.names, d.Prefill.Name)
	}
	if d.Pull != nil {
		pk.pull = d.Pull.Blocks
	}
	if pk.eng < 0 || (d.Prefill != nil && pk.prefill < 0) {
		d.Done(nil, nil)
		return routed{}, fmt.Errorf("router picked an unknown endpoint: %+v", d.Endpoint)
	}
	return pk, nil
}

func (p *virtualRouter) firstToken(t ticket) {
	if t != nil {
		t.FirstToken()
	}
}

func (p *virtualRouter) done(t ticket) {
	if t != nil {
		t.Done(nil, nil)
	}
}

// apply delivers one step's KV events to the router as the engine's publisher would.
func (p *virtualRouter) apply(now time.Duration, eng int, evs []sim.KVEvent) {
	p.now = now
	b := engine.EventBatch{TS: now.Seconds(), Events: make([]engine.Event, len(evs))}
	for i, ev := range evs {
		b.Events[i] = sim.WireEvent(ev)
	}
	p.r.ApplyEvents(p.names[eng], b)
}

// load delivers the engine's queue and KV usage, at most every scrapeEvery.
func (p *virtualRouter) load(now time.Duration, eng int, st sim.Stats) {
	if now-p.lastLoad[eng] < scrapeEvery && p.lastLoad[eng] != 0 {
		return
	}
	p.now, p.lastLoad[eng] = now, now
	p.r.SetLoad(p.names[eng], engine.Load{Running: float64(st.Running), Waiting: float64(st.Waiting), KVUsage: st.KVUsage})
}

// tierModel is what the router knows of the simulated engines' speeds: their own timing
// model's prefill time per token (the attention term aside) and tier bandwidths, and the
// replay's transfer network.
func tierModel(cfg Config, ecfg sim.Config) router.TierModel {
	speed := ecfg.Timing.Speed
	if speed <= 0 {
		speed = 1
	}
	return router.TierModel{
		PrefillTokenTime: time.Duration(float64(ecfg.Timing.PerToken) / speed),
		KVBytesPerToken:  ecfg.Shape.KVBytesPerToken(),
		HostToDevice:     ecfg.Tiers.HostToDevice * speed,
		DiskRead:         ecfg.Tiers.DiskRead * speed,
		Network:          cfg.TransferBandwidth,
		NetworkLatency:   cfg.TransferLatency,
	}
}
