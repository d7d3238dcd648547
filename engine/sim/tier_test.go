package sim

import (
	"testing"
	"time"
)

// tierRun serves requests one after another in virtual time, one second apart, and records
// each one's TTFT and cached tokens, every event, and the tier occupancy after every step.
type tierRun struct {
	t      *testing.T
	e      *Engine
	now    time.Duration
	events []KVEvent
	media  map[Medium]map[BlockHash]bool // the model the events build, per medium
	n      int
	first  Output // the last served request's first output
}

func newTierRun(t *testing.T, cfg Config) *tierRun {
	e, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return &tierRun{t: t, e: e, media: map[Medium]map[BlockHash]bool{}}
}

func (r *tierRun) serve(p []uint32) (ttft time.Duration, cached int) {
	r.t.Helper()
	r.n++
	if err := r.e.Add(Request{ID: string(rune('a' + r.n)), Prompt: p, MaxTokens: 2}); err != nil {
		r.t.Fatal(err)
	}
	at := r.now
	for r.e.Busy() {
		res := r.e.Step(r.now)
		r.now = res.End
		for _, o := range res.Outputs {
			if o.Index == 0 {
				ttft, cached = r.now-at, o.CachedTokens
				r.first = o
			}
		}
		r.apply(res.Events)
		st := r.e.Stats()
		cfg := r.e.Config()
		if st.CPUBlocks > cfg.CPUBlocks || st.DiskBlocks > cfg.DiskBlocks {
			r.t.Fatalf("tiers hold %d CPU and %d disk blocks, capacities %d and %d", st.CPUBlocks, st.DiskBlocks, cfg.CPUBlocks, cfg.DiskBlocks)
		}
		if len(r.media[MediumCPU]) != st.CPUBlocks || len(r.media[MediumDisk]) != st.DiskBlocks {
			r.t.Fatalf("events say %d CPU and %d disk blocks, the engine holds %d and %d",
				len(r.media[MediumCPU]), len(r.media[MediumDisk]), st.CPUBlocks, st.DiskBlocks)
		}
	}
	r.now += time.Second
	return ttft, cached
}

// apply checks every event against the per-medium model: a block is stored on a medium
// only when absent there and removed only when present.
func (r *tierRun) apply(evs []KVEvent) {
	r.t.Helper()
	for _, ev := range evs {
		r.events = append(r.events, ev)
		m := r.media[ev.Medium]
		if m == nil {
			m = map[BlockHash]bool{}
			r.media[ev.Medium] = m
		}
		switch ev.Kind {
		case BlockStored:
			// A chain-indexing consumer (the router) drops a store whose parent it does not
			// know: with tiers this large nothing is dropped, so every parent is somewhere.
			if ev.HasParent && !r.held(ev.Parent) {
				r.t.Fatalf("%s BlockStored of %x after its parent %x left every medium", ev.Medium, ev.Hashes[0][:4], ev.Parent[:4])
			}
			if len(ev.Tokens) != len(ev.Hashes)*ev.BlockSize {
				r.t.Fatalf("%s BlockStored with %d hashes carries %d tokens", ev.Medium, len(ev.Hashes), len(ev.Tokens))
			}
			for _, h := range ev.Hashes {
				if m[h] {
					r.t.Fatalf("block %x stored twice on %s", h[:4], ev.Medium)
				}
				m[h] = true
			}
		case BlockRemoved:
			for _, h := range ev.Hashes {
				if !m[h] {
					r.t.Fatalf("block %x removed from %s where it was not stored", h[:4], ev.Medium)
				}
				delete(m, h)
			}
		}
	}
}

func (r *tierRun) held(h BlockHash) bool {
	for _, m := range r.media {
		if m[h] {
			return true
		}
	}
	return false
}

// has reports how many of hs the events left on medium.
func (r *tierRun) has(medium Medium, hs []BlockHash) int {
	n := 0
	for _, h := range hs {
		if r.media[medium][h] {
			n++
		}
	}
	return n
}

// evictA serves a 2000-token prompt A on a 200-block GPU cache, then two other 2000-token
// prompts that evict all of A from the GPU. It returns A, its cold TTFT and its block hashes.
func (r *tierRun) evictA() ([]uint32, time.Duration, []BlockHash) {
	r.t.Helper()
	a := prompt(1, 2000)
	cold, cached := r.serve(a)
	if cached != 0 {
		r.t.Fatalf("cold request had %d cached tokens", cached)
	}
	hs := hashesOf(r.e, a)
	r.serve(prompt(2, 2000))
	r.serve(prompt(3, 2000))
	if n := r.has(MediumGPU, hs); n != 0 {
		r.t.Fatalf("%d of A's blocks still on the GPU", n)
	}
	return a, cold, hs
}

func hashesOf(e *Engine, p []uint32) []BlockHash {
	s := &seq{tokens: p}
	e.ensureHashes(s, (len(p)-1)/e.cfg.BlockSize)
	return s.hashes
}

const fullHit = (2000 - 1) / 16 * 16 // tokens of the 124 full blocks a 2000-token prompt may reuse

func TestCPUTierOnboardsEvictedPrefix(t *testing.T) {
	r := newTierRun(t, Config{NumBlocks: 200, CPUBlocks: 1000})
	a, cold, hs := r.evictA()
	if n := r.has(MediumCPU, hs); n != len(hs) {
		t.Fatalf("%d of A's %d blocks published on CPU after their GPU eviction", n, len(hs))
	}
	fromCPU, cached := r.serve(a)
	if cached != fullHit {
		t.Fatalf("CPU hit reported %d cached tokens, want %d (vLLM counts connector-loaded tokens)", cached, fullHit)
	}
	if o := r.first; o.CPUTokens != fullHit || o.DiskTokens != 0 || o.RemoteTokens != 0 {
		t.Fatalf("CPU hit: output says %d CPU, %d disk, %d remote tokens; want %d from CPU", o.CPUTokens, o.DiskTokens, o.RemoteTokens, fullHit)
	}
	gpu, cached := r.serve(a)
	if cached != fullHit {
		t.Fatalf("GPU hit reported %d cached tokens, want %d", cached, fullHit)
	}
	if o := r.first; o.CPUTokens != 0 || o.DiskTokens != 0 || o.RemoteTokens != 0 {
		t.Fatalf("GPU hit: output says %d CPU, %d disk, %d remote tokens; want none", o.CPUTokens, o.DiskTokens, o.RemoteTokens)
	}
	if !(gpu < fromCPU && fromCPU < cold) {
		t.Fatalf("TTFT GPU hit %v, CPU hit %v, cold %v: want GPU < CPU < cold", gpu, fromCPU, cold)
	}
	t.Logf("TTFT of a 2000-token prompt: GPU hit %v, CPU hit %v, cold %v", gpu, fromCPU, cold)
	// 124 blocks of 2.25 MiB at 50 GB/s: 5.8 ms of loading on top of the GPU hit.
	if d := fromCPU - gpu; d < 5*time.Millisecond || d > 7*time.Millisecond {
		t.Fatalf("CPU hit costs %v more than a GPU hit, want the 5.8 ms host-to-device copy", d)
	}
	// The blocks stay on CPU (a copy) and are back on the GPU.
	if r.has(MediumCPU, hs) != len(hs) || r.has(MediumGPU, hs) != len(hs) {
		t.Fatalf("after onboarding: %d on CPU, %d on GPU, want all %d on both", r.has(MediumCPU, hs), r.has(MediumGPU, hs), len(hs))
	}
	if st := r.e.Stats(); st.CPUHitTokens != fullHit || st.DiskHitTokens != 0 || st.PrefixHits != fullHit {
		t.Fatalf("stats %+v: want %d CPU hit tokens and the GPU hit alone in PrefixHits", st, fullHit)
	}
}

func TestDiskTierOnboardsEvictedPrefix(t *testing.T) {
	cpuRun := newTierRun(t, Config{NumBlocks: 200, CPUBlocks: 1000})
	a, _, _ := cpuRun.evictA()
	fromCPU, _ := cpuRun.serve(a)

	// A host tier of 20 blocks spills almost everything to disk; A comes back from both.
	r := newTierRun(t, Config{NumBlocks: 200, CPUBlocks: 20, DiskBlocks: 1000})
	a, cold, hs := r.evictA()
	onCPU, onDisk := r.has(MediumCPU, hs), r.has(MediumDisk, hs)
	if onCPU+onDisk != len(hs) || onDisk < len(hs)-20 {
		t.Fatalf("A's %d blocks: %d on CPU, %d on disk", len(hs), onCPU, onDisk)
	}
	fromDisk, cached := r.serve(a)
	if cached != fullHit {
		t.Fatalf("disk hit reported %d cached tokens, want %d", cached, fullHit)
	}
	if !(fromCPU < fromDisk && fromDisk < cold) {
		t.Fatalf("TTFT CPU hit %v, disk hit %v, cold %v: want CPU < disk < cold", fromCPU, fromDisk, cold)
	}
	t.Logf("TTFT of a 2000-token prompt: CPU hit %v, %d blocks from disk and %d from CPU %v, cold %v", fromCPU, onDisk, onCPU, fromDisk, cold)
	if st := r.e.Stats(); st.DiskHitTokens != uint64(onDisk*16) || st.CPUHitTokens != uint64(onCPU*16) {
		t.Fatalf("stats %+v: want %d disk and %d CPU hit tokens", st, onDisk*16, onCPU*16)
	}
	if o := r.first; o.DiskTokens != onDisk*16 || o.CPUTokens != onCPU*16 || o.RemoteTokens != 0 {
		t.Fatalf("disk hit: output says %d CPU, %d disk tokens; want %d and %d", o.CPUTokens, o.DiskTokens, onCPU*16, onDisk*16)
	}
	var cpuRemoved, diskStored bool
	for _, ev := range r.events {
		cpuRemoved = cpuRemoved || ev.Kind == BlockRemoved && ev.Medium == MediumCPU
		diskStored = diskStored || ev.Kind == BlockStored && ev.Medium == MediumDisk
	}
	if !cpuRemoved || !diskStored {
		t.Fatalf("CPU evictions: BlockRemoved CPU %v, BlockStored STORAGE %v; want both", cpuRemoved, diskStored)
	}

	// Disk alone, no host tier: GPU evictions go straight to disk.
	only := newTierRun(t, Config{NumBlocks: 200, DiskBlocks: 1000})
	a, _, hs = only.evictA()
	if n := only.has(MediumDisk, hs); n != len(hs) {
		t.Fatalf("%d of %d blocks on disk", n, len(hs))
	}
	if _, cached := only.serve(a); cached != fullHit {
		t.Fatalf("disk-only hit reported %d cached tokens, want %d", cached, fullHit)
	}
}

func TestTierSkipsOnboardSlowerThanRecompute(t *testing.T) {
	// A disk at 10 MB/s: a 2.25 MiB block takes 236 ms to read, recomputing it about 1 ms.
	r := newTierRun(t, Config{NumBlocks: 200, DiskBlocks: 1000, Tiers: TierTiming{DiskRead: 10e6}})
	a, cold, _ := r.evictA()
	again, cached := r.serve(a)
	if cached != 0 {
		t.Fatalf("onboarded %d tokens from a disk slower than recomputing", cached)
	}
	if again > cold+cold/10 {
		t.Fatalf("recompute TTFT %v, cold %v: the slow disk was waited for", again, cold)
	}
}

func TestOffloadIsAsynchronousAndBandwidthLimited(t *testing.T) {
	// Offloading at 0.1 GB/s: the 178 blocks A, then B, lose to the GPU take 4.2 s to reach
	// the host tier, queued on the link. A second after the last eviction only part of A's
	// prefix is findable, and the steps that evicted did not wait for the copies.
	cfg := Config{NumBlocks: 200, CPUBlocks: 1000, Tiers: TierTiming{DeviceToHost: 0.1e9}}
	fast := newTierRun(t, Config{NumBlocks: 200})
	fast.evictA()
	r := newTierRun(t, cfg)
	a, _, hs := r.evictA()
	if r.now != fast.now {
		t.Fatalf("offloading delayed the engine: %v with tiers, %v without", r.now, fast.now)
	}
	want := cfg.WithDefaults().transfer(len(hs)+54, 0.1e9)
	if link := r.e.cpu.linkFree; link < want || link <= r.now {
		t.Fatalf("host link busy until %v (now %v), want at least %v of copies still running", link, r.now, want)
	}
	// Copies go parent first, so the prefix whose copies completed is found, the rest not.
	if _, cached := r.serve(a); cached == 0 || cached >= fullHit {
		t.Fatalf("found %d tokens on CPU while the offload was still running, want part of %d", cached, fullHit)
	}
}

func TestTiersOffByDefault(t *testing.T) {
	r := newTierRun(t, Config{NumBlocks: 200})
	a, _, _ := r.evictA()
	if _, cached := r.serve(a); cached != 0 {
		t.Fatalf("no tiers, yet %d cached tokens after the GPU eviction", cached)
	}
	for _, ev := range r.events {
		if ev.Medium != MediumGPU && ev.Kind != AllBlocksCleared {
			t.Fatalf("event on %v without tiers", ev.Medium)
		}
	}
	if _, err := New(Config{CPUBlocks: -1}); err == nil {
		t.Fatal("negative CPU tier accepted")
	}
	if _, err := New(Config{DiskCacheGiB: 1e-6}); err == nil {
		t.Fatal("a disk tier of less than one block accepted (it would silently be off)")
	}
	if c := (Config{CPUCacheGiB: 4.5}).WithDefaults(); c.CPUBlocks != 2048 {
		t.Fatalf("4.5 GiB of 2.25 MiB blocks: %d, want 2048", c.CPUBlocks)
	}
}
