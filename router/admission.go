package router

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/zeebo/xxh3"

	"github.com/kvgate/kvgate/openai"
)

// Admission defaults.
const (
	DefaultQueueSize       = 1024
	DefaultQueueTTL        = 30 * time.Second
	DefaultFairnessQuantum = 256 // uncached prompt tokens a flow may take per round
	DefaultSessionTTL      = 30 * time.Minute

	// MinPriority and MaxPriority bound HeaderPriority (and the band label's cardinality).
	MinPriority = -1000
	MaxPriority = 1000

	// SharedFairnessID is the flow of requests with neither HeaderFairnessID nor an API key.
	SharedFairnessID = "shared"
	// maxFairnessIDLen: longer IDs are hashed, so that one header cannot grow the queue's keys.
	maxFairnessIDLen = 64
	// maxFairnessLabels bounds the fairness_id label's values; later IDs are counted as "other".
	maxFairnessLabels = 256
	// queuePoll is how often a waiting request re-checks for room on its own, in case no
	// request ends to wake it (an engine's queue drained that this router did not fill).
	queuePoll = 100 * time.Millisecond
)

// Session affinity modes (Config.SessionAffinity).
const (
	SessionSoft = "soft"
	SessionHard = "hard"
	SessionOff  = "off"
)

func (c *Config) trafficDefaults() error {
	if c.QueueSize == 0 {
		c.QueueSize = DefaultQueueSize
	}
	if c.QueueTTL <= 0 {
		c.QueueTTL = DefaultQueueTTL
	}
	if c.FairnessQuantum <= 0 {
		c.FairnessQuantum = DefaultFairnessQuantum
	}
	if c.SessionTTL <= 0 {
		c.SessionTTL = DefaultSessionTTL
	}
	if c.SessionAffinity == "" {
		c.SessionAffinity = SessionSoft
	}
	switch c.SessionAffinity {
	case SessionSoft, SessionHard, SessionOff:
	default:
		return fmt.Errorf("router: session affinity %q: want soft, hard or off", c.SessionAffinity)
	}
	if c.MaxInflight < 0 {
		return errors.New("router: max in-flight must not be negative")
	}
	for _, p := range append([]int{c.DefaultPriority}, mapValues(c.ModelPriority)...) {
		if p < MinPriority || p > MaxPriority {
			return fmt.Errorf("router: priority %d outside [%d, %d]", p, MinPriority, MaxPriority)
		}
	}
	return nil
}

func mapValues(m map[string]int) []int {
	out := make([]int, 0, len(m))
	for _, v := range m {
		out = append(out, v)
	}
	return out
}

// Class is a request's admission class: its band and its flow within the band.
type Class struct {
	Priority   int    // higher first; negative is sheddable
	FairnessID string // "" means SharedFairnessID
}

// ClassOf reads a request's class from its headers (nil: none): HeaderPriority, else the
// model's configured priority, else DefaultPriority; HeaderFairnessID, else a hash of the
// Authorization header, else SharedFairnessID. A priority that is not an integer in
// [MinPriority, MaxPriority] is a 400.
func (r *Router) ClassOf(model string, h http.Header) (Class, error) {
	c := Class{Priority: r.cfg.DefaultPriority, FairnessID: SharedFairnessID}
	if p, ok := r.cfg.ModelPriority[model]; ok {
		c.Priority = p
	}
	if v := strings.TrimSpace(h.Get(HeaderPriority)); v != "" {
		p, err := strconv.Atoi(v)
		if err != nil || p < MinPriority || p > MaxPriority {
			return c, openai.BadRequest("", "Header %s must be an integer in [%d, %d].", HeaderPriority, MinPriority, MaxPriority)
		}
		c.Priority = p
	}
	switch id, key := strings.TrimSpace(h.Get(HeaderFairnessID)), h.Get("Authorization"); {
	case id != "" && len(id) <= maxFairnessIDLen:
		c.FairnessID = id
	case id != "":
		c.FairnessID = "id-" + strconv.FormatUint(xxh3.HashString(id), 16)
	case key != "":
		// The key itself never becomes a label or a log line: its hash does.
		var buf [20]byte
		c.FairnessID = string(strconv.AppendUint(append(buf[:0], "key-"...), xxh3.HashString(key), 16))
	}
	return c, nil
}

// admission is the queue of requests waiting for room: per model, per priority band, per
// flow (fairness ID). Guarded by mu; len is read without it to keep Done cheap when empty.
type admission struct {
	mu     sync.Mutex
	len    atomic.Int64
	models map[string]*modelQueue
	m      *admissionMetrics
}

type modelQueue struct {
	bands []*band // sorted by priority, highest first; empty bands are dropped
}

// band is one priority's queue: flows served by deficit round robin. active[0] is the flow
// being served; fresh says it already got this round's quantum.
type band struct {
	prio   int
	flows  map[string]*flow
	active []*flow
	fresh  bool
	n      int
}

type flow struct {
	id      string
	items   []*waiter // FIFO
	deficit int64
}

// waiter is one queued request. d and err are its answer, set once (answered) under
// admission.mu; ready is closed then.
type waiter struct {
	p        Prompt
	class    Class
	cost     int64 // estimated uncached prompt tokens (the DRR check); the actual is charged
	enqueued time.Time
	ready    chan struct{}
	answered bool
	d        *Decision
	err      error
	b        *band
	f        *flow
}

// Ticket is a request waiting in the admission queue. Ready is closed when it has its
// answer (Result); Cancel takes it out (and releases a decision that raced the cancel).
// Safe for concurrent use.
type Ticket struct {
	r *Router
	w *waiter
}

// Ready is closed once the request was dispatched, rejected or cancelled.
func (t *Ticket) Ready() <-chan struct{} { return t.w.ready }

// Result is the answer after Ready: a decision (the caller owns it and calls Done) or an
// error (*openai.Error with HeaderRejectedReason, or a routing error).
func (t *Ticket) Result() (*Decision, error) {
	a := t.r.adm
	a.mu.Lock()
	defer a.mu.Unlock()
	return t.w.d, t.w.err
}

// Cancel takes the request out of the queue; a decision it was given meanwhile is released.
// It returns whether the request was still waiting.
func (t *Ticket) Cancel() bool {
	a := t.r.adm
	a.mu.Lock()
	if t.w.answered {
		d := t.w.d
		t.w.d = nil
		a.mu.Unlock()
		if d != nil {
			d.Done(nil, errLeft)
		}
		return false
	}
	a.remove(t.w)
	t.w.answered, t.w.err = true, context.Canceled
	close(t.w.ready)
	a.mu.Unlock()
	a.m.left(t.w)
	return true
}

var errLeft = errors.New("the client left")

// saturatedError is pick's answer, while admitting, when every eligible endpoint is
// saturated; uncached estimates the request's uncached prompt tokens on the best of them.
type saturatedError struct{ uncached int64 }

func (saturatedError) Error() string { return "every eligible endpoint is saturated" }

func newAdmission(reg prometheus.Registerer) *admission {
	return &admission{models: map[string]*modelQueue{}, m: newAdmissionMetrics(reg)}
}

// Submit admits p: it returns a decision when an endpoint has room (or the queue is off),
// a Ticket when p waits in the queue, or an error: a rejection (429 rejected-sheddable or
// rejected-queue-full, 503 rejected-no-endpoints) or a routing error.
func (r *Router) Submit(p Prompt, c Class) (*Decision, *Ticket, error) {
	if c.FairnessID == "" {
		c.FairnessID = SharedFairnessID
	}
	if r.cfg.QueueSize < 0 || r.cfg.Shed {
		d, err := r.Pick(p)
		return d, nil, tagNoEndpoints(err)
	}
	a := r.adm
	a.mu.Lock()
	var cost int64
	if q := a.models[p.Model]; q == nil || len(q.bands) == 0 {
		d, err := r.pick(p, true)
		if err == nil {
			a.mu.Unlock()
			return d, nil, nil
		}
		sat, ok := err.(saturatedError)
		if !ok {
			a.mu.Unlock()
			return nil, nil, tagNoEndpoints(err)
		}
		cost = sat.uncached
	} else {
		cost = int64(len(p.Tokens) + p.ExtraTokens)
		if len(p.Tokens) == 0 {
			cost = int64(len(p.Text)/4 + 1)
		}
	}
	if c.Priority < 0 {
		a.mu.Unlock()
		a.m.reject(p.Model, c, RejectedSheddable)
		return nil, nil, rejection(http.StatusTooManyRequests, RejectedSheddable, time.Second,
			"Every endpoint serving %q is saturated and the request is sheddable (priority %d); retry later.", p.Model, c.Priority)
	}
	b := a.band(p.Model, c.Priority)
	var evicted *waiter
	if b.n >= r.cfg.QueueSize {
		// Full: the longest flow gives up its newest request, unless it is the newcomer's
		// own (longest-queue drop), so that a heavy tenant cannot fill the band for all.
		evicted = b.longestTail(c.FairnessID)
		if evicted == nil {
			a.drop(p.Model)
			a.mu.Unlock()
			a.m.reject(p.Model, c, RejectedQueueFull)
			return nil, nil, queueFull(c.Priority, p.Model, r.cfg.QueueSize)
		}
		a.remove(evicted)
		evicted.answered, evicted.err = true, queueFull(c.Priority, p.Model, r.cfg.QueueSize)
	}
	w := &waiter{p: p, class: c, cost: max(cost, 1), enqueued: r.cfg.Now(), ready: make(chan struct{})}
	b.push(w)
	a.len.Add(1)
	a.mu.Unlock()
	a.m.enqueue(p.Model, c)
	if evicted != nil {
		close(evicted.ready)
		a.m.answered(evicted, r.cfg.Now())
	}
	r.Dispatch()
	return nil, &Ticket{r: r, w: w}, nil
}

// admit routes p through the admission queue, waiting while it is queued until it is
// dispatched, rejected, its TTL passes or ctx ends (then it leaves the queue).
func (r *Router) admit(ctx context.Context, p Prompt, c Class) (*Decision, error) {
	d, t, err := r.Submit(p, c)
	if t == nil {
		return d, err
	}
	queued := time.Now()
	if p.span != nil {
		p.span.AddEvent(EventQueued)
	}
	ttl := time.NewTimer(r.cfg.QueueTTL)
	defer ttl.Stop()
	poll := time.NewTicker(queuePoll)
	defer poll.Stop()
	for {
		select {
		case <-t.Ready():
			d, err := t.Result()
			if d != nil {
				d.QueueWait = time.Since(queued)
			}
			return d, err
		case <-ctx.Done():
			t.Cancel()
			return nil, ctx.Err()
		case <-ttl.C:
			r.expire(t.w)
		case <-poll.C:
			r.Dispatch()
		}
	}
}

// Dispatch hands queued requests to endpoints with room, best band first and by deficit
// round robin within a band, re-scoring each at dequeue, and rejects those past QueueTTL.
// Ending requests call it; a replay calls it after each step. Safe for concurrent use.
func (r *Router) Dispatch() {
	a := r.adm
	if a.len.Load() == 0 {
		return
	}
	now := r.cfg.Now()
	var answered []*waiter
	a.mu.Lock()
	models := make([]string, 0, len(a.models))
	for m := range a.models {
		models = append(models, m)
	}
	slices.Sort(models)
	for _, m := range models {
		q := a.models[m]
		for _, b := range q.bands {
			for _, f := range b.active {
				for len(f.items) > 0 && now.Sub(f.items[0].enqueued) >= r.cfg.QueueTTL {
					w := f.items[0]
					a.remove(w)
					r.ttlReject(w)
					answered = append(answered, w)
				}
			}
		}
		for {
			w := q.peek(int64(r.cfg.FairnessQuantum))
			if w == nil {
				break
			}
			d, err := r.pick(w.p, true)
			if _, sat := err.(saturatedError); sat {
				break
			}
			actual := w.cost
			if d != nil {
				actual = max(d.prefillLeft, 1)
			}
			w.b.charge(w, actual)
			a.remove(w)
			w.answered, w.d, w.err = true, d, tagNoEndpoints(err)
			answered = append(answered, w)
		}
		a.drop(m)
	}
	a.mu.Unlock()
	for _, w := range answered {
		close(w.ready)
		a.m.answered(w, now)
	}
}

func queueFull(prio int, model string, size int) *openai.Error {
	return rejection(http.StatusTooManyRequests, RejectedQueueFull, time.Second,
		"The queue of priority %d for %q is full (%d requests); retry later.", prio, model, size)
}

// longestTail is the newest request of the band's longest flow, nil when that flow is id's
// own or no longer than it would be with the newcomer.
func (b *band) longestTail(id string) *waiter {
	var longest *flow
	for _, f := range b.active {
		if longest == nil || len(f.items) > len(longest.items) {
			longest = f
		}
	}
	own := 0
	if f := b.flows[id]; f != nil {
		own = len(f.items)
	}
	if longest == nil || longest.id == id || len(longest.items) <= own+1 {
		return nil
	}
	return longest.items[len(longest.items)-1]
}

// expire rejects w if it is still waiting (its TTL timer fired).
func (r *Router) expire(w *waiter) {
	a := r.adm
	a.mu.Lock()
	if w.answered {
		a.mu.Unlock()
		return
	}
	a.remove(w)
	r.ttlReject(w)
	a.drop(w.p.Model)
	a.mu.Unlock()
	close(w.ready)
	a.m.answered(w, r.cfg.Now())
}

// ttlReject answers w with the TTL rejection; a.mu must be held.
func (r *Router) ttlReject(w *waiter) {
	w.answered = true
	w.err = rejection(http.StatusTooManyRequests, RejectedTTL, r.cfg.QueueTTL,
		"The request waited %v for room on an endpoint serving %q; retry later.", r.cfg.QueueTTL, w.p.Model)
}

// rejection is an admission refusal: 429 (rate_limit_error) or 503, with the reason header
// and, for 429, Retry-After.
func rejection(status int, reason string, retry time.Duration, format string, args ...any) *openai.Error {
	var e *openai.Error
	if status == http.StatusServiceUnavailable {
		e = openai.Unavailable(format, args...)
	} else {
		e = openai.Overloaded(format, args...)
		e.Status = status
	}
	e.Header = http.Header{}
	e.Header.Set(HeaderRejectedReason, reason)
	if retry > 0 {
		e.Header.Set(HeaderRetryAfter, strconv.Itoa(int(math.Ceil(retry.Seconds()))))
	}
	return e
}

// tagNoEndpoints marks a 503 (no endpoint serves the model now) as rejected-no-endpoints.
func tagNoEndpoints(err error) error {
	if err == nil {
		return nil
	}
	var e *openai.Error
	if errors.As(err, &e) && e.Status == http.StatusServiceUnavailable && e.Header.Get(HeaderRejectedReason) == "" {
		if e.Header == nil {
			e.Header = http.Header{}
		}
		e.Header.Set(HeaderRejectedReason, RejectedNoEndpoints)
	}
	return err
}

// band returns model's band of priority prio, creating it; a.mu must be held.
func (a *admission) band(model string, prio int) *band {
	q := a.models[model]
	if q == nil {
		q = &modelQueue{}
		a.models[model] = q
	}
	i, ok := slices.BinarySearchFunc(q.bands, prio, func(b *band, p int) int { return p - b.prio })
	if ok {
		return q.bands[i]
	}
	b := &band{prio: prio, flows: map[string]*flow{}}
	q.bands = slices.Insert(q.bands, i, b)
	return b
}

// drop forgets model's empty bands (and the model when none is left); a.mu must be held.
func (a *admission) drop(model string) {
	q := a.models[model]
	if q == nil {
		return
	}
	q.bands = slices.DeleteFunc(q.bands, func(b *band) bool { return b.n == 0 })
	if len(q.bands) == 0 {
		delete(a.models, model)
	}
}

// remove takes w out of its flow and band; a.mu must be held.
func (a *admission) remove(w *waiter) {
	b, f := w.b, w.f
	if b == nil {
		return
	}
	if i := slices.Index(f.items, w); i >= 0 {
		f.items = slices.Delete(f.items, i, i+1)
		b.n--
		a.len.Add(-1)
	}
	w.b, w.f = nil, nil
	if len(f.items) == 0 {
		b.retire(f)
	}
}

func (b *band) push(w *waiter) {
	f := b.flows[w.class.FairnessID]
	if f == nil {
		f = &flow{id: w.class.FairnessID}
		b.flows[f.id] = f
		b.active = append(b.active, f)
	}
	f.items = append(f.items, w)
	w.b, w.f = b, f
	b.n++
}

// retire drops an empty flow from the round; its deficit is forgotten (DRR).
func (b *band) retire(f *flow) {
	if i := slices.Index(b.active, f); i >= 0 {
		b.active = slices.Delete(b.active, i, i+1)
		if i == 0 {
			b.fresh = false
		}
	}
	delete(b.flows, f.id)
}

// charge takes the request's actual uncached tokens from its flow's deficit.
func (b *band) charge(w *waiter, cost int64) { w.f.deficit -= cost }

// peek is the request deficit round robin serves next in the best non-empty band, nil when
// none waits. It advances the round (quanta, rotation), which is what DRR does anyway.
func (q *modelQueue) peek(quantum int64) *waiter {
	for _, b := range q.bands {
		if b.n == 0 {
			continue
		}
		for {
			f := b.active[0]
			if !b.fresh {
				f.deficit += quantum
				b.fresh = true
			}
			if w := f.items[0]; w.cost <= f.deficit {
				return w
			}
			// Not enough credit this round: on to the next flow, which keeps its deficit.
			// A cost far above the quantum takes the rounds it needs in one step.
			if len(b.active) == 1 {
				f.deficit += (f.items[0].cost - f.deficit + quantum - 1) / quantum * quantum
				continue
			}
			b.active = append(b.active[1:], f)
			b.fresh = false
		}
	}
	return nil
}

// admissionMetrics are the queue's metrics by model, band and fairness ID.
type admissionMetrics struct {
	queued     *prometheus.GaugeVec
	wait       *prometheus.HistogramVec
	dispatched *prometheus.CounterVec
	rejected   *prometheus.CounterVec

	mu     sync.Mutex
	labels map[string]bool // fairness IDs with their own label value
}

func newAdmissionMetrics(reg prometheus.Registerer) *admissionMetrics {
	l := []string{"model", "band", "fairness_id"}
	m := &admissionMetrics{
		queued: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: MetricQueued,
			Help: "Requests waiting in the admission queue."}, l),
		wait: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: MetricQueueWait,
			Help:    "Time requests waited in the admission queue, whatever the outcome.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2.5, 14)}, l),
		dispatched: prometheus.NewCounterVec(prometheus.CounterOpts{Name: MetricQueueDispatch,
			Help: "Queued requests dispatched to an endpoint."}, l),
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts{Name: MetricQueueRejected,
			Help: "Requests admission refused, by reason (rejected-*, or left: the client went away while queued)."},
			append(l, "reason")),
		labels: map[string]bool{},
	}
	if reg != nil {
		reg.MustRegister(m.queued, m.wait, m.dispatched, m.rejected)
	}
	return m
}

// labelsOf is the label values of a class; fairness IDs past maxFairnessLabels share "other".
func (m *admissionMetrics) labelsOf(model string, c Class) []string {
	m.mu.Lock()
	id := c.FairnessID
	if !m.labels[id] {
		if len(m.labels) < maxFairnessLabels {
			m.labels[id] = true
		} else {
			id = "other"
		}
	}
	m.mu.Unlock()
	return []string{model, strconv.Itoa(c.Priority), id}
}

func (m *admissionMetrics) enqueue(model string, c Class) {
	m.queued.WithLabelValues(m.labelsOf(model, c)...).Inc()
}

func (m *admissionMetrics) reject(model string, c Class, reason string) {
	m.rejected.WithLabelValues(append(m.labelsOf(model, c), reason)...).Inc()
}

// answered records a waiter that left the queue with an answer.
func (m *admissionMetrics) answered(w *waiter, now time.Time) {
	l := m.labelsOf(w.p.Model, w.class)
	m.queued.WithLabelValues(l...).Dec()
	m.wait.WithLabelValues(l...).Observe(now.Sub(w.enqueued).Seconds())
	var e *openai.Error
	switch {
	case w.d != nil:
		m.dispatched.WithLabelValues(l...).Inc()
	case errors.As(w.err, &e) && e.Header.Get(HeaderRejectedReason) != "":
		m.rejected.WithLabelValues(append(l, e.Header.Get(HeaderRejectedReason))...).Inc()
	default:
		m.rejected.WithLabelValues(append(l, "error")...).Inc()
	}
}

// left records a waiter whose client went away.
func (m *admissionMetrics) left(w *waiter) {
	l := m.labelsOf(w.p.Model, w.class)
	m.queued.WithLabelValues(l...).Dec()
	m.wait.WithLabelValues(l...).Observe(time.Since(w.enqueued).Seconds())
	m.rejected.WithLabelValues(append(l, "left")...).Inc()
}

// Queued is the number of requests waiting in the admission queue.
func (r *Router) Queued() int { return int(r.adm.len.Load()) }

// RejectedReason is the HeaderRejectedReason of a refusal (a Rejected* value), "" for any
// other error.
func RejectedReason(err error) string {
	var e *openai.Error
	if errors.As(err, &e) {
		return e.Header.Get(HeaderRejectedReason)
	}
	return ""
}
