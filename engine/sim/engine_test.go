package sim

import (
	"fmt"
	"math/rand/v2"
	"testing"
	"time"
)

// run drives e in virtual time until it is idle and returns every output and event.
func run(t testing.TB, e *Engine, now time.Duration) (time.Duration, []Output, []KVEvent) {
	t.Helper()
	var outs []Output
	var evs []KVEvent
	for i := 0; e.Busy(); i++ {
		if i > 1_000_000 {
			t.Fatal("engine made no progress")
		}
		r := e.Step(now)
		if r.End <= now {
			t.Fatalf("step at %v ended at %v", now, r.End)
		}
		now = r.End
		outs = append(outs, r.Outputs...)
		evs = append(evs, r.Events...)
	}
	return now, outs, evs
}

func prompt(seed, n int) []uint32 {
	p := make([]uint32, n)
	for i := range p {
		p[i] = uint32(seed*100_003+i*7) % 151_000
	}
	return p
}

func TestEngineRejects(t *testing.T) {
	e, err := New(Config{NumBlocks: 4, BlockSize: 4})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		req  Request
	}{
		{"no id", Request{Prompt: []uint32{1}, MaxTokens: 1}},
		{"no prompt", Request{ID: "a", MaxTokens: 1}},
		{"no max tokens", Request{ID: "a", Prompt: []uint32{1}}},
		{"too long", Request{ID: "a", Prompt: prompt(1, 16), MaxTokens: 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := e.Add(tt.req); err == nil {
				t.Fatal("Add accepted it")
			}
		})
	}
	if err := e.Add(Request{ID: "a", Prompt: []uint32{1}, MaxTokens: 1}); err != nil {
		t.Fatal(err)
	}
	if err := e.Add(Request{ID: "a", Prompt: []uint32{1}, MaxTokens: 1}); err == nil {
		t.Fatal("duplicate id accepted")
	}
	nc, _ := New(Config{NumBlocks: 64, NoChunkedPrefill: true, MaxNumBatchedTokens: 32})
	if err := nc.Add(Request{ID: "long", Prompt: prompt(1, 30), MaxTokens: 3}); err == nil {
		t.Fatal("a request that can never be scheduled without chunking was accepted")
	}
	if _, err := New(Config{NumBlocks: -1}); err == nil {
		t.Fatal("negative capacity accepted")
	}
}

func TestEngineGeneratesAndFinishes(t *testing.T) {
	tests := []struct {
		name   string
		req    Request
		n      int
		finish FinishReason
	}{
		{"length", Request{ID: "a", Prompt: prompt(1, 40), MaxTokens: 5}, 5, FinishLength},
		{"eos first", Request{ID: "a", Prompt: prompt(1, 40), MaxTokens: 5, EOS: 3}, 3, FinishStop},
		{"eos after max", Request{ID: "a", Prompt: prompt(1, 40), MaxTokens: 5, EOS: 9}, 5, FinishLength},
		{"own tokens", Request{ID: "a", Prompt: prompt(1, 40), MaxTokens: 3, Output: []uint32{7, 8, 9}}, 3, FinishLength},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e, _ := New(Config{NumBlocks: 64})
			if err := e.Add(tt.req); err != nil {
				t.Fatal(err)
			}
			_, outs, _ := run(t, e, 0)
			if len(outs) != tt.n {
				t.Fatalf("%d outputs, want %d", len(outs), tt.n)
			}
			for i, o := range outs {
				if o.Index != i || o.PromptTokens != 40 {
					t.Fatalf("output %d: %+v", i, o)
				}
				if i < len(tt.req.Output) && o.Token != tt.req.Output[i] {
					t.Fatalf("token %d = %d, want %d", i, o.Token, tt.req.Output[i])
				}
			}
			if got := outs[len(outs)-1].Finish; got != tt.finish {
				t.Fatalf("finish %v, want %v", got, tt.finish)
			}
			if st := e.Stats(); st.FreeBlocks != st.NumBlocks || st.Running != 0 {
				t.Fatalf("blocks leaked: %+v", st)
			}
		})
	}
}

// TestPrefixCacheHitLowersTTFT is the core of issue 4's proof in virtual time: the same prompt
// twice, the second finds its blocks cached and its first token comes sooner.
func TestPrefixCacheHitLowersTTFT(t *testing.T) {
	e, _ := New(Config{})
	p := prompt(3, 2000)
	ttft := func(id string, at time.Duration) (time.Duration, Output, time.Duration) {
		if err := e.Add(Request{ID: id, Prompt: p, MaxTokens: 4}); err != nil {
			t.Fatal(err)
		}
		now, first := at, time.Duration(0)
		var out Output
		for e.Busy() {
			r := e.Step(now)
			now = r.End
			for _, o := range r.Outputs {
				if o.Index == 0 {
					first, out = now-at, o
				}
			}
		}
		return first, out, now
	}
	cold, o1, now := ttft("a", 0)
	warm, o2, _ := ttft("b", now+time.Second)
	if o1.CachedTokens != 0 {
		t.Fatalf("cold request had %d cached tokens", o1.CachedTokens)
	}
	if want := (2000 - 1) / 16 * 16; o2.CachedTokens != want {
		t.Fatalf("warm request had %d cached tokens, want %d", o2.CachedTokens, want)
	}
	if warm*5 > cold {
		t.Fatalf("warm TTFT %v not well below cold %v", warm, cold)
	}
	st := e.Stats()
	if st.PrefixQueries != 4000 || st.PrefixHits != uint64(o2.CachedTokens) {
		t.Fatalf("prefix stats %+v", st)
	}
	// 2000 tokens at the default coefficients: about 6ms + 100ms + attention.
	if cold < 80*time.Millisecond || cold > 200*time.Millisecond {
		t.Fatalf("cold TTFT %v outside the modelled range", cold)
	}
}

func TestEvictionEmitsBlockRemoved(t *testing.T) {
	e, _ := New(Config{NumBlocks: 10, BlockSize: 4})
	set := map[BlockHash]bool{}
	apply := func(evs []KVEvent) (removed int) {
		for _, ev := range evs {
			for _, h := range ev.Hashes {
				switch ev.Kind {
				case BlockStored:
					set[h] = true
				case BlockRemoved:
					if !set[h] {
						t.Fatalf("removed %x that was never stored", h[:4])
					}
					delete(set, h)
					removed++
				}
			}
		}
		return removed
	}
	e.Add(Request{ID: "a", Prompt: prompt(1, 24), MaxTokens: 1})
	_, _, evs := run(t, e, 0)
	if apply(evs) != 0 || len(set) != 6 {
		t.Fatalf("after a: %d cached, events %+v", len(set), evs)
	}
	e.Add(Request{ID: "b", Prompt: prompt(2, 24), MaxTokens: 1})
	_, _, evs = run(t, e, time.Second)
	if n := apply(evs); n != 2 {
		t.Fatalf("b evicted %d blocks, want 2 (10 blocks, 6 cached, 6 needed)", n)
	}
	if len(set) != len(e.kv.cached) {
		t.Fatalf("events say %d cached, cache has %d", len(set), len(e.kv.cached))
	}
	// The tail blocks of a went first: a's first 4 blocks are still a prefix hit.
	e.Add(Request{ID: "c", Prompt: prompt(1, 24), MaxTokens: 1})
	_, outs, _ := run(t, e, 2*time.Second)
	if outs[0].CachedTokens != 16 {
		t.Fatalf("c had %d cached tokens, want 16", outs[0].CachedTokens)
	}
}

func TestStoredEventsChain(t *testing.T) {
	e, _ := New(Config{NumBlocks: 64, BlockSize: 4, MaxNumBatchedTokens: 8})
	p := prompt(9, 21)
	e.Add(Request{ID: "a", Prompt: p, MaxTokens: 8, LoRAName: "ad"})
	_, _, evs := run(t, e, 0)
	var hashes []BlockHash
	var toks []uint32
	for _, ev := range evs {
		if ev.Kind != BlockStored {
			t.Fatalf("unexpected event %+v", ev)
		}
		if len(hashes) == 0 && ev.HasParent || len(hashes) > 0 && (!ev.HasParent || ev.Parent != hashes[len(hashes)-1]) {
			t.Fatalf("event breaks the chain: %+v", ev)
		}
		if ev.LoRAName != "ad" || ev.BlockSize != 4 || len(ev.Tokens) != 4*len(ev.Hashes) {
			t.Fatalf("event fields: %+v", ev)
		}
		hashes = append(hashes, ev.Hashes...)
		toks = append(toks, ev.Tokens...)
	}
	// 21 prompt + 8 output tokens, the last output never computed: 28 computed, 7 blocks.
	if len(hashes) != 7 {
		t.Fatalf("%d blocks stored, want 7", len(hashes))
	}
	for i := range p[:20] {
		if toks[i] != p[i] {
			t.Fatalf("token %d = %d, want %d", i, toks[i], p[i])
		}
	}
	var parent BlockHash
	for i, h := range hashes {
		if want := hashBlock(parent, toks[4*i:4*i+4], "ad"); h != want {
			t.Fatalf("block %d hash is not the chained hash", i)
		}
		parent = h
	}
}

func TestChunkedPrefillAndBatching(t *testing.T) {
	e, _ := New(Config{NumBlocks: 1000, MaxNumBatchedTokens: 512, MaxNumSeqs: 3})
	for i := range 5 {
		e.Add(Request{ID: fmt.Sprint(i), Prompt: prompt(i, 1000), MaxTokens: 2})
	}
	r := e.Step(0)
	if r.PrefillTokens != 512 || e.Stats().Running != 1 {
		t.Fatalf("first step prefilled %d with %d running", r.PrefillTokens, e.Stats().Running)
	}
	for e.Busy() {
		r = e.Step(r.End)
		if r.PrefillTokens+r.DecodeTokens > 512 {
			t.Fatalf("step scheduled %d tokens", r.PrefillTokens+r.DecodeTokens)
		}
		if e.Stats().Running > 3 {
			t.Fatalf("%d running", e.Stats().Running)
		}
	}
	if st := e.Stats(); st.GenerationTokens != 10 || st.PromptTokens != 5000 {
		t.Fatalf("stats %+v", st)
	}
}

func TestPreemptionRecomputes(t *testing.T) {
	// 12 blocks of 4; four requests each wanting 3 prompt blocks and growing by 4 blocks.
	e, _ := New(Config{NumBlocks: 12, BlockSize: 4})
	for i := range 4 {
		if err := e.Add(Request{ID: fmt.Sprint(i), Prompt: prompt(i, 12), MaxTokens: 16}); err != nil {
			t.Fatal(err)
		}
	}
	_, outs, _ := run(t, e, 0)
	if len(outs) != 64 {
		t.Fatalf("%d outputs, want 64", len(outs))
	}
	st := e.Stats()
	if st.Preemptions == 0 {
		t.Fatal("no preemption although the cache cannot hold every request")
	}
	if st.FreeBlocks != 12 {
		t.Fatalf("blocks leaked: %+v", st)
	}
	// Every request still produced its 16 tokens, in order.
	next := map[string]int{}
	for _, o := range outs {
		if o.Index != next[o.ID] {
			t.Fatalf("%s: token %d after %d", o.ID, o.Index, next[o.ID])
		}
		next[o.ID]++
	}
}

func TestHoldReleaseAndRemoteBlocks(t *testing.T) {
	p := prompt(5, 70) // 4 full blocks of 16
	pre, _ := New(Config{NumBlocks: 32})
	pre.Add(Request{ID: "p", Prompt: p, MaxTokens: 1, Hold: true})
	_, outs, _ := run(t, pre, 0)
	if len(outs) != 1 || len(outs[0].BlockIDs) != 4 {
		t.Fatalf("prefill outputs %+v", outs)
	}
	if got := pre.Held("p"); len(got) != 4 || got[0] != outs[0].BlockIDs[0] {
		t.Fatalf("Held = %v", got)
	}
	if st := pre.Stats(); st.FreeBlocks != 32-5 || st.Held != 1 {
		t.Fatalf("held blocks not kept: %+v", st)
	}
	if !pre.Release("p") || pre.Release("p") {
		t.Fatal("Release twice")
	}
	if st := pre.Stats(); st.FreeBlocks != 32 {
		t.Fatalf("release leaked: %+v", st)
	}

	dec, _ := New(Config{NumBlocks: 32})
	dec.Add(Request{ID: "d", Prompt: p, MaxTokens: 3, RemoteBlocks: 4})
	r := dec.Step(0)
	if r.PrefillTokens != 70-64 {
		t.Fatalf("decode engine prefilled %d tokens, want 6", r.PrefillTokens)
	}
	if len(r.Events) != 1 || r.Events[0].Kind != BlockStored || len(r.Events[0].Hashes) != 4 {
		t.Fatalf("remote blocks not stored: %+v", r.Events)
	}
	_, outs, _ = run(t, dec, r.End)
	if outs[0].CachedTokens != 64 {
		t.Fatalf("cached tokens %d, want 64", outs[0].CachedTokens)
	}
	if o := outs[0]; o.RemoteTokens != 64 || o.CPUTokens != 0 || o.DiskTokens != 0 {
		t.Fatalf("output says %d remote, %d CPU, %d disk tokens; want 64 remote", o.RemoteTokens, o.CPUTokens, o.DiskTokens)
	}
	if st := dec.Stats(); st.PrefixHits != 0 {
		t.Fatalf("remote blocks counted as local hits: %+v", st)
	}
}

func TestAbortFreesBlocks(t *testing.T) {
	e, _ := New(Config{NumBlocks: 32})
	e.Add(Request{ID: "a", Prompt: prompt(1, 100), MaxTokens: 100})
	e.Add(Request{ID: "b", Prompt: prompt(2, 100), MaxTokens: 100})
	e.Step(0)
	if !e.Abort("a") || !e.Abort("b") || e.Abort("b") {
		t.Fatal("Abort results")
	}
	if st := e.Stats(); st.FreeBlocks != 32 || e.Busy() {
		t.Fatalf("after abort: %+v", st)
	}
	if _, ok := e.ResetPrefixCache(); !ok || e.Stats().CachedBlocks != 0 {
		t.Fatal("reset failed on an idle engine")
	}
}

// TestCacheAccountingProperty runs random workloads with aborts, preemption and shared
// prefixes and checks, after every step: reference counts are exact and never negative, free
// plus used blocks is the capacity, the prefix cache equals what the events say it is, and
// every admitted request's cache hits equal a naive model's answer from that event-built set.
func TestCacheAccountingProperty(t *testing.T) {
	for seed := range 30 {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(uint64(seed), 7))
			cfg := Config{NumBlocks: 20 + rng.IntN(60), BlockSize: 4, MaxNumSeqs: 1 + rng.IntN(6), MaxNumBatchedTokens: 8 + rng.IntN(64), NoChunkedPrefill: rng.IntN(4) == 0}
			e, err := New(cfg)
			if err != nil {
				t.Fatal(err)
			}
			model := map[BlockHash]bool{}
			var now time.Duration
			ids := 0
			for step := 0; step < 400; step++ {
				if rng.IntN(3) == 0 {
					base := rng.IntN(4)
					p := append(prompt(base, 8+rng.IntN(24)), prompt(100+ids, rng.IntN(12))...)
					req := Request{ID: fmt.Sprint(ids), Prompt: p, MaxTokens: 1 + rng.IntN(12)}
					ids++
					// Naive model: the longest prefix of p's full blocks present in the set.
					want := 0
					var parent BlockHash
					for i := 0; i < (len(p)-1)/4; i++ {
						h := hashBlock(parent, p[4*i:4*i+4], "")
						if !model[h] {
							break
						}
						want++
						parent = h
					}
					if err := e.Add(req); err == nil && len(e.waiting) == 1 && len(e.running) == 0 {
						// Admitted first thing in the next step, before any allocation.
						r := e.Step(now)
						now = r.End
						applyModel(t, model, r.Events)
						s := e.seqs[req.ID]
						if s != nil && s.admitted && s.cachedTok != want*4 {
							t.Fatalf("request %s: %d cached tokens, naive model says %d", req.ID, s.cachedTok, want*4)
						}
					}
				}
				if rng.IntN(10) == 0 && ids > 0 {
					e.Abort(fmt.Sprint(rng.IntN(ids)))
				}
				r := e.Step(now)
				if r.End < now {
					t.Fatal("time went backwards")
				}
				now = r.End
				applyModel(t, model, r.Events)
				checkAccounting(t, e, model)
			}
		})
	}
}

func applyModel(t *testing.T, model map[BlockHash]bool, evs []KVEvent) {
	t.Helper()
	for _, ev := range evs {
		switch ev.Kind {
		case BlockStored:
			for _, h := range ev.Hashes {
				if model[h] {
					t.Fatalf("block %x stored twice", h[:4])
				}
				model[h] = true
			}
		case BlockRemoved:
			for _, h := range ev.Hashes {
				if !model[h] {
					t.Fatalf("block %x removed but not stored", h[:4])
				}
				delete(model, h)
			}
		case AllBlocksCleared:
			clear(model)
		}
	}
}

func checkAccounting(t *testing.T, e *Engine, model map[BlockHash]bool) {
	t.Helper()
	refs := make([]int, len(e.kv.blocks))
	for _, s := range e.running {
		for _, b := range s.blocks {
			refs[b.id]++
		}
	}
	for _, s := range e.held {
		for _, b := range s.blocks {
			refs[b.id]++
		}
	}
	used := 0
	for i := range e.kv.blocks {
		b := &e.kv.blocks[i]
		if b.ref < 0 || b.ref != refs[i] {
			t.Fatalf("block %d: ref %d, holders %d", i, b.ref, refs[i])
		}
		if b.ref > 0 {
			used++
			if b.free {
				t.Fatalf("block %d in use and in the free queue", i)
			}
		} else if !b.free {
			t.Fatalf("block %d unused and not in the free queue", i)
		}
	}
	if used+e.kv.numFree != len(e.kv.blocks) {
		t.Fatalf("used %d + free %d != %d", used, e.kv.numFree, len(e.kv.blocks))
	}
	n := 0
	for b := e.kv.head.next; b != &e.kv.head; b = b.next {
		n++
	}
	if n != e.kv.numFree {
		t.Fatalf("free queue holds %d, counter says %d", n, e.kv.numFree)
	}
	if len(model) != len(e.kv.cached) {
		t.Fatalf("events say %d cached blocks, cache has %d", len(model), len(e.kv.cached))
	}
	for h, b := range e.kv.cached {
		if !model[h] || b.hash != h || !b.cached {
			t.Fatalf("cached block %d disagrees with the events", b.id)
		}
	}
	for _, s := range e.waiting {
		if len(s.blocks) != 0 {
			t.Fatalf("waiting request %s holds blocks", s.req.ID)
		}
	}
}

func TestDerivedCapacity(t *testing.T) {
	cfg := Config{}.WithDefaults()
	// (80 GiB x 0.9 - 8.2e9 params x 2 bytes) / (2 x 36 x 8 x 128 x 2 bytes x 16 tokens)
	if cfg.NumBlocks != 25816 || cfg.BlockBytes() != 2359296 || cfg.MaxModelLen != 40960 {
		t.Fatalf("derived %d blocks of %d bytes, max model len %d", cfg.NumBlocks, cfg.BlockBytes(), cfg.MaxModelLen)
	}
	if small := (Config{NumBlocks: 10}).WithDefaults(); small.MaxModelLen != 160 {
		t.Fatalf("max model len %d exceeds a 160-token cache", small.MaxModelLen)
	}
	if _, err := New(Config{GPUMemoryGiB: 8}); err == nil {
		t.Fatal("a GPU too small for the weights was accepted")
	}
}

func TestTimingModel(t *testing.T) {
	d := DefaultTiming()
	fast := d
	fast.Speed = 10
	tests := []struct {
		name      string
		got, want time.Duration
	}{
		// one decode at 1000 context: 6ms + 50us + 10us + 40us
		{"single decode", d.stepTime(1, 1, 1000, 0), 6100 * time.Microsecond},
		// 256 decodes at 1000 context each: 6 + 12.8 + 2.56 + 10.24 ms
		{"256 decodes", d.stepTime(256, 256, 256_000, 0), 31600 * time.Microsecond},
		// a 1000-token cold prefill: 6 + 50 + 0.01 + 0.04 + 0.65 ms
		{"prefill 1000", d.stepTime(1000, 1, 1000, 1000*500), 56700 * time.Microsecond},
		{"speed 10", fast.stepTime(256, 256, 256_000, 0), 3160 * time.Microsecond},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if diff := tt.got - tt.want; diff < -time.Microsecond || diff > time.Microsecond {
				t.Fatalf("step time %v, want %v", tt.got, tt.want)
			}
		})
	}
}

// TestLoadSlowsDecode checks the engine's inter-token latency grows with the batch, in
// virtual time.
func TestLoadSlowsDecode(t *testing.T) {
	itl := func(batch int) time.Duration {
		e, _ := New(Config{NumBlocks: 8192})
		for i := range batch {
			e.Add(Request{ID: fmt.Sprint(i), Prompt: prompt(i, 500), MaxTokens: 50})
		}
		var now, first, last time.Duration
		for e.Busy() {
			r := e.Step(now)
			now = r.End
			for _, o := range r.Outputs {
				if o.ID == "0" && o.Index == 1 {
					first = now
				}
				if o.ID == "0" && o.Index == 49 {
					last = now
				}
			}
		}
		return (last - first) / 48
	}
	one, many := itl(1), itl(128)
	if one < 5*time.Millisecond || one > 8*time.Millisecond || many < 2*one {
		t.Fatalf("ITL alone %v, in a batch of 128 %v", one, many)
	}
}
