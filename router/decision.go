package router

import (
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/kvgate/kvgate/kvindex"
	"github.com/kvgate/kvgate/openai"
)

// Decision is one routing decision. The router has added the request's load to Endpoint;
// the caller must call Done exactly once when the request ends (more calls are ignored), and
// FirstToken when the first token arrives. All methods are safe from any goroutine.
type Decision struct {
	Endpoint  Endpoint   // the target
	Fallbacks []Endpoint // ordered alternatives, best first
	Prefill   *Endpoint  // disaggregated prefill endpoint; nil when aggregated
	Policy    string
	Model     string
	Stream    bool
	// UsageForced is true when the router turned stream_options.include_usage on for
	// accounting although the client did not ask: a front door may drop the final usage-only
	// chunk before the client sees it.
	UsageForced   bool
	PromptTokens  int // tokens of the rendered prompt
	RequestBlocks int // full prompt blocks
	CachedBlocks  int // leading blocks the router saw cached on the target
	// CachedTiers splits CachedBlocks by the tier holding them (kvindex.Tier order).
	CachedTiers [kvindex.NumTiers]int
	// QueueWait is how long the request waited in the admission queue (zero: not queued).
	QueueWait time.Duration
	// Pull, when not nil, tells the target to fetch the prompt's first Pull.Blocks blocks
	// from another endpoint's cache instead of prefilling them (Config.P2P); the front door
	// turns it into the engine's form (kv_transfer_params, x-kv-cache-source-host-port).
	Pull *Pull
	Cost float64
	// Body is the body to forward: the client's bytes, or rewritten (UsageForced).
	Body    []byte
	Elapsed time.Duration // time spent routing
	// AggregatedReason says why the request was not disaggregated (a Reason constant); "" when
	// Prefill is set.
	AggregatedReason string

	r            *Router
	mu           sync.Mutex
	cur          *epState // where the decode load sits (and the prefill load when pre is nil)
	pre          *epState // the prefill endpoint holding the prefill load when disaggregated
	prefillLeft  int64    // prefill tokens still held on pre, else cur
	decodeBlocks int64
	served       bool // a served report was taken
	done         bool
	adapter      *adapterWait // the LoRA adapter load the request waits for, if any
	// when Route returned it and when its first token came (streamed requests' latency)
	routedAt, firstAt time.Time
	// approxOn and approxHashes: the prompt's blocks approximate mode recorded on approxOn
	// (an endpoint without KV events), checked against the engine's cached_tokens at Done.
	approxOn     *epState
	approxHashes *[]kvindex.BlockHash // from Router.hashBufs, returned there by Done
}

// Header returns the headers to set on the upstream request: HeaderDestination (target, then
// fallbacks, comma-separated), HeaderEndpoint, HeaderCachedBlocks, for disaggregation
// HeaderPrefiller and HeaderPrefillEndpoint, and for a P2P pull HeaderKVCacheSource.
func (d *Decision) Header() http.Header {
	h := http.Header{}
	addrs := make([]string, 0, 1+len(d.Fallbacks))
	addrs = append(addrs, d.Endpoint.Address)
	for _, f := range d.Fallbacks {
		addrs = append(addrs, f.Address)
	}
	h.Set(HeaderDestination, strings.Join(addrs, ","))
	h.Set(HeaderEndpoint, d.Endpoint.Address)
	h.Set(HeaderCachedBlocks, strconv.Itoa(d.CachedBlocks))
	if d.Prefill != nil {
		h.Set(HeaderPrefiller, d.Prefill.Address)
		h.Set(HeaderPrefillEndpoint, d.Prefill.Address)
	}
	if d.Pull != nil {
		h.Set(HeaderKVCacheSource, d.Pull.From.Address)
	}
	return h
}

// FirstToken ends the request's in-flight prefill load. Idempotent.
func (d *Decision) FirstToken() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.done {
		d.observeFirstToken()
	}
	if on := d.prefillOn(); on != nil && d.prefillLeft != 0 {
		on.prefillTokens.Add(-d.prefillLeft)
		d.prefillLeft = 0
	}
}

// NeedsUsage reports that the request's usage, read from its response, corrects the
// router's state and not only its metrics: approximate mode checks what it recorded for the
// prompt against the engine's cached_tokens. A front door that does not read the response
// body must read it for such a request. Call it before Done.
func (d *Decision) NeedsUsage() bool { return d.approxOn != nil }

// Served tells the router which endpoint (ip:port) actually served the request, when the
// proxy fell back to another: the load moves there, and the candidates tried before it (the
// target, then the fallbacks in order) are taken out of rotation for a while. Only the
// request's own candidates count: an address that is not among them is ignored (and
// counted), so one report can never take out more than that request's own candidates. Only
// the first report of a decision is used; later ones are ignored.
func (d *Decision) Served(address string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.served || address == "" {
		return
	}
	d.served = true
	// The proxy tries the target, then the fallbacks in order: at is the report's place there.
	// A report naming none of them is counted even when the load was already released (a
	// response slower than --response-timeout): a spoof is one whenever it arrives.
	at := 0
	if address != d.Endpoint.Address {
		i := slices.IndexFunc(d.Fallbacks, func(e Endpoint) bool { return e.Address == address })
		if i < 0 {
			d.r.m.servedUnknown.Inc()
			d.r.log.Warn("ignoring a served report naming an endpoint that was not a candidate",
				"served", address, "target", d.Endpoint.Address)
			return
		}
		at = i + 1
	}
	if d.done || d.cur == nil || address == d.cur.ep.Address {
		return
	}
	if at > 0 { // the target and the fallbacks before the one that served failed
		d.r.markDown(d.Endpoint.Address, errFallback)
		for _, e := range d.Fallbacks[:at-1] {
			d.r.markDown(e.Address, errFallback)
		}
	}
	moving := d.prefillLeft // the prefill moves with the target unless a prefill endpoint holds it
	if d.pre != nil {
		moving = 0
	}
	d.cur.addLoad(-moving, -d.decodeBlocks, -1)
	d.cur = nil
	for _, s := range d.r.states() {
		if s.ep.Address == address {
			d.cur = s
			s.addLoad(moving, d.decodeBlocks, 1)
			return
		}
	}
	// The candidate left the endpoint set meanwhile: nothing holds the load any more.
	if d.pre == nil {
		d.prefillLeft = 0
	}
}

// prefillOn is the endpoint holding the prefill load; d.mu must be held.
func (d *Decision) prefillOn() *epState {
	if d.pre != nil {
		return d.pre
	}
	return d.cur
}

// Done releases all of the request's load, once: later calls do nothing. usage, when the
// response carried it, feeds the hit-rate metrics; an err that is a connection failure takes
// the endpoint out of rotation for a while.
func (d *Decision) Done(usage *openai.Usage, err error) {
	d.mu.Lock()
	if d.done {
		d.mu.Unlock()
		return
	}
	d.done = true
	cur := d.cur
	if d.Stream && usage != nil {
		observeITL(cur, d.r.cfg.Now(), d.firstAt, usage.CompletionTokens, err)
	}
	if on := d.prefillOn(); on != nil {
		on.prefillTokens.Add(-d.prefillLeft)
	}
	if cur != nil {
		cur.addLoad(0, -d.decodeBlocks, -1)
	}
	d.prefillLeft, d.cur, d.pre = 0, nil, nil
	d.mu.Unlock()
	if usage != nil {
		if cur != nil {
			cur.pool.outputTokens.Add(uint64(max(usage.CompletionTokens, 0)))
		}
		if usage.PromptTokensDetails != nil && cur != nil && cur == d.approxOn {
			d.r.correctApprox(cur, *d.approxHashes, d.CachedBlocks, usage.CachedTokens())
		}
		d.r.m.reportedPrompt.Add(float64(usage.PromptTokens))
		d.r.m.reportedCached.Add(float64(usage.CachedTokens()))
	}
	if d.approxHashes != nil {
		d.r.hashBufs.Put(d.approxHashes)
		d.approxOn, d.approxHashes = nil, nil
	}
	if cur != nil && isConnError(err) {
		d.r.markDown(cur.ep.Address, err)
	}
	d.r.Dispatch() // the load just released may make room for a queued request
}

type fallbackError struct{}

func (fallbackError) Error() string { return "the proxy fell back to another endpoint" }

var errFallback error = fallbackError{}

// correctApprox checks approximate mode against what the engine reported: when it found
// fewer prompt tokens cached than the predicted blocks (it restarted, or evicted them), what
// was remembered for s from the first uncached block on is dropped (the prompt's blocks and
// any other prompt's below them), then the prompt is recorded again: the engine holds it
// now that it has computed it. One block short is not a miss: an engine that holds a whole
// prompt recomputes its last token (vLLM), which costs the last block's credit when the
// prompt ends on a block boundary.
func (r *Router) correctApprox(s *epState, hashes []kvindex.BlockHash, predicted, cachedTokens int) {
	held := cachedTokens / s.bs()
	if held+1 >= predicted || len(hashes) == 0 {
		return
	}
	dropped := r.approx.Forget(s.id, hashes, held)
	r.approx.Record(s.id, hashes, r.cfg.Now())
	r.m.approxCorrections.WithLabelValues(CorrectionCachedTokens).Inc()
	r.log.Debug("approximate cache corrected from the engine's cached_tokens", "endpoint", s.ep.Name,
		"predicted_blocks", predicted, "engine_blocks", held, "dropped_blocks", dropped)
}
