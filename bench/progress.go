package bench

import (
	"fmt"
	"io"
	"strings"
	"sync"
	"time"
)

// progress draws "[=====     ] 120/400 done, 2 errors, 35.1 req/s" on one line, redrawn
// every 200 ms.
type progress struct {
	w              io.Writer
	total          int
	mu             sync.Mutex
	finished, errs int
	start          time.Time
	quit           chan struct{}
	wg             sync.WaitGroup
}

func newProgress(w io.Writer, total int) *progress {
	p := &progress{w: w, total: total, start: time.Now(), quit: make(chan struct{})}
	if w == nil {
		return p
	}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		t := time.NewTicker(200 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-t.C:
				p.draw(false)
			case <-p.quit:
				p.draw(true)
				return
			}
		}
	}()
	return p
}

func (p *progress) done(failed bool) {
	p.mu.Lock()
	p.finished++
	if failed {
		p.errs++
	}
	p.mu.Unlock()
}

func (p *progress) draw(final bool) {
	p.mu.Lock()
	n, errs := p.finished, p.errs
	p.mu.Unlock()
	const width = 30
	fill := width * n / max(1, p.total)
	rate := float64(n) / max(time.Since(p.start).Seconds(), 1e-9)
	end := "\r"
	if final {
		end = "\n"
	}
	fmt.Fprintf(p.w, "[%s%s] %d/%d done, %d errors, %.1f req/s%s",
		strings.Repeat("=", fill), strings.Repeat(" ", width-fill), n, p.total, errs, rate, end)
}

func (p *progress) stop() {
	if p.w == nil {
		return
	}
	close(p.quit)
	p.wg.Wait()
}
