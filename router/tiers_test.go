package router_test

import (
	"context"
	"fmt"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/kvgate/kvgate/engine"
	"github.com/kvgate/kvgate/kvindex"
	"github.com/kvgate/kvgate/router"
)

// The lower tiers' medium names, as vLLM's offloading publishes them.
const (
	mediumCPU  = "CPU"
	mediumDisk = "STORAGE"
)

func TestTierModelCredits(t *testing.T) {
	m := router.DefaultTierModel()
	// One token of Qwen3-8B's KV is 147,456 bytes; prefill is 50 µs a token.
	perTok := 147456.0
	c := m.Credits()
	want := [kvindex.NumTiers]float64{1, 1 - perTok/50e9/50e-6, 1 - (perTok/7e9+perTok/50e9)/50e-6}
	for i := range c {
		if math.Abs(c[i]-want[i]) > 1e-9 {
			t.Errorf("credit[%d] = %v, want %v", i, c[i], want[i])
		}
	}
	if !(c[0] > c[1] && c[1] > c[2] && c[2] > 0) {
		t.Errorf("credits %v are not decreasing down the tiers", c)
	}
	if got, want := m.RemoteCredit(), 1-perTok/25e9/50e-6; math.Abs(got-want) > 1e-9 {
		t.Errorf("remote credit = %v, want %v", got, want)
	}
	// 1 ms of latency paid back at 50 - 5.9 µs a token: 23 tokens.
	if got := m.PullCrossover(); got != 23 {
		t.Errorf("crossover = %d tokens, want 23", got)
	}
	slow := m
	slow.Network = 1e9 // 147 µs a token over the network: never beats a 50 µs prefill
	if got := slow.PullCrossover(); got != -1 {
		t.Errorf("slow network crossover = %d, want -1", got)
	}
	if got := slow.RemoteCredit(); got != 0 {
		t.Errorf("slow network credit = %v, want 0", got)
	}
}

func TestTierCreditsConfig(t *testing.T) {
	for _, tt := range []struct {
		name string
		edit func(*router.Config)
		err  string
	}{
		{"unknown mode", func(c *router.Config) { c.TierCredits = "guessed" }, "unknown tier credits"},
		{"derived without bandwidth", func(c *router.Config) {
			c.TierCredits = router.TierCreditsDerived
			c.Tiers = router.TierModel{PrefillTokenTime: time.Microsecond, KVBytesPerToken: 1}
		}, "positive"},
		{"p2p that never pays", func(c *router.Config) {
			c.P2P = true
			c.Tiers = router.DefaultTierModel()
			c.Tiers.Network = 1e9
		}, "never beats"},
		{"negative minimum pull", func(c *router.Config) { c.P2P, c.P2PMinTokens = true, -1 }, "negative"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cfg := router.DefaultConfig()
			cfg.Endpoints = endpoints(1)
			tt.edit(&cfg)
			_, err := router.New(cfg, nil, nil)
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Fatalf("New: %v, want an error containing %q", err, tt.err)
			}
		})
	}
}

// TestDerivedTierCredits: a long prefix on disk is worth about half its prefill under the
// derived credits (a 7 GB/s read against a 50 µs-a-token prefill), a quarter under the fixed
// ones; so 20 disk blocks beat 8 GPU blocks only when derived.
func TestDerivedTierCredits(t *testing.T) {
	content := longText("derived", 200)
	tokens := chatTokens(t, content)
	if len(tokens) < 21*16 {
		t.Fatalf("prompt of %d tokens is too short", len(tokens))
	}
	for _, tt := range []struct {
		mode string
		want string
	}{
		{router.TierCreditsFixed, "e1"},
		{router.TierCreditsDerived, "e0"},
	} {
		t.Run(tt.mode, func(t *testing.T) {
			r, _ := newRouter(t, endpoints(2), func(c *router.Config) { c.TierCredits = tt.mode })
			r.ApplyEvents("e0", stored(tokens[:20*16], 16, 1, mediumDisk))
			r.ApplyEvents("e1", stored(tokens[:8*16], 16, 1, engine.MediumGPU))
			d := route(t, r, "/v1/chat/completions", chatBody(content, false))
			d.Done(nil, nil)
			if d.Endpoint.Name != tt.want {
				t.Errorf("picked %s (%d cached), want %s", d.Endpoint.Name, d.CachedBlocks, tt.want)
			}
		})
	}
}

// TestP2PPull: the cluster-wide cache decision. A busy holder of a long prefix hands it to an
// idle endpoint that pulls it; an idle holder is simply picked; a prefix shorter than the
// crossover is not pulled; without P2P nothing is.
func TestP2PPull(t *testing.T) {
	long := longText("p2p", 1200)
	longTok := chatTokens(t, long)
	short := longText("p2p-short", 150)
	shortTok := chatTokens(t, short)
	// 50 ms a pull: the crossover is 50e-3 / (50e-6 - 5.9e-6) = 1,134 tokens (71 blocks).
	slowStart := router.DefaultTierModel()
	slowStart.NetworkLatency = 50 * time.Millisecond
	if c := slowStart.PullCrossover(); len(shortTok) >= c || len(longTok) < c+16 {
		t.Fatalf("prompts of %d and %d tokens do not straddle the crossover of %d", len(shortTok), len(longTok), c)
	}
	type busy int
	const (
		idle busy = iota
		saturated
		loaded
	)
	for _, tt := range []struct {
		name      string
		p2p       bool
		content   string
		tokens    []uint32
		medium    string
		source    busy
		wantPick  string
		wantPull  bool
		wantPeers int // pulls counted
	}{
		{"saturated source, long prefix: pull", true, long, longTok, mediumCPU, saturated, "e1", true, 1},
		{"loaded source, long prefix: pull", true, long, longTok, mediumCPU, loaded, "e1", true, 1},
		{"disk tier source: pull", true, long, longTok, mediumDisk, saturated, "e1", true, 1},
		{"idle source: picked itself", true, long, longTok, mediumCPU, idle, "e0", false, 0},
		{"short prefix: below the crossover", true, short, shortTok, mediumCPU, saturated, "e1", false, 0},
		{"p2p off", false, long, longTok, mediumCPU, saturated, "e1", false, 0},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r, reg := newRouter(t, endpoints(2), func(c *router.Config) {
				c.P2P = tt.p2p
				c.Tiers = slowStart
			})
			held := tt.tokens[:(len(tt.tokens)-1)/16*16]
			r.ApplyEvents("e0", stored(held, 16, 1, tt.medium))
			switch tt.source {
			case saturated:
				r.SetLoad("e0", loadFull())
			case loaded:
				// Unrelated long prompts in flight on e0, not past their first token.
				for i := range 3 {
					d, err := r.Route(context.Background(), router.Request{Path: "/v1/chat/completions",
						Body: chatBody(longText(string(rune('a'+i))+"other", 600), false), Subset: []string{"127.0.0.1:1"}})
					if err != nil {
						t.Fatal(err)
					}
					t.Cleanup(func() { d.Done(nil, nil) })
				}
			}
			before := loadOf(r, tt.wantPick).PrefillTokens
			d := route(t, r, "/v1/chat/completions", chatBody(tt.content, false))
			defer d.Done(nil, nil)
			if d.Endpoint.Name != tt.wantPick {
				t.Fatalf("picked %s, want %s", d.Endpoint.Name, tt.wantPick)
			}
			if got := d.Pull != nil; got != tt.wantPull {
				t.Fatalf("pull %+v, want one: %v", d.Pull, tt.wantPull)
			}
			if got := gatheredCounter(t, reg, router.MetricPulls, nil); got != float64(tt.wantPeers) {
				t.Errorf("%s = %v, want %d", router.MetricPulls, got, tt.wantPeers)
			}
			prefill := loadOf(r, tt.wantPick).PrefillTokens - before
			if !tt.wantPull {
				if d.Endpoint.Name == "e1" && prefill != int64(len(tt.tokens)) {
					t.Errorf("prefill load %d, want the whole prompt %d", prefill, len(tt.tokens))
				}
				return
			}
			p := d.Pull
			if p.From.Name != "e0" || p.From.Address != "127.0.0.1:1" {
				t.Errorf("pull from %+v, want e0", p.From)
			}
			if p.Blocks != len(held)/16 || p.Tokens != len(held) {
				t.Errorf("pull of %d blocks (%d tokens), want %d (%d)", p.Blocks, p.Tokens, len(held)/16, len(held))
			}
			tier := kvindex.TierFromMedium(tt.medium)
			if p.Tiers[tier] != p.Blocks {
				t.Errorf("pull tiers %v, want all %d blocks on %v", p.Tiers, p.Blocks, tier)
			}
			// The pulled blocks are not prefill load on the target.
			if want := int64(len(tt.tokens) - len(held)); prefill != want {
				t.Errorf("prefill load %d, want %d (the prompt less the pulled blocks)", prefill, want)
			}
		})
	}
}

// TestP2PPullSourceOwnPrefix: a target that already holds part of the prefix pulls only when
// the source holds at least the crossover more, and Blocks still counts from the prompt's
// start.
func TestP2PPullSourceOwnPrefix(t *testing.T) {
	content := longText("own", 1200)
	tokens := chatTokens(t, content)
	n := (len(tokens) - 1) / 16
	r, _ := newRouter(t, endpoints(2), func(c *router.Config) { c.P2P = true })
	r.ApplyEvents("e0", stored(tokens[:n*16], 16, 1, mediumCPU))
	r.ApplyEvents("e1", stored(tokens[:10*16], 16, 1, engine.MediumGPU))
	r.SetLoad("e0", loadFull())
	d := route(t, r, "/v1/chat/completions", chatBody(content, false))
	defer d.Done(nil, nil)
	if d.Endpoint.Name != "e1" || d.Pull == nil {
		t.Fatalf("picked %s with pull %+v, want e1 pulling from e0", d.Endpoint.Name, d.Pull)
	}
	if d.CachedBlocks != 10 || d.Pull.Blocks != n {
		t.Errorf("cached %d, pull %d blocks; want 10 and %d", d.CachedBlocks, d.Pull.Blocks, n)
	}
}

func TestRemoteCredit(t *testing.T) {
	s := router.DynamoScoring()
	s.RemoteCredit = 0.5
	// 10 prompt blocks: 2 on the GPU, 4 more to pull at half credit: 10 - 2 - 2 uncached.
	c := router.Candidate{Cached: [kvindex.NumTiers]int{2}, Remote: 4}
	if got, want := s.Cost(&c, 10), (10-2-2)+10.0; got != want {
		t.Errorf("Cost = %v, want %v", got, want)
	}
	// least-load ignores every cache, pulls included.
	p := newRanker(t, router.PolicyLeastLoad, s, 1)
	costs := make([]float64, 2)
	p.Rank([]router.Candidate{c, {}}, 10, costs)
	if costs[0] != costs[1] {
		t.Errorf("least-load costs %v differ by cache", costs)
	}
	if _, err := router.NewRanker(router.PolicyKV, router.Scoring{RemoteCredit: -1}, nil); err == nil {
		t.Error("negative remote credit accepted")
	}
}

// TestP2PDisaggregated: a disaggregated request gets its KV from the prefill endpoint, never
// a pull as well.
func TestP2PDisaggregated(t *testing.T) {
	r, reg := newRouter(t, pdEndpoints(), func(c *router.Config) {
		c.DisaggMinUncachedTokens, c.DisaggMinUncachedRatio = 0, 0
		c.P2P = true
	})
	content := longText("pd-p2p", 600)
	tokens := chatTokens(t, content)
	held := tokens[:(len(tokens)-1)/16*16]
	// A decode endpoint holds the whole prompt on its host tier and is saturated; the other
	// decode endpoint holds nothing.
	r.ApplyEvents("e2", stored(held, 16, 1, mediumCPU))
	r.SetLoad("e2", loadFull())
	r.ApplyEvents("e3", stored(tokens[:16], 16, 99, ""))
	d := route(t, r, "/v1/chat/completions", chatBody(content, false))
	defer d.Done(nil, nil)
	if d.Prefill == nil {
		t.Fatalf("not disaggregated: target %s, reason %s", d.Endpoint.Name, d.AggregatedReason)
	}
	if d.Pull != nil {
		t.Fatalf("disaggregated (prefill %s) and a pull %+v", d.Prefill.Name, d.Pull)
	}
	if got := gatheredCounter(t, reg, router.MetricPulls, nil); got != 0 {
		t.Errorf("%s = %v with no pull", router.MetricPulls, got)
	}
}

// BenchmarkPickTiers: the scoring core with the prompt's prefix spread over the tiers of 8 of
// 64 endpoints (the longest holder saturated), P2P off and on, in one run; no in-flight
// credit, so that every pick decides a pull again.
func BenchmarkPickTiers(b *testing.B) {
	_, tokens := benchChat(b, 4096)
	for _, p2p := range []bool{false, true} {
		name := "p2p=off"
		if p2p {
			name = "p2p=on"
		}
		b.Run(name, func(b *testing.B) {
			r, _ := newRouter(b, endpoints(64), func(c *router.Config) { c.P2P, c.PendingTTL = p2p, -1 })
			for i := range 8 {
				r.ApplyEvents(fmt.Sprint("e", i*8), stored(tokens[:(i+1)*480], 16, 1, []string{"GPU", mediumCPU, mediumDisk}[i%3]))
			}
			r.SetLoad("e56", loadFull())
			p := router.Prompt{Model: model, Tokens: tokens}
			pulls := 0
			b.ReportAllocs()
			for b.Loop() {
				d, err := r.Pick(p)
				if err != nil {
					b.Fatal(err)
				}
				if d.Pull != nil {
					pulls++
				}
				d.Done(nil, nil)
			}
			b.ReportMetric(float64(pulls)/float64(b.N), "pulls/op")
		})
	}
}
