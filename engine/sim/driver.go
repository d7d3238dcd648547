package sim

import (
	"context"
	"sync"
	"time"
)

// driver runs an Engine in real time: one goroutine steps it, sleeps until each step's End,
// then publishes the step's KV events and hands its outputs to the waiting requests.
type driver struct {
	mu    sync.Mutex
	eng   *Engine
	start time.Time
	jobs  map[string]*job // engine request id -> the HTTP request waiting for it
	held  map[string]*time.Timer
	wake  chan struct{}
	hold  time.Duration

	publish func([]KVEvent)
	metrics *metrics
}

func newDriver(eng *Engine, hold time.Duration, publish func([]KVEvent), m *metrics) *driver {
	return &driver{eng: eng, start: time.Now(), jobs: map[string]*job{}, held: map[string]*time.Timer{},
		wake: make(chan struct{}, 1), hold: hold, publish: publish, metrics: m}
}

// job collects the outputs of the engine requests one HTTP request made (n choices, several
// prompts). It is filled by the driver and drained by the handler.
type job struct {
	mu     sync.Mutex
	outs   []Output
	notify chan struct{}
}

func newJob() *job { return &job{notify: make(chan struct{}, 1)} }

func (j *job) push(o Output) {
	j.mu.Lock()
	j.outs = append(j.outs, o)
	j.mu.Unlock()
	select {
	case j.notify <- struct{}{}:
	default:
	}
}

// take returns the outputs pushed since the last take.
func (j *job) take() []Output {
	j.mu.Lock()
	defer j.mu.Unlock()
	o := j.outs
	j.outs = nil
	return o
}

// submit adds reqs to the engine on behalf of j, all or none.
func (d *driver) submit(j *job, reqs []Request) error {
	d.mu.Lock()
	for i, r := range reqs {
		if err := d.eng.Add(r); err != nil {
			for _, r := range reqs[:i] {
				d.eng.Abort(r.ID)
				delete(d.jobs, r.ID)
			}
			d.mu.Unlock()
			return err
		}
		d.jobs[r.ID] = j
	}
	d.metrics.observe(d.eng.Stats())
	d.mu.Unlock()
	d.poke()
	return nil
}

// abort drops the engine requests (a client went away) and frees their blocks.
func (d *driver) abort(ids []string) {
	for range d.drop(ids) {
		d.metrics.success.WithLabelValues("abort").Inc()
	}
}

// cancel drops requests that finished outside the engine (a stop string matched).
func (d *driver) cancel(ids []string) { d.drop(ids) }

func (d *driver) drop(ids []string) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	n := 0
	for _, id := range ids {
		if _, ok := d.jobs[id]; ok {
			delete(d.jobs, id)
			d.eng.Abort(id)
			n++
		}
	}
	d.metrics.observe(d.eng.Stats())
	d.poke()
	return n
}

// release frees the blocks a prefill request held for a decode engine.
func (d *driver) release(id string) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	if t, ok := d.held[id]; ok {
		t.Stop()
		delete(d.held, id)
	}
	ok := d.eng.Release(id)
	d.metrics.observe(d.eng.Stats())
	d.poke()
	return ok
}

// poke wakes the driver: something may now be schedulable.
func (d *driver) poke() {
	select {
	case d.wake <- struct{}{}:
	default:
	}
}

// heldBlocks returns the blocks id holds, or nil.
func (d *driver) heldBlocks(id string) []int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.eng.Held(id)
}

// findHeld returns the held request whose blocks start with first, or "".
func (d *driver) findHeld(first int) string {
	d.mu.Lock()
	defer d.mu.Unlock()
	for id := range d.held {
		if b := d.eng.Held(id); len(b) > 0 && b[0] == first {
			return id
		}
	}
	return ""
}

func (d *driver) stats() Stats {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.eng.Stats()
}

// run steps the engine until ctx ends.
func (d *driver) run(ctx context.Context) {
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer func() {
		d.mu.Lock()
		for id, t := range d.held {
			t.Stop()
			delete(d.held, id)
		}
		d.mu.Unlock()
	}()
	for {
		d.mu.Lock()
		if !d.eng.Busy() {
			d.mu.Unlock()
			select {
			case <-d.wake:
				continue
			case <-ctx.Done():
				return
			}
		}
		res := d.eng.Step(time.Since(d.start))
		d.mu.Unlock()

		if wait := res.End - time.Since(d.start); wait > 0 {
			timer.Reset(wait)
			select {
			case <-timer.C:
			case <-ctx.Done():
				timer.Stop()
				return
			}
		}
		if len(res.Events) > 0 {
			d.publish(res.Events)
		}
		d.deliver(res.Outputs)
		if res.PrefillTokens+res.DecodeTokens == 0 {
			// Requests wait for blocks that only a release or an abort frees (held P/D
			// blocks): sleep until something changes instead of spinning.
			timer.Reset(10 * time.Millisecond)
			select {
			case <-d.wake:
				timer.Stop()
			case <-timer.C:
			case <-ctx.Done():
				timer.Stop()
				return
			}
		}
	}
}

func (d *driver) deliver(outs []Output) {
	d.mu.Lock()
	targets := make([]*job, len(outs))
	for i, o := range outs {
		targets[i] = d.jobs[o.ID]
		if o.Finish == NotFinished {
			continue
		}
		delete(d.jobs, o.ID)
		if o.BlockIDs == nil {
			continue
		}
		if targets[i] == nil || len(o.BlockIDs) == 0 {
			d.eng.Release(o.ID) // nobody will pull them
			continue
		}
		id := o.ID
		d.held[id] = time.AfterFunc(d.hold, func() { d.release(id) })
	}
	d.metrics.observe(d.eng.Stats())
	d.mu.Unlock()
	for i, o := range outs {
		if targets[i] != nil {
			targets[i].push(o)
		}
	}
}

// holds returns the hashes of the prompt's reusable full blocks and how many of them, from
// the first, this engine holds (Engine.PromptHashes, Engine.Holds).
func (d *driver) holds(prompt []uint32, lora, salt string) ([]BlockHash, Holdings) {
	d.mu.Lock()
	defer d.mu.Unlock()
	hs := d.eng.PromptHashes(prompt, lora, salt)
	return hs, d.eng.Holds(hs, time.Since(d.start))
}

// holdsHashes is Engine.Holds at the current time.
func (d *driver) holdsHashes(hs []BlockHash) Holdings {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.eng.Holds(hs, time.Since(d.start))
}
