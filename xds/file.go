package xds

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"time"

	"github.com/kvgate/kvgate/discovery"
)

// FileSource is a discovery.Source over an endpoints file (see ParseEndpoints): it reports
// the file's engines at once, then again whenever the file's content changes, checking every
// Interval. A file that goes missing or stops parsing keeps the last good set (and is
// logged), so a half-written edit never empties Envoy's pools.
type FileSource struct {
	Path     string
	Interval time.Duration // 0 = 1s
	Log      *slog.Logger  // nil discards
}

var _ discovery.Source = (*FileSource)(nil)

// Watch implements discovery.Source. The channel closes when ctx ends.
func (f *FileSource) Watch(ctx context.Context) <-chan []discovery.Endpoint {
	out := make(chan []discovery.Endpoint, 1)
	interval := f.Interval
	if interval <= 0 {
		interval = time.Second
	}
	log := f.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	go func() {
		defer close(out)
		var last, bad []byte // the last good content, and the last content refused
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			data, err := os.ReadFile(f.Path)
			switch {
			case err != nil:
				log.Warn("endpoints file unreadable; keeping the last set", "path", f.Path, "err", err)
			case (last == nil || !bytes.Equal(data, last)) && (bad == nil || !bytes.Equal(data, bad)):
				eps, err := ParseEndpoints(data)
				if err != nil {
					bad = data
					log.Warn("endpoints file invalid; keeping the last set", "path", f.Path, "err", err)
					break
				}
				last = data
				// Latest wins: drop a report the watcher has not taken yet.
				select {
				case <-out:
				default:
				}
				out <- eps
			}
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}()
	return out
}
