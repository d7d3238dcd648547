package router

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"time"

	"github.com/zeebo/xxh3"
	"go.opentelemetry.io/otel/trace"

	"github.com/kvgate/kvgate/anthropic"
	"github.com/kvgate/kvgate/kvindex"
	"github.com/kvgate/kvgate/openai"
	"github.com/kvgate/kvgate/tokenizer"
)

// Request is one request as the proxy hands it over.
type Request struct {
	Path    string      // "/v1/chat/completions", "/v1/completions", PathResponses, PathEmbeddings, "/v1/messages", or any other /v1/ path (passed through)
	Body    []byte      // the client's body
	Headers http.Header // may be nil
	Subset  []string    // proxy's subset hint: only these ip:port may be picked (nil = any)
}

// Prompt is a request reduced to what picking needs; Pick takes it directly, so that a replay
// drives the router's decisions without HTTP or JSON.
type Prompt struct {
	Model  string
	Tokens []uint32 // the prompt's token ids (kv, least-load); nil when unknown
	// Text is the prompt text for approx-prefix; "" hashes Tokens' bytes instead.
	Text string
	// CacheSalt is the request's cache_salt (it isolates cache entries).
	CacheSalt string
	// Extra are tokens of further prompts of the same request (a completion with several
	// prompts): they count as load, not for matching.
	ExtraTokens int
	Subset      []string // only these addresses may be picked (nil = any)
	// Session is the request's session ID (HeaderSessionID): its turns go to one endpoint
	// under Config.SessionAffinity. "" means none.
	Session string

	span trace.Span // Route's pick span, for the match and score events; nil when not traced
}

// scratch is per-call working memory, pooled.
type scratch struct {
	hashes  []kvindex.BlockHash
	matches kvindex.Matches
	approx  kvindex.Matches
	pending kvindex.Matches
	cands   []Candidate
	states  []*epState
	costs   []float64
	text    []kvindex.BlockHash
	seed    uint64
	pulls   []pullSource // per candidate: where its Remote blocks would come from (P2P)
	homes   []*epState   // session affinity's candidates
}

// pullSource is the endpoint a candidate would pull its Remote blocks from, and what it holds.
type pullSource struct {
	s *epState
	m kvindex.Match
}

// Route parses and validates the body, renders and tokenizes the prompt, matches it against
// the cache index, scores the eligible endpoints and picks one. Bad input and refusals are
// *openai.Error (400, 404, 413, 429, 503). The caller owns the Decision and must call Done.
func (r *Router) Route(ctx context.Context, req Request) (*Decision, error) {
	start := time.Now()
	ctx, span := r.startSpan(ctx, SpanRoute)
	d, err := r.route(ctx, req)
	if err == nil && d.adapter != nil { // the pick's LoRA adapter is loading there (lora.go)
		if err = r.awaitAdapter(ctx, d.adapter); err != nil {
			d.Done(nil, err)
			d = nil
		}
	}
	err = tagNoEndpoints(err)
	r.finish(d, err, start)
	if span != nil {
		endRouteSpan(span, req.Path, d, err)
	}
	return d, err
}

func (r *Router) route(ctx context.Context, req Request) (*Decision, error) {
	if int64(len(req.Body)) > r.cfg.MaxBodyBytes {
		return nil, openai.TooLarge(r.cfg.MaxBodyBytes)
	}
	p := Prompt{Subset: req.Subset}
	var stream, includeUsage bool
	var chatMessages []byte // a chat body's messages array (a slice of req.Body)
	switch req.Path {
	case "/v1/chat/completions":
		cr, err := openai.ParseChatRequest(req.Body)
		if err != nil {
			return nil, err
		}
		model, err := r.resolveModel(cr.Model)
		if err != nil {
			return nil, err
		}
		p.Model, stream, includeUsage = model, cr.Stream, cr.IncludeUsage()
		chatMessages = cr.Messages
		if cr.CacheSalt != nil {
			p.CacheSalt = *cr.CacheSalt
		}
		if tok := r.tokenizer(model); tok != nil {
			_, tspan := r.startSpan(ctx, SpanTokenize)
			tb, text, err := r.renderPooled(tok, tokenizer.ChatInput{
				Messages: cr.Messages, Tools: cr.Tools, AddGenerationPrompt: cr.GenerationPrompt(),
				Extra: templateKwargs(cr.ChatTemplateKwargs, req.Body),
			})
			defer r.putText(tb) // nothing reads p.Text once route returns
			if err != nil {
				err = openai.BadRequest("messages", "The chat template cannot render these messages: %v", err)
			} else if err = r.checkTextLen(tok, model, text); err == nil {
				buf := r.encodePooled(tok, text)
				defer r.putTokens(buf) // nothing reads p.Tokens once route returns
				p.Text, p.Tokens = text, *buf
			}
			endTokenizeSpan(tspan, len(p.Tokens), err)
			if err != nil {
				return nil, err
			}
			maxOut, asked := cr.MaxOutputTokens()
			if err := r.checkTokens(model, len(p.Tokens), maxOut, asked); err != nil {
				return nil, err
			}
		} else {
			p.Text = string(cr.Messages)
		}
	case "/v1/completions":
		cr, err := openai.ParseCompletionRequest(req.Body)
		if err != nil {
			return nil, err
		}
		model, err := r.resolveModel(cr.Model)
		if err != nil {
			return nil, err
		}
		p.Model, stream, includeUsage = model, cr.Stream, cr.IncludeUsage()
		if cr.CacheSalt != nil {
			p.CacheSalt = *cr.CacheSalt
		}
		tok := r.tokenizer(model)
		maxOut, asked := cr.MaxOutputTokens(), cr.MaxTokens != nil
		switch {
		case len(cr.Prompt.Tokens) > 0:
			for _, t := range cr.Prompt.Tokens {
				if err := r.checkTokens(model, len(t), maxOut, asked); err != nil {
					return nil, err
				}
			}
			p.Tokens = cr.Prompt.Tokens[0]
			for _, t := range cr.Prompt.Tokens[1:] {
				p.ExtraTokens += len(t)
			}
		case len(cr.Prompt.Texts) > 0:
			p.Text = cr.Prompt.Texts[0]
			if tok != nil {
				_, tspan := r.startSpan(ctx, SpanTokenize)
				err := r.tokenizeTexts(tok, model, cr.Prompt.Texts, maxOut, asked, &p)
				endTokenizeSpan(tspan, len(p.Tokens)+p.ExtraTokens, err)
				if err != nil {
					return nil, err
				}
			}
		}
	case PathResponses:
		s, err := r.promptResponses(req, &p)
		if err != nil {
			return nil, err
		}
		stream, includeUsage = s, true // a Responses stream always ends with its usage
	case PathEmbeddings:
		if err := r.promptEmbeddings(req, &p); err != nil {
			return nil, err
		}
	case anthropic.Path:
		s, err := r.messagesPrompt(req.Body, &p)
		if err != nil {
			return nil, err
		}
		stream, includeUsage = s, true // a Messages stream always carries its usage
	default:
		if !passesThrough(req.Path) {
			return nil, notRouted(req.Path)
		}
		if err := r.promptPassthrough(req, &p); err != nil {
			return nil, err
		}
	}
	cls, err := r.ClassOf(p.Model, req.Headers)
	if err != nil {
		return nil, err
	}
	p.Session = req.Headers.Get(HeaderSessionID)
	_, p.span = r.startSpan(ctx, SpanPick)
	d, err := r.admit(ctx, p, cls)
	if p.span != nil {
		endPickSpan(p.span, err)
	}
	if err != nil {
		return nil, err
	}
	d.Stream = stream
	d.Body = req.Body
	if stream && !includeUsage && r.cfg.ForceStreamUsage {
		var b []byte
		var err error
		changed := true
		// A "stream_options" inside the messages changes nothing: WithIncludeUsage finds no
		// such top-level field either and appends the same one.
		if containsOutside(req.Body, chatMessages, streamOptionsKey) {
			b, changed, err = openai.WithIncludeUsage(req.Body)
		} else { // the common case: no stream_options at all, append without rescanning
			b, err = openai.AppendField(req.Body, "stream_options", includeUsageOn)
		}
		if err == nil && changed {
			d.Body, d.UsageForced = b, true
		}
	}
	return d, nil
}

// tokenizeTexts tokenizes a completion's prompts into p: the first is matched, the others
// count as load. Every prompt's bytes are checked first: none is tokenized if one cannot fit.
func (r *Router) tokenizeTexts(tok *tokenizer.Tokenizer, model string, texts []string, maxOut int, asked bool, p *Prompt) error {
	for _, t := range texts {
		if err := r.checkTextLen(tok, model, t); err != nil {
			return err
		}
	}
	for i, t := range texts {
		ids := tok.Encode(t)
		if err := r.checkTokens(model, len(ids), maxOut, asked); err != nil {
			return err
		}
		if i == 0 {
			p.Tokens = ids
		} else {
			p.ExtraTokens += len(ids)
		}
	}
	return nil
}

// templateKwargs returns chat_template_kwargs for the template. Scalars are used as decoded;
// when a value is an object or array its raw bytes are used instead, so that tojson sees the
// client's key order, as vLLM's Python dicts keep it.
func templateKwargs(kw map[string]any, body []byte) map[string]any {
	nested := false
	for _, v := range kw {
		switch v.(type) {
		case map[string]any, []any:
			nested = true
		}
	}
	if !nested {
		return kw
	}
	var raw struct {
		KW map[string]json.RawMessage `json:"chat_template_kwargs"`
	}
	if json.Unmarshal(body, &raw) != nil {
		return kw
	}
	out := make(map[string]any, len(raw.KW))
	for k, v := range raw.KW {
		out[k] = v
	}
	return out
}

var (
	streamOptionsKey = []byte(`"stream_options"`)
	includeUsageOn   = []byte(`{"include_usage":true}`)
)

// resolveModel checks that some endpoint serves model; "" means the only model served.
func (r *Router) resolveModel(model string) (string, error) {
	models := r.Models()
	if model == "" {
		if len(models) == 1 {
			return models[0], nil
		}
		return "", openai.BadRequest("model", "Missing required parameter: 'model'.")
	}
	if !slices.Contains(models, model) {
		if r.recentlyServed(model, time.Now()) {
			return "", openai.Unavailable("No endpoint serves %q at the moment; it was served recently, retry shortly.", model)
		}
		return "", openai.ModelNotFound(model)
	}
	return model, nil
}

// tokenizer returns model's tokenizer (an adapter's base model's), nil when there is none:
// the request is then routed by load alone.
func (r *Router) tokenizer(model string) *tokenizer.Tokenizer {
	if base, ok := r.cfg.Adapters[model]; ok {
		model = base
	}
	tok, _, err := r.cfg.Models.Lookup(model)
	if err != nil {
		r.log.Debug("no tokenizer for model; routing by load only", "model", model, "err", err)
		return nil
	}
	return tok
}

// Pick chooses an endpoint for a prompt that is already tokenized: filters (model, role,
// subset, health, saturation), cache overlap, scoring, load accounting. Route calls it after
// parsing; replays call it directly. Errors are *openai.Error (404, 429, 503).
//
// When prefill-role endpoints serve the model, the target is picked among decode (and
// aggregated) endpoints, and the request is disaggregated when prefillFor's conditions hold
// (uncached prompt long enough, prefill pool not saturated): Decision.Prefill is then picked
// among the prefill endpoints with its own cache overlap, and the prefill load sits on it.
func (r *Router) Pick(p Prompt) (*Decision, error) { return r.pick(p, false) }

// pick is Pick; admitting (the admission queue is asking) answers saturatedError instead of
// picking a saturated endpoint.
func (r *Router) pick(p Prompt, admitting bool) (*Decision, error) {
	defer r.lockAdapter(p.Model)()
	now := r.cfg.Now()
	states := r.states()
	sc := r.pool.Get().(*scratch)
	defer r.pool.Put(sc)
	t, err := r.pickAmong(sc, states, p, p.Subset, isTargetRole, now)
	if err != nil {
		return nil, err
	}
	if t.saturated && admitting {
		uncached := len(p.Tokens) + p.ExtraTokens - t.cand.CachedBlocks()*t.s.bs()
		if len(p.Tokens) == 0 {
			uncached = len(p.Text)/4 + 1
		}
		return nil, saturatedError{uncached: int64(max(uncached, 1))}
	}
	d := &Decision{
		Endpoint:      t.s.ep,
		Policy:        r.cfg.Policy,
		Model:         p.Model,
		PromptTokens:  len(p.Tokens) + p.ExtraTokens,
		RequestBlocks: len(p.Tokens) / t.s.bs(),
		CachedBlocks:  t.cand.CachedBlocks(),
		CachedTiers:   t.cand.Cached,
		Cost:          t.cost,
		Fallbacks:     t.fallbacks,
		r:             r,
		cur:           t.s,
		adapter:       r.reserveAdapter(t.s, p.Model, now),
	}
	// Load: the uncached prompt is prefill until the first token; the whole prompt's blocks
	// are decode load until the end: every decode step reads each sequence's whole context,
	// shared prefix or not.
	bs := t.s.bs()
	d.decodeBlocks = int64((d.PromptTokens + bs - 1) / bs)
	prefillOn, cached := t.s, d.CachedBlocks
	pf, sp, why := r.prefillFor(states, p, t, now)
	if pf != nil {
		defer r.pool.Put(sp)
		ep := pf.s.ep
		d.Prefill, d.pre = &ep, pf.s
		prefillOn, cached = pf.s, pf.cand.CachedBlocks()
		r.remember(sp, pf.s, p, now)
	}
	d.AggregatedReason = why
	r.countPath(why)
	if t.pull.s != nil && pf == nil {
		d.Pull = &Pull{From: t.pull.s.ep, Blocks: t.pull.m.Blocks, Tokens: t.pull.m.Blocks * bs, Tiers: t.pull.m.Tiers}
		cached = t.pull.m.Blocks
		r.m.pulls.Inc()
		r.m.pulledBlocks.Add(float64(t.cand.Remote))
	}
	d.prefillLeft = int64(max(d.PromptTokens-cached*prefillOn.bs(), 0))
	prefillOn.addLoad(d.prefillLeft, 0, 0)
	t.s.addLoad(0, d.decodeBlocks, 1)
	r.remember(sc, t.s, p, now)
	if pf == nil && r.cfg.Policy == PolicyKV && !t.s.hasEvents() && len(sc.hashes) > 0 {
		buf, _ := r.hashBufs.Get().(*[]kvindex.BlockHash)
		if buf == nil {
			buf = new([]kvindex.BlockHash)
		}
		*buf = append((*buf)[:0], sc.hashes...)
		d.approxOn, d.approxHashes = t.s, buf
	}
	if r.log.Enabled(context.Background(), slog.LevelDebug) {
		r.explain(d, sc, t.order)
	}
	return d, nil
}

func isTargetRole(r Role) bool  { return r != RolePrefill }
func isPrefillRole(r Role) bool { return r == RolePrefill }

// picked is the outcome of one pickAmong.
type picked struct {
	s         *epState
	cand      Candidate
	cost      float64
	order     []int
	fallbacks []Endpoint
	pull      pullSource // the target's pull source when its cost counted one (P2P); s nil if none
	// saturated: every eligible endpoint was saturated (or, under hard session affinity, the
	// session's own), and s is one of them.
	saturated bool
}

// pickAmong filters states by model, role, subset, health and saturation, computes each
// survivor's overlap and load, and orders them under the policy.
func (r *Router) pickAmong(sc *scratch, states []*epState, p Prompt, subset []string, role func(Role) bool, now time.Time) (*picked, error) {
	sc.states = sc.states[:0]
	var saturated []*epState
	var down *epState // out after a refused connection, down longest
	anyRole, serving, inSubset, healthy := 0, 0, 0, 0
	for _, s := range states {
		if !r.canServe(s, p.Model) {
			continue
		}
		anyRole++
		if !role(s.ep.role()) {
			continue
		}
		serving++
		if subset != nil && !slices.Contains(subset, s.ep.Address) {
			continue
		}
		inSubset++
		if !s.healthy(now) {
			if at := s.downAt.Load(); at != 0 && (down == nil || at < down.downAt.Load()) {
				down = s
			}
			continue
		}
		healthy++
		if r.saturated(s, now) {
			saturated = append(saturated, s)
			continue
		}
		sc.states = append(sc.states, s)
	}
	if healthy == 0 && down != nil {
		// Every candidate is out, some after a refused connection: an engine restarting is
		// often back before UnhealthyFor ends. Try the one that failed longest ago rather than
		// refuse; a request that fails again moves on to the next.
		healthy = 1
		sc.states = append(sc.states, down)
		r.m.downRetries.Inc()
		r.log.Debug("every endpoint is out; trying the one down longest", "endpoint", down.ep.Name)
	}
	switch {
	case anyRole == 0:
		return nil, openai.ModelNotFound(p.Model)
	case serving == 0:
		return nil, openai.Unavailable("No endpoint of the needed role serves %q.", p.Model)
	case inSubset == 0:
		// The subset's addresses are internal: the client sees how many, not which.
		return nil, openai.Unavailable("None of the %d endpoints in the proxy's subset serves %q.", len(subset), p.Model)
	case healthy == 0:
		return nil, openai.Unavailable("No healthy endpoint serves %q.", p.Model)
	case len(sc.states) == 0 && r.cfg.Shed:
		return nil, openai.Overloaded("Every endpoint serving %q is saturated; retry later.", p.Model)
	}
	home := -1 // the session's endpoint in sc.states
	if p.Session != "" && r.cfg.SessionAffinity != SessionOff && role(RoleAggregated) {
		sc.homes = append(append(sc.homes[:0], sc.states...), saturated...)
		h := r.sessions.home(p.Session, p.Model, sc.homes, now)
		switch {
		case h < len(sc.states):
			home = h
			r.sessions.picks.WithLabelValues(SessionHome).Inc()
		case r.cfg.SessionAffinity == SessionHard:
			// Its endpoint is saturated: wait for it (admitting) or go there anyway.
			sc.states = append(sc.states[:0], sc.homes[h])
			saturated, home = nil, 0
			r.sessions.picks.WithLabelValues(SessionWait).Inc()
			sat := r.pickAmongRest(sc, p, now, home, role, states)
			sat.saturated = true
			return sat, nil
		default:
			r.sessions.picks.WithLabelValues(SessionSpill).Inc()
		}
		clear(sc.homes)
	}
	allSaturated := false
	if len(sc.states) == 0 {
		sc.states = append(sc.states, saturated...)
		allSaturated = true
	}
	out := r.pickAmongRest(sc, p, now, home, role, states)
	out.saturated = allSaturated
	return out, nil
}

// pickAmongRest computes the overlap and load of sc.states and orders them under the
// policy, home (the session's endpoint, -1 for none) first. role and states (every endpoint)
// are for P2P: whether the pick is a target, and where a pulled prefix may come from.
func (r *Router) pickAmongRest(sc *scratch, p Prompt, now time.Time, home int, role func(Role) bool, states []*epState) *picked {
	n := len(sc.states)
	sc.cands = slices.Grow(sc.cands[:0], n)[:n]
	clear(sc.cands)
	for i, s := range sc.states {
		c := &sc.cands[i]
		c.PrefillBlocks = float64(s.prefillTokens.Load()) / float64(s.bs())
		c.DecodeBlocks = float64(s.decodeBlocks.Load())
		c.PrefillBlocks += r.adapterMiss(s, p.Model, now) // an adapter to load first (lora.go)
		if l, ok := s.load(now, r.cfg.MetricsStaleAfter); ok {
			c.Waiting = l.Waiting
		}
	}
	sc.seed = r.seed(p)
	sc.hashes, sc.text = sc.hashes[:0], sc.text[:0]
	requestBlocks := len(p.Tokens) / sc.states[0].bs()
	switch r.cfg.Policy {
	case PolicyKV:
		r.matchBlocks(sc, sc.seed, p.Tokens, now)
	case PolicyApproxPrefix:
		sc.text = r.textHashes(sc.text, p)
		r.text.FindMatches(sc.text, now, &sc.approx)
		for _, m := range sc.approx.Endpoints {
			for i, s := range sc.states {
				if s.id == m.Endpoint {
					sc.cands[i].Matched = m.Blocks
				}
			}
		}
	}

	if r.cfg.P2P && r.cfg.Policy == PolicyKV && role(RoleAggregated) { // targets, not prefill picks
		sc.pulls = slices.Grow(sc.pulls[:0], n)[:n]
		clear(sc.pulls)
		r.findPulls(sc, states, p.Model, now)
	}

	if p.span != nil {
		matchEvent(p.span, sc.cands)
	}

	sc.costs = slices.Grow(sc.costs[:0], n)[:n]
	r.pickMu.Lock()
	order := r.ranker.Rank(sc.cands, requestBlocks, sc.costs)
	r.pickMu.Unlock()
	if home >= 0 {
		i := slices.Index(order, home)
		copy(order[1:i+1], order[:i])
		order[0] = home
	}

	out := &picked{s: sc.states[order[0]], cand: sc.cands[order[0]], cost: sc.costs[order[0]], order: order}
	if out.cand.Remote > 0 {
		out.pull = sc.pulls[order[0]]
	}
	for _, i := range order[1:min(len(order), 1+r.cfg.MaxFallbacks)] {
		out.fallbacks = append(out.fallbacks, sc.states[i].ep)
	}
	if p.span != nil {
		scoreEvent(p.span, out.s.ep, out.cand, out.cost)
	}
	return out
}

// remember records what was sent to s where no KV events will tell: approx-prefix's text
// chunks, or (kv policy, endpoint without events) the prompt's blocks.
func (r *Router) remember(sc *scratch, s *epState, p Prompt, now time.Time) {
	switch {
	case r.cfg.Policy == PolicyApproxPrefix:
		r.text.Record(s.id, sc.text, now)
	case r.cfg.Policy == PolicyKV && len(p.Tokens) >= s.bs():
		if len(sc.hashes) != len(p.Tokens)/s.bs() {
			sc.hashes = kvindex.HashBlocks(sc.hashes[:0], sc.seed, p.Tokens, s.bs())
		}
		if !s.hasEvents() {
			r.approx.Record(s.id, sc.hashes, now)
		} else if r.cfg.PendingTTL > 0 {
			r.pending.Record(s.id, sc.hashes, now)
		}
	}
}

// matchBlocks hashes the prompt for each block size in use and fills the candidates' overlap
// from the index (endpoints with events) or approximate mode (without). It returns the
// sc.hashes ends up holding the first candidate's block size's hashes.
func (r *Router) matchBlocks(sc *scratch, seed uint64, tokens []uint32, now time.Time) {
	first := sc.states[0].bs()
	var sizes []int
	for _, s := range sc.states {
		if !slices.Contains(sizes, s.bs()) {
			sizes = append(sizes, s.bs())
		}
	}
	// The first block size last, so its hashes stay in sc.hashes.
	slices.SortFunc(sizes, func(a, b int) int {
		if a == first {
			return 1
		}
		if b == first {
			return -1
		}
		return a - b
	})
	for _, bs := range sizes {
		if bs == first { // findPulls reads the first block size's matches: nothing stale
			sc.matches.Endpoints = sc.matches.Endpoints[:0]
		}
		sc.hashes = kvindex.HashBlocks(sc.hashes[:0], seed, tokens, bs)
		if len(sc.hashes) == 0 {
			continue
		}
		// Each source is asked only when some candidate of this block size reads it.
		withEvents, without := false, false
		for _, s := range sc.states {
			if s.bs() == bs {
				withEvents = withEvents || s.hasEvents()
				without = without || !s.hasEvents()
			}
		}
		if withEvents || (r.cfg.P2P && bs == first) { // P2P sources report events
			r.index.FindMatches(sc.hashes, &sc.matches)
			if r.cfg.PendingTTL > 0 {
				r.pending.FindMatches(sc.hashes, now, &sc.pending)
			}
		}
		if without {
			r.approx.FindMatches(sc.hashes, now, &sc.approx)
		}
		for i, s := range sc.states {
			if s.bs() != bs {
				continue
			}
			c := &sc.cands[i]
			if !s.hasEvents() {
				if m, ok := findMatch(&sc.approx, s.id); ok {
					c.Cached = m.Tiers
				}
				continue
			}
			if m, ok := findMatch(&sc.matches, s.id); ok {
				c.Cached = m.Tiers
			}
			// A prefix just sent there counts as on the GPU beyond what events reported.
			if m, ok := findMatch(&sc.pending, s.id); ok && r.cfg.PendingTTL > 0 {
				if extra := m.Blocks - c.CachedBlocks(); extra > 0 {
					c.Cached[kvindex.TierGPU] += extra
				}
			}
		}
	}
}

// findPulls credits each candidate with the blocks it could pull from the endpoint holding the
// longest prefix of the prompt (the second longest for that endpoint itself), when that is at
// least P2PMinTokens more than it holds. Any candidate of the first block size may pull;
// sources are endpoints with KV events, healthy, serving the model, with that block size,
// busy or saturated ones included: a pull reads their cache, not their compute. sc.matches must hold the index's matches of the first
// candidate's block size (matchBlocks leaves them there).
func (r *Router) findPulls(sc *scratch, states []*epState, model string, now time.Time) {
	bs := sc.states[0].bs()
	var best, second pullSource
	for _, m := range sc.matches.Endpoints {
		if m.Blocks <= second.m.Blocks {
			continue
		}
		var s *epState
		for _, x := range states {
			if x.id == m.Endpoint {
				s = x
				break
			}
		}
		if s == nil || !s.hasEvents() || s.bs() != bs || !s.ep.Serves(model) || !s.healthy(now) {
			continue
		}
		if m.Blocks > best.m.Blocks {
			best, second = pullSource{s, m}, best
		} else {
			second = pullSource{s, m}
		}
	}
	if best.s == nil {
		return
	}
	minBlocks := (r.cfg.P2PMinTokens + bs - 1) / bs
	for i, s := range sc.states {
		if s.bs() != bs {
			continue
		}
		src := best
		if s == best.s {
			src = second
		}
		c := &sc.cands[i]
		if src.s == nil {
			continue
		}
		if extra := src.m.Blocks - c.CachedBlocks(); extra > 0 && extra >= minBlocks {
			c.Remote = extra
			sc.pulls[i] = src
		}
	}
}

func findMatch(m *kvindex.Matches, id kvindex.EndpointID) (kvindex.Match, bool) {
	i, ok := slices.BinarySearchFunc(m.Endpoints, id, func(x kvindex.Match, id kvindex.EndpointID) int {
		return int(x.Endpoint) - int(id)
	})
	if !ok {
		return kvindex.Match{}, false
	}
	return m.Endpoints[i], true
}

// seed is the block-hash seed of the prompt: an adapter's name and the cache salt isolate
// cache entries, as they do in vLLM.
func (r *Router) seed(p Prompt) uint64 {
	lora := ""
	if _, ok := r.cfg.Adapters[p.Model]; ok {
		lora = p.Model
	}
	if p.CacheSalt != "" {
		return kvindex.Seed(lora, p.CacheSalt)
	}
	return kvindex.Seed(lora)
}

// textHashes hashes the prompt text in TextChunk-byte chunks (full chunks only, at most
// TextMaxChunks), under a seed of the model name, as the Inference Extension's prefix scorer
// does; the approximate index chains them into prefixes.
func (r *Router) textHashes(dst []kvindex.BlockHash, p Prompt) []kvindex.BlockHash {
	text := []byte(p.Text)
	if len(text) == 0 && len(p.Tokens) > 0 {
		text = make([]byte, 4*len(p.Tokens))
		for i, t := range p.Tokens {
			text[4*i], text[4*i+1], text[4*i+2], text[4*i+3] = byte(t), byte(t>>8), byte(t>>16), byte(t>>24)
		}
	}
	seed := xxh3.HashString(p.Model + "\x00" + p.CacheSalt)
	k := r.cfg.TextChunk
	n := min(len(text)/k, r.cfg.TextMaxChunks)
	for i := range n {
		dst = append(dst, kvindex.BlockHash(xxh3.HashSeed(text[i*k:(i+1)*k], seed)))
	}
	return dst
}

func (r *Router) saturated(s *epState, now time.Time) bool {
	if r.cfg.MaxInflight > 0 && s.requests.Load() >= int64(r.cfg.MaxInflight) {
		return true
	}
	l, ok := s.load(now, r.cfg.MetricsStaleAfter)
	if !ok {
		return false
	}
	return (r.cfg.QueueThreshold > 0 && l.Waiting > r.cfg.QueueThreshold) ||
		(r.cfg.KVUsageThreshold > 0 && l.KVUsage > r.cfg.KVUsageThreshold)
}

func (r *Router) explain(d *Decision, sc *scratch, order []int) {
	alts := make([]string, 0, len(order))
	for _, i := range order {
		c := &sc.cands[i]
		alts = append(alts, fmt.Sprintf("%s(cost=%.1f cached=%v remote=%d prefill=%.1f decode=%.0f waiting=%.0f matched=%d)",
			sc.states[i].ep.Name, sc.costs[i], c.Cached, c.Remote, c.PrefillBlocks, c.DecodeBlocks, c.Waiting, c.Matched))
	}
	r.log.Debug("route", "policy", d.Policy, "model", d.Model, "endpoint", d.Endpoint.Name, "address", d.Endpoint.Address,
		"prompt_tokens", d.PromptTokens, "prompt_blocks", d.RequestBlocks, "cached_blocks", d.CachedBlocks, "candidates", alts)
}

// finish records a Route's metrics.
func (r *Router) finish(d *Decision, err error, start time.Time) {
	el := time.Since(start)
	r.m.decision.Observe(el.Seconds())
	if err == nil {
		d.Elapsed = el
		r.m.requests.WithLabelValues(r.cfg.Policy, OutcomeRouted).Inc()
		r.m.overlap.Observe(float64(d.CachedBlocks))
		r.m.promptBlocks.Add(float64(d.RequestBlocks))
		r.m.cachedBlocks.Add(float64(d.CachedBlocks))
		d.countPools()
		return
	}
	outcome := OutcomeError
	var e *openai.Error
	if errors.As(err, &e) {
		switch e.Status {
		case http.StatusBadRequest:
			outcome = OutcomeBadRequest
		case http.StatusNotFound:
			outcome = OutcomeNotFound
		case http.StatusRequestEntityTooLarge:
			outcome = OutcomeTooLarge
		case http.StatusTooManyRequests:
			outcome = OutcomeShed
		case http.StatusServiceUnavailable:
			outcome = OutcomeUnavailable
		}
	}
	r.m.requests.WithLabelValues(r.cfg.Policy, outcome).Inc()
}
