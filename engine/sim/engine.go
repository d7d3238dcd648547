// Package sim is a simulated vLLM engine: a deterministic engine core (paged KV cache with
// prefix caching, continuous batching, a step-time model) and a server that runs it in real time
// behind vLLM's HTTP API, KV events and metrics.
// In a request's path it is the engine at the end of R7; in a KV event's path it publishes
// (E1).
package sim

import (
	"errors"
	"fmt"
	"slices"
	"time"
)

// Request is one sequence for the engine to generate.
type Request struct {
	ID        string
	Prompt    []uint32
	MaxTokens int      // output tokens at most; at least 1
	EOS       int      // when > 0, the request finishes with FinishStop after this many output tokens
	Output    []uint32 // token ids to emit, in order; past its end the engine makes ids up
	LoRAName  string   // adapter name, part of every block hash ("" for the base model)
	CacheSalt string   // mixed into the first block's hash, as vLLM's cache_salt

	// RemoteBlocks is how many leading full prompt blocks already arrived from a prefill
	// engine (P/D disaggregation): they are allocated, counted as cached and published as
	// BlockStored on admission instead of being prefilled.
	RemoteBlocks int
	// Hold keeps the request's blocks after it finishes, until Release or Abort: the prefill
	// side of P/D keeps them for the decode engine to pull.
	Hold bool
}

// FinishReason says why a request stopped.
type FinishReason uint8

const (
	NotFinished  FinishReason = iota
	FinishStop                // reached its EOS point
	FinishLength              // reached MaxTokens
)

func (f FinishReason) String() string {
	switch f {
	case FinishStop:
		return "stop"
	case FinishLength:
		return "length"
	}
	return ""
}

// Output is one token produced by a step for one request.
type Output struct {
	ID     string
	Index  int    // position among the request's output tokens, from 0
	Token  uint32 // the token id
	Finish FinishReason
	// PromptTokens and CachedTokens (prompt tokens that needed no prefill: local prefix-cache
	// hits, blocks onboarded from the host or disk tier, and remote blocks, as vLLM counts
	// num_cached_tokens) are set on every output.
	PromptTokens, CachedTokens int
	// CPUTokens, DiskTokens and RemoteTokens are the parts of CachedTokens onboarded from the
	// host tier, from the disk tier, and received from another engine (RemoteBlocks); the
	// rest were GPU prefix-cache hits.
	CPUTokens, DiskTokens, RemoteTokens int
	// BlockIDs are the held full prompt blocks of a finished Hold request.
	BlockIDs []int
	// Admitted is when the request was first scheduled (the Start of that step): its queueing
	// delay is Admitted minus its arrival.
	Admitted time.Duration
}

// StepResult is what one engine step did. Everything in it belongs to the caller.
type StepResult struct {
	Start, End    time.Duration // the step runs from Start to End; its outputs appear at End
	Outputs       []Output
	Events        []KVEvent // prefix cache changes made by the step, in order
	PrefillTokens int
	DecodeTokens  int
	Preempted     int // requests preempted (to recompute later) to free blocks
	// Onboarded is how many blocks admitted requests loaded from the host or disk tier, and
	// Onboard how long that took; the load is part of the step (End includes it).
	Onboarded int
	Onboard   time.Duration
}

// Stats is the engine's state between steps.
type Stats struct {
	Running, Waiting, Held int
	NumBlocks, FreeBlocks  int     // FreeBlocks includes cached blocks nobody uses
	CachedBlocks           int     // blocks in the prefix cache, used or not
	KVUsage                float64 // 1 - FreeBlocks/NumBlocks, as vLLM's kv_cache_usage_perc
	PrefixQueries          uint64  // prompt tokens looked up in the prefix cache
	PrefixHits             uint64  // of those, tokens found
	Preemptions            uint64
	PromptTokens           uint64 // prompt tokens of admitted requests
	GenerationTokens       uint64
	Steps                  uint64
	CPUBlocks, DiskBlocks  int    // blocks held in the host and disk tiers
	CPUHitTokens           uint64 // prompt tokens onboarded from the host tier
	DiskHitTokens          uint64 // prompt tokens onboarded from the disk tier
	LoRALoads              uint64 // adapters moved into a GPU slot
	// RunningLoRAs and WaitingLoRAs are the adapters of the running and waiting requests,
	// sorted (vLLM's lora_requests_info labels).
	RunningLoRAs, WaitingLoRAs []string
}

// ErrDuplicate is returned by Add for an ID the engine already has.
var ErrDuplicate = errors.New("sim: duplicate request id")

// seq is a request inside the engine.
type seq struct {
	req        Request
	tokens     []uint32 // prompt, then output tokens
	numPrompt  int
	computed   int // tokens whose KV is in blocks
	blocks     []*block
	hashes     []BlockHash // of the full blocks of tokens, computed lazily
	stored     int         // leading blocks known to be in the prefix cache
	admitted   bool
	cachedTok  int
	tierTok    [3]int // of cachedTok: onboarded from the host tier, the disk tier, received remotely
	admittedAt time.Duration
	remote     int    // remote blocks still to be installed on the next admission
	seed       uint64 // for made-up output tokens
}

// Engine is a simulated vLLM engine core: a paged KV cache with prefix caching, and a
// continuous-batching scheduler with chunked prefill and preemption, behind a step-time model.
//
// It is a deterministic state machine with no goroutines, clocks or I/O: the caller adds
// requests and calls Step with the current time (real or virtual) and gets back what the step
// produced and when. An Engine is not safe for concurrent use; its caller serialises calls.
type Engine struct {
	cfg     Config
	kv      *kvCache
	seqs    map[string]*seq
	waiting []*seq
	running []*seq
	held    map[string]*seq
	stats   Stats

	sched []scheduled // reused between steps
	buf   []byte      // reused hash input
	cpu   *tier       // host tier, nil when off
	disk  *tier       // disk tier, nil when off
	load  time.Duration
	nload int

	loraSlots []string // adapters in GPU slots, least recently used first
	sawLoRA   bool     // some request named an adapter (else Stats skips the adapter lists)
}

type scheduled struct {
	s   *seq
	new int
}

// New builds an engine; cfg's zero fields take their defaults.
func New(cfg Config) (*Engine, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	e := &Engine{
		cfg:  cfg,
		kv:   newKVCache(cfg.NumBlocks, cfg.BlockSize),
		seqs: make(map[string]*seq),
		held: make(map[string]*seq),
	}
	if cfg.DiskBlocks > 0 {
		e.disk = newTier(MediumDisk, cfg.DiskBlocks, cfg.Tiers.DiskWrite)
	}
	if cfg.CPUBlocks > 0 {
		e.cpu = newTier(MediumCPU, cfg.CPUBlocks, cfg.Tiers.DeviceToHost)
		e.cpu.next = e.disk
		e.kv.lower = e.cpu
	} else if e.disk != nil {
		e.kv.lower = e.disk
	}
	e.kv.blockBytes = cfg.BlockBytes()
	if e.kv.lower != nil {
		e.kv.meta = make([]tierEntry, cfg.NumBlocks)
	}
	return e, nil
}

// Config is the engine's effective configuration.
func (e *Engine) Config() Config { return e.cfg }

// MaxModelLen is the longest prompt plus output one request may have (Config.MaxModelLen).
func (e *Engine) MaxModelLen() int { return e.cfg.MaxModelLen }

// Add queues a request at the back of the waiting queue. The engine keeps req's slices;
// the caller must not change them afterwards.
func (e *Engine) Add(req Request) error {
	e.sawLoRA = e.sawLoRA || req.LoRAName != ""
	switch {
	case req.ID == "":
		return errors.New("sim: empty request id")
	case len(req.Prompt) == 0:
		return errors.New("sim: empty prompt")
	case req.MaxTokens < 1:
		return fmt.Errorf("sim: max tokens %d must be at least 1", req.MaxTokens)
	case len(req.Prompt)+req.MaxTokens > e.MaxModelLen():
		return fmt.Errorf("sim: %d prompt tokens + %d output tokens exceed the model length %d", len(req.Prompt), req.MaxTokens, e.MaxModelLen())
	case e.cfg.NoChunkedPrefill && len(req.Prompt)+req.MaxTokens > e.cfg.MaxNumBatchedTokens:
		// Without chunking a preempted request recomputes prompt and output in one step.
		return fmt.Errorf("sim: without chunked prefill a request is limited to max_num_batched_tokens=%d tokens, got %d", e.cfg.MaxNumBatchedTokens, len(req.Prompt)+req.MaxTokens)
	}
	if _, dup := e.seqs[req.ID]; dup {
		return fmt.Errorf("%w %q", ErrDuplicate, req.ID)
	}
	if _, dup := e.held[req.ID]; dup {
		return fmt.Errorf("%w %q", ErrDuplicate, req.ID)
	}
	s := &seq{req: req, numPrompt: len(req.Prompt)}
	s.tokens = make([]uint32, len(req.Prompt), len(req.Prompt)+min(req.MaxTokens, 4096))
	copy(s.tokens, req.Prompt)
	s.seed = 0x9e3779b97f4a7c15
	for _, t := range req.Prompt[:min(len(req.Prompt), 64)] {
		s.seed = (s.seed ^ uint64(t)) * 0xbf58476d1ce4e5b9
	}
	s.remote = min(max(req.RemoteBlocks, 0), (len(req.Prompt)-1)/e.cfg.BlockSize)
	e.seqs[req.ID] = s
	e.waiting = append(e.waiting, s)
	return nil
}

// Abort drops a waiting, running or held request and frees its blocks. It reports whether
// the request was there.
func (e *Engine) Abort(id string) bool {
	if s, ok := e.held[id]; ok {
		delete(e.held, id)
		e.kv.release(s.blocks)
		return true
	}
	s, ok := e.seqs[id]
	if !ok {
		return false
	}
	delete(e.seqs, id)
	if i := slices.Index(e.waiting, s); i >= 0 {
		e.waiting = slices.Delete(e.waiting, i, i+1)
	}
	if i := slices.Index(e.running, s); i >= 0 {
		e.running = slices.Delete(e.running, i, i+1)
	}
	e.kv.release(s.blocks)
	s.blocks = nil
	return true
}

// Release frees the blocks a finished Hold request kept; it reports whether there were any.
func (e *Engine) Release(id string) bool {
	s, ok := e.held[id]
	if !ok {
		return false
	}
	delete(e.held, id)
	e.kv.release(s.blocks)
	return true
}

// Held returns the full prompt blocks a finished Hold request keeps, or nil.
func (e *Engine) Held(id string) []int {
	s, ok := e.held[id]
	if !ok {
		return nil
	}
	return heldIDs(s, e.cfg.BlockSize)
}

func heldIDs(s *seq, bs int) []int {
	n := min(s.numPrompt/bs, len(s.blocks))
	ids := make([]int, n)
	for i := range n {
		ids[i] = s.blocks[i].id
	}
	return ids
}

// Busy reports whether a Step would do work.
func (e *Engine) Busy() bool { return len(e.running)+len(e.waiting) > 0 }

// Stats returns counters and the current occupancy.
func (e *Engine) Stats() Stats {
	st := e.stats
	st.Running, st.Waiting, st.Held = len(e.running), len(e.waiting), len(e.held)
	st.NumBlocks, st.FreeBlocks = len(e.kv.blocks), e.kv.numFree
	st.CachedBlocks = len(e.kv.cached)
	st.KVUsage = 1 - float64(st.FreeBlocks)/float64(st.NumBlocks)
	if e.cpu != nil {
		st.CPUBlocks = len(e.cpu.entries)
	}
	if e.disk != nil {
		st.DiskBlocks = len(e.disk.entries)
	}
	e.loraStats(&st)
	return st
}

// ResetPrefixCache drops every cached block, as vLLM's /reset_prefix_cache, and returns the
// AllBlocksCleared event. It does nothing and returns false while any block is in use.
func (e *Engine) ResetPrefixCache() ([]KVEvent, bool) {
	if !e.kv.clear() {
		return nil, false
	}
	return e.kv.drain(), true
}

// Step runs one engine iteration starting at now: it schedules running requests first
// (decodes and unfinished prefill chunks), preempting the newest running request when blocks
// run out, then admits waiting requests in arrival order while the token budget, the sequence
// limit and free blocks allow; it then advances every scheduled request and samples a token
// for each that has computed all its tokens. The step's modelled duration gives End; a driver
// delivers the outputs at End and calls Step again with a time no earlier than End.
// When the engine is idle Step returns End == now and nothing else.
func (e *Engine) Step(now time.Duration) StepResult {
	res := StepResult{Start: now, End: now}
	if !e.Busy() {
		res.Events = e.kv.drain()
		return res
	}
	// vLLM's scheduler phases: running sequences first (preempting from the back when the
	// cache is full), then waiting ones while budget and blocks last, then one forward pass.
	e.kv.now = now
	budget := e.cfg.MaxNumBatchedTokens
	sched, budget, preempted := e.scheduleRunning(e.sched[:0], budget, &res)
	if !preempted {
		sched = e.admitWaiting(sched, budget, now)
	}
	res.Onboarded, res.Onboard = e.nload, e.load
	e.nload, e.load = 0, 0
	res.End = now + e.stepTime(sched, &res) + res.Onboard
	e.advance(sched, &res)
	e.stats.Steps++
	e.stats.Preemptions += uint64(res.Preempted)
	e.sched = sched[:0]
	res.Events = e.kv.drain()
	return res
}

// scheduleRunning gives each running sequence its next chunk within budget, preempting the
// newest running sequences while the cache cannot hold it. It returns the schedule, the budget
// left, and whether anything was preempted (then nothing waiting is admitted this step).
func (e *Engine) scheduleRunning(sched []scheduled, budget int, res *StepResult) ([]scheduled, int, bool) {
	preempted := false
	for i := 0; i < len(e.running) && budget > 0; i++ {
		s := e.running[i]
		n := min(len(s.tokens)-s.computed, budget)
		if n <= 0 {
			continue
		}
		if e.cfg.NoChunkedPrefill && n < len(s.tokens)-s.computed {
			continue
		}
		ok := true
		for !e.allocate(s, n) {
			victim := e.running[len(e.running)-1]
			e.running = e.running[:len(e.running)-1]
			e.preempt(victim)
			res.Preempted++
			preempted = true
			if victim == s {
				ok = false
				break
			}
		}
		if !ok {
			break
		}
		sched = append(sched, scheduled{s, n})
		budget -= n
	}
	return sched, budget, preempted
}

// admitWaiting admits waiting sequences in order while there is budget, a free running slot
// and room in the cache, reusing their cached prefix (and remotely prefilled blocks).
func (e *Engine) admitWaiting(sched []scheduled, budget int, now time.Duration) []scheduled {
	bs := e.cfg.BlockSize
	for i := 0; i < len(e.waiting) && len(e.running) < e.cfg.MaxNumSeqs && budget > 0; {
		s := e.waiting[i]
		if !e.loraFits(s) { // vLLM skips it: its adapter would exceed max_loras in this batch
			i++
			continue
		}
		var hits []*block
		if s.computed == 0 {
			e.ensureHashes(s, (len(s.tokens)-1)/bs)
			hits = e.kv.match(s.hashes[:(len(s.tokens)-1)/bs])
		}
		var onb onboard
		if s.computed == 0 && e.kv.lower != nil {
			// Blocks this engine holds on its own lower tiers load from there, also when the
			// rest of a remote prefix arrives from another engine.
			onb = e.planOnboard(s, len(hits), now)
		}
		start := (len(hits) + onb.blocks) * bs
		remote := max(s.remote-len(hits)-onb.blocks, 0)
		n := len(s.tokens) - start - remote*bs
		if n > budget {
			if e.cfg.NoChunkedPrefill {
				break
			}
			n = budget
		}
		need := blocksFor(start+remote*bs+n, bs) - len(hits)
		if need > e.kv.freeAfterTouch(hits) {
			break
		}
		if i == 0 {
			e.waiting = e.waiting[1:]
		} else {
			e.waiting = slices.Delete(e.waiting, i, i+1)
		}
		e.activateLoRA(s)
		e.kv.touch(hits)
		s.blocks = append(s.blocks[:0], hits...)
		s.stored = len(hits)
		s.computed = len(hits) * bs
		if onb.blocks > 0 {
			// Loaded into fresh GPU blocks, which enter the GPU prefix cache as computed ones.
			s.blocks = e.kv.allocate(s.blocks, onb.blocks)
			s.computed = start
			e.store(s)
			e.load += onb.time
			e.nload += onb.blocks
			e.stats.CPUHitTokens += uint64(onb.cpu * bs)
			e.stats.DiskHitTokens += uint64(onb.disk * bs)
		}
		if !s.admitted {
			s.tierTok = [3]int{onb.cpu * bs, onb.disk * bs, remote * bs}
		}
		if remote > 0 {
			s.blocks = e.kv.allocate(s.blocks, remote)
			s.computed += remote * bs
			e.store(s)
			s.remote = 0
		}
		if !s.admitted {
			s.admitted = true
			s.admittedAt = now
			s.cachedTok = s.computed
			e.stats.PrefixQueries += uint64(len(s.tokens))
			e.stats.PrefixHits += uint64(len(hits) * bs)
			e.stats.PromptTokens += uint64(s.numPrompt)
		}
		if !e.allocate(s, n) { // cannot happen: need was checked above; undo and wait
			e.preempt(s)
			break
		}
		e.running = append(e.running, s)
		sched = append(sched, scheduled{s, n})
		budget -= n
	}
	return sched
}

// stepTime counts the step's prefill and decode tokens into res and returns how long the
// forward pass over sched takes in the timing model.
func (e *Engine) stepTime(sched []scheduled, res *StepResult) time.Duration {
	var context int
	var pairs float64
	for _, sc := range sched {
		s := sc.s
		if s.computed >= s.numPrompt && sc.new == 1 {
			res.DecodeTokens++
		} else {
			res.PrefillTokens += sc.new
			pairs += float64(sc.new) * (float64(s.computed) + float64(sc.new)/2)
		}
		context += s.computed + sc.new
	}
	return e.cfg.Timing.stepTime(res.PrefillTokens+res.DecodeTokens, len(sched), context, pairs)
}

// advance applies the forward pass: every sequence whose prompt is now computed emits one
// token, and finished sequences release (or hold) their blocks and leave the running set.
func (e *Engine) advance(sched []scheduled, res *StepResult) {
	bs := e.cfg.BlockSize
	finished := false
	res.Outputs = make([]Output, 0, len(sched))
	for _, sc := range sched {
		s := sc.s
		s.computed += sc.new
		if s.computed < len(s.tokens) {
			continue
		}
		idx := len(s.tokens) - s.numPrompt
		tok := e.outputToken(s, idx)
		s.tokens = append(s.tokens, tok)
		e.stats.GenerationTokens++
		out := Output{ID: s.req.ID, Index: idx, Token: tok, PromptTokens: s.numPrompt, CachedTokens: s.cachedTok, Admitted: s.admittedAt,
			CPUTokens: s.tierTok[0], DiskTokens: s.tierTok[1], RemoteTokens: s.tierTok[2]}
		switch n := idx + 1; {
		case s.req.EOS > 0 && n >= s.req.EOS:
			out.Finish = FinishStop
		case n >= s.req.MaxTokens:
			out.Finish = FinishLength
		}
		if out.Finish != NotFinished {
			finished = true
			delete(e.seqs, s.req.ID)
			if s.req.Hold {
				e.held[s.req.ID] = s
				out.BlockIDs = heldIDs(s, bs)
			} else {
				e.kv.release(s.blocks)
				s.blocks = nil
			}
		}
		res.Outputs = append(res.Outputs, out)
	}
	if finished {
		e.running = slices.DeleteFunc(e.running, func(s *seq) bool { _, ok := e.seqs[s.req.ID]; return !ok })
	}
}

// allocate gives s the blocks for n more tokens and caches the blocks that become full.
func (e *Engine) allocate(s *seq, n int) bool {
	need := blocksFor(s.computed+n, e.cfg.BlockSize) - len(s.blocks)
	if need > e.kv.numFree {
		return false
	}
	if need > 0 {
		s.blocks = e.kv.allocate(s.blocks, need)
	}
	if full := (s.computed + n) / e.cfg.BlockSize; full > s.stored {
		e.ensureHashes(s, full)
		s.storeUpTo(e, full)
	}
	return true
}

// store caches every full block s holds.
func (e *Engine) store(s *seq) {
	full := min(s.computed/e.cfg.BlockSize, len(s.blocks))
	e.ensureHashes(s, full)
	s.storeUpTo(e, full)
}

func (s *seq) storeUpTo(e *Engine, full int) {
	bs := e.cfg.BlockSize
	var parent BlockHash
	if s.stored > 0 {
		parent = s.hashes[s.stored-1]
	}
	e.kv.store(s.blocks[s.stored:full], s.hashes[s.stored:full], s.tokens[s.stored*bs:full*bs], parent, s.stored > 0, s.req.LoRAName)
	s.stored = full
}

// preempt frees a running request's blocks and puts it at the front of the waiting queue to
// be recomputed (its output so far becomes part of what it prefills).
func (e *Engine) preempt(s *seq) {
	e.kv.release(s.blocks)
	s.blocks = s.blocks[:0]
	s.computed, s.stored = 0, 0
	e.waiting = slices.Insert(e.waiting, 0, s)
}

// ensureHashes computes the hashes of the first n full blocks of s.
func (e *Engine) ensureHashes(s *seq, n int) {
	bs := e.cfg.BlockSize
	for i := len(s.hashes); i < n; i++ {
		var parent BlockHash
		extra := s.req.LoRAName
		if i > 0 {
			parent = s.hashes[i-1]
		} else if s.req.CacheSalt != "" {
			extra += "\x00" + s.req.CacheSalt
		}
		s.hashes = append(s.hashes, hashBlockBuf(&e.buf, parent, s.tokens[i*bs:(i+1)*bs], extra))
	}
}

// outputToken is the idx-th output token: the request's own, or one made up from the prompt.
func (e *Engine) outputToken(s *seq, idx int) uint32 {
	if idx < len(s.req.Output) {
		return s.req.Output[idx]
	}
	return uint32(splitmix(s.seed+uint64(idx))%30000) + 1000
}

func splitmix(x uint64) uint64 {
	x += 0x9e3779b97f4a7c15
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9
	x = (x ^ (x >> 27)) * 0x94d049bb133111eb
	return x ^ (x >> 31)
}

func blocksFor(tokens, bs int) int { return (tokens + bs - 1) / bs }

// onboard is what admitting a request loads from the lower tiers: blocks (cpu from the host
// tier, disk from the disk tier) and the time the transfers take.
type onboard struct {
	blocks, cpu, disk int
	time              time.Duration
}

// planOnboard finds how many of s's full prompt blocks after the first from (its GPU hits)
// continue in the host or disk tier, and keeps the longest run whose load is faster than
// prefilling it: a host block costs a host-to-device copy, a disk block a disk read and that
// copy.
func (e *Engine) planOnboard(s *seq, from int, now time.Duration) onboard {
	bs := e.cfg.BlockSize
	h2d := e.cfg.transfer(1, e.cfg.Tiers.HostToDevice)
	fromDisk := e.cfg.transfer(1, e.cfg.Tiers.DiskRead) + h2d
	var best, cur onboard
	for i := from; i < (len(s.tokens)-1)/bs; i++ {
		found := false
		for t := e.kv.lower; t != nil; t = t.next {
			if _, ok := t.lookup(s.hashes[i], now); ok {
				if t.medium == MediumCPU {
					cur.cpu++
					cur.time += h2d
				} else {
					cur.disk++
					cur.time += fromDisk
				}
				found = true
				break
			}
		}
		if !found {
			break
		}
		cur.blocks++
		if cur.time < e.recomputeTime(from*bs, cur.blocks*bs) {
			best = cur
		}
	}
	return best
}

// recomputeTime is what prefilling n tokens after ctx cached ones adds to a step in the
// timing model.
func (e *Engine) recomputeTime(ctx, n int) time.Duration {
	t := e.cfg.Timing
	speed := t.Speed
	if speed <= 0 {
		speed = 1
	}
	ns := float64(t.PerToken)*float64(n) + t.PerAttnPair*float64(n)*(float64(ctx)+float64(n)/2)
	return time.Duration(ns / speed)
}
