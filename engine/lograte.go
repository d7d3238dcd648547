package engine

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

// DefaultLogEvery is how often a KV-event source logs one kind of problem at most.
const DefaultLogEvery = 10 * time.Second

// LogLimiter logs each kind of problem (keyed by its message, a constant) at most once per
// interval: the first occurrence at once, later ones as one line with their count (the
// "count" attribute is how many occurrences the line stands for) when the interval has
// passed, at the next occurrence or flush. A flood from a bad source costs a line per
// interval, not one per message. Safe for concurrent use. (The engine's sockets also flush
// it on a timer; a user that does not sees held-back counts on its next line.)
type LogLimiter struct {
	log   *slog.Logger
	every time.Duration

	mu   sync.Mutex
	keys map[string]*logEntry
}

type logEntry struct {
	last  time.Time
	count int // occurrences not yet logged
	level slog.Level
	args  []any // of the latest occurrence
}

// NewLogLimiter logs to log at most once per every (DefaultLogEvery when <= 0) per message.
func NewLogLimiter(log *slog.Logger, every time.Duration) *LogLimiter {
	if every <= 0 {
		every = DefaultLogEvery
	}
	return &LogLimiter{log: log, every: every, keys: map[string]*logEntry{}}
}

func (l *LogLimiter) Warn(msg string, args ...any)  { l.add(slog.LevelWarn, msg, args) }
func (l *LogLimiter) Info(msg string, args ...any)  { l.add(slog.LevelInfo, msg, args) }
func (l *LogLimiter) Debug(msg string, args ...any) { l.add(slog.LevelDebug, msg, args) }

func (l *LogLimiter) add(level slog.Level, msg string, args []any) {
	now := time.Now()
	l.mu.Lock()
	e := l.keys[msg]
	if e == nil {
		e = &logEntry{}
		l.keys[msg] = e
	}
	e.count++
	e.level, e.args = level, args
	if !e.last.IsZero() && now.Sub(e.last) < l.every {
		l.mu.Unlock()
		return
	}
	n := e.count
	e.count, e.last, e.args = 0, now, nil
	l.mu.Unlock()
	l.emit(level, msg, n, args)
}

// flush logs the occurrences held back for an interval or more, or all of them when all.
func (l *LogLimiter) flush(all bool) {
	now := time.Now()
	type line struct {
		level slog.Level
		msg   string
		n     int
		args  []any
	}
	var out []line
	l.mu.Lock()
	for msg, e := range l.keys {
		if e.count == 0 || (!all && now.Sub(e.last) < l.every) {
			continue
		}
		out = append(out, line{e.level, msg, e.count, e.args})
		e.count, e.last, e.args = 0, now, nil
	}
	l.mu.Unlock()
	for _, ln := range out {
		l.emit(ln.level, ln.msg, ln.n, ln.args)
	}
}

func (l *LogLimiter) emit(level slog.Level, msg string, n int, args []any) {
	l.log.Log(context.Background(), level, msg, append(args[:len(args):len(args)], "count", n)...)
}

// flushEvery flushes l every interval until ctx is done, then flushes everything.
func flushEvery(ctx context.Context, l *LogLimiter) {
	t := time.NewTicker(l.every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			l.flush(true)
			return
		case <-t.C:
			l.flush(false)
		}
	}
}
