package replay

import (
	"errors"
	"slices"
	"strconv"
	"time"

	"github.com/kvgate/kvgate/bench"
	"github.com/kvgate/kvgate/router"
)

// Admission turns the router's admission queue and session affinity on in a replay
// (docs/TRAFFIC.md): each trace request carries its tenant (fairness ID "tenant-N"), its
// priority band and, when Sessions is not off, its conversation as session ID.
type Admission struct {
	MaxInflight int           // requests per engine before it is saturated (0: the engine's reports only)
	QueueSize   int           // per band (0: the router's default)
	QueueTTL    time.Duration // 0: the router's default
	Sessions    string        // soft, hard or off ("" = off)
}

func (a *Admission) apply(rc *router.Config) {
	rc.MaxInflight = a.MaxInflight
	rc.QueueSize = a.QueueSize
	rc.QueueTTL = a.QueueTTL
	rc.SessionAffinity = a.Sessions
	if a.Sessions == "" {
		rc.SessionAffinity = router.SessionOff
	}
}

// BandResult is one priority band's outcome.
type BandResult struct {
	Priority int            `json:"priority"`
	Requests int            `json:"requests"`
	Served   int            `json:"served"`
	Rejected map[string]int `json:"rejected,omitempty"` // by x-kvgate-rejected-reason
	TTFTP50  float64        `json:"ttft_p50_ms"`
	TTFTP90  float64        `json:"ttft_p90_ms"`
}

// TenantResult is one tenant's service: its share of the prompt and output tokens served
// while any tenant had requests refused or waiting is what fairness is about, so both the
// whole-run share and the requests refused are reported.
type TenantResult struct {
	Tenant   int     `json:"tenant"`
	Requests int     `json:"requests"`
	Served   int     `json:"served"`
	Rejected int     `json:"rejected"`
	Tokens   int64   `json:"served_tokens"`
	Share    float64 `json:"share"` // of all served tokens
}

// errQueued says the request waits in the admission queue.
var errQueued = errors.New("queued")

// traffic is the cluster's admission state: requests waiting, and why requests were refused.
type traffic struct {
	waiting []waiting
	reasons map[int]string // request -> rejection reason
}

type waiting struct {
	req int
	t   *router.Ticket
}

// pick routes request i: directly without Admission, else through the admission queue
// (errQueued when it waits).
func (c *cluster) pick(now time.Duration, i int, tokens []uint32) (routed, error) {
	a := c.cfg.Admission
	if a == nil {
		return c.p.pick(now, tokens)
	}
	r := &c.tr.Requests[i]
	p := router.Prompt{Model: replayModel, Tokens: tokens}
	if a.Sessions != "" && a.Sessions != router.SessionOff && r.Session >= 0 {
		p.Session = "conversation-" + strconv.Itoa(r.Session)
	}
	c.p.now = now
	d, tk, err := c.p.r.Submit(p, router.Class{Priority: r.Priority, FairnessID: "tenant-" + strconv.Itoa(r.Tenant)})
	switch {
	case err != nil:
		return routed{}, err
	case tk != nil:
		c.traffic.waiting = append(c.traffic.waiting, waiting{req: i, t: tk})
		return routed{}, errQueued
	}
	return c.p.placed(d)
}

// reject counts request i as refused, with the router's reason.
func (c *cluster) reject(i int, err error) {
	c.rejected++
	c.reqs[i].done = true
	c.finish(&c.reqs[i])
	if c.traffic.reasons == nil {
		c.traffic.reasons = map[int]string{}
	}
	reason := router.RejectedReason(err)
	if reason == "" {
		reason = "error"
	}
	c.traffic.reasons[i] = reason
}

// dispatched starts the queued requests the router dispatched (or refused) since the last
// call: ending requests dispatch them; Dispatch here expires those past the TTL.
func (c *cluster) dispatched(now time.Duration) {
	tr := &c.traffic
	if len(tr.waiting) == 0 {
		return
	}
	c.p.now = now
	c.p.r.Dispatch()
	if c.p.r.Queued() == len(tr.waiting) {
		return
	}
	keep := tr.waiting[:0]
	for _, w := range tr.waiting {
		select {
		case <-w.t.Ready():
		default:
			keep = append(keep, w)
			continue
		}
		d, err := w.t.Result()
		if err != nil {
			c.reject(w.req, err)
			continue
		}
		pk, err := c.p.placed(d)
		if err != nil {
			c.reject(w.req, err)
			continue
		}
		c.start(now, w.req, pk, c.tr.Requests[w.req].Tokens())
	}
	clear(tr.waiting[len(keep):])
	tr.waiting = keep
}

// trafficSummary reports TTFT and outcomes per band and service per tenant.
func (c *cluster) trafficSummary() ([]BandResult, []TenantResult) {
	bands := map[int]*BandResult{}
	ttfts := map[int][]time.Duration{}
	tenants := map[int]*TenantResult{}
	var total int64
	for i, st := range c.reqs {
		r := &c.tr.Requests[i]
		b := bands[r.Priority]
		if b == nil {
			b = &BandResult{Priority: r.Priority, Rejected: map[string]int{}}
			bands[r.Priority] = b
		}
		tn := tenants[r.Tenant]
		if tn == nil {
			tn = &TenantResult{Tenant: r.Tenant}
			tenants[r.Tenant] = tn
		}
		b.Requests++
		tn.Requests++
		if reason, ok := c.traffic.reasons[i]; ok {
			b.Rejected[reason]++
			tn.Rejected++
			continue
		}
		if st.got {
			b.Served++
			tn.Served++
			ttfts[r.Priority] = append(ttfts[r.Priority], st.first-st.arrival)
			n := int64(st.prompt + st.output)
			tn.Tokens += n
			total += n
		}
	}
	var bs []BandResult
	for p, b := range bands {
		d := bench.Summarize(ttfts[p])
		b.TTFTP50, b.TTFTP90 = d.P50, d.P90
		bs = append(bs, *b)
	}
	slices.SortFunc(bs, func(a, b BandResult) int { return b.Priority - a.Priority })
	var ts []TenantResult
	for _, tn := range tenants {
		if total > 0 {
			tn.Share = round4(float64(tn.Tokens) / float64(total))
		}
		ts = append(ts, *tn)
	}
	slices.SortFunc(ts, func(a, b TenantResult) int { return a.Tenant - b.Tenant })
	return bs, ts
}
