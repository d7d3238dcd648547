package workerd

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"

	relayv1 "github.com/kvgate/kvgate/api/relay/v1"
	"github.com/kvgate/kvgate/backoff"
	"github.com/kvgate/kvgate/engine"
	"github.com/kvgate/kvgate/relay"
)

// Engine states.
const (
	StateStarting = "starting" // process started, /health not yet passing
	StateRunning  = "running"  // /health passing
	StateBackoff  = "backoff"  // exited; waiting to restart
	StateStopped  = "stopped"  // shut down
	StateDraining = "draining" // out of discovery, finishing its requests before it stops
)

// EngineStatus is what workerd knows of one engine.
type EngineStatus struct {
	Name      string // instance name (Consul service ID, relay engine name)
	Kind      string
	Models    []string
	Role      string
	Address   string // OpenAI HTTP server, host:port
	KVEvents  string // ZMQ endpoint, "" = none
	BlockSize int
	GPUs      []int
	Argv      []string
	State     string
	Restarts  int
	PID       int
	Healthy   bool
	Load      engine.Load
	RelaySeq  uint64 // last relay sequence number sent
	Blocks    int    // blocks the relay holds for this engine
	Template  string // the template it was started from, "" = the engines list
}

// proc supervises one engine process across restarts.
type proc struct {
	p    plan
	hub  *relay.Hub
	log  *slog.Logger
	out  *lineWriter
	cfg  *Config
	http *http.Client
	load *relay.Server
	zmq  *engine.ZMQMetrics // rejected KV-event connections, on workerd's registry

	// Set for an engine started from a template: stopping it (cancel) and its Consul
	// registration (unregister, which returns once it is deregistered).
	template   string
	cancel     context.CancelFunc
	done       chan struct{}
	unregister func()

	mu       sync.Mutex
	draining bool
	state    string
	restarts int
	pid      int
	healthy  bool
	cur      engine.Load
}

func (e *proc) status() EngineStatus {
	e.mu.Lock()
	defer e.mu.Unlock()
	seq, blocks := e.hub.Stats()
	state := e.state
	if e.draining && state != StateStopped {
		state = StateDraining
	}
	return EngineStatus{
		Name: e.p.instance, Kind: e.p.spec.Kind, Models: e.p.models, Role: e.p.role, Address: e.p.addr,
		KVEvents: e.p.kvEvents, BlockSize: e.p.blockSize, GPUs: e.p.gpus, Argv: e.p.argv,
		State: state, Restarts: e.restarts, PID: e.pid, Healthy: e.healthy, Load: e.cur,
		RelaySeq: seq, Blocks: blocks, Template: e.template,
	}
}

func (e *proc) set(f func()) {
	e.mu.Lock()
	defer e.mu.Unlock()
	f()
}

// run starts the engine and restarts it with jittered exponential backoff whenever it exits, until
// ctx ends; then it stops the process group (SIGTERM, then SIGKILL after StopTimeout).
func (e *proc) run(ctx context.Context) {
	maxB := time.Duration(e.cfg.MaxBackoff)
	retry := backoff.New(time.Duration(e.cfg.MinBackoff), maxB)
	defer e.set(func() { e.state, e.healthy, e.pid = StateStopped, false, 0 })
	for ctx.Err() == nil {
		started := time.Now()
		err := e.incarnation(ctx)
		if ctx.Err() != nil {
			return
		}
		e.hub.Clear() // whatever the engine held is gone
		if time.Since(started) > 2*maxB {
			retry.Reset() // it ran a good while: a fresh failure, not a crash loop
		}
		wait := retry.Next()
		e.set(func() { e.state, e.healthy, e.pid = StateBackoff, false, 0; e.restarts++ })
		e.log.Warn("engine exited; restarting", "err", err, "after", wait, "ran", time.Since(started).Round(time.Millisecond),
			"last_output", e.out.tail())
		if !backoff.Sleep(ctx, backoff.Clock{}, wait) {
			return
		}
	}
}

// incarnation runs the process once: it returns when the process exits (its error) or,
// after stopping it, when ctx ends.
func (e *proc) incarnation(ctx context.Context) error {
	cmd := exec.Command(e.p.argv[0], e.p.argv[1:]...)
	cmd.Env = append(os.Environ(), e.p.env...)
	cmd.Stdout, cmd.Stderr = e.out, e.out
	cmd.SysProcAttr = procAttr()
	cmd.WaitDelay = 2 * time.Second // grandchildren holding the pipes must not hang Wait
	for _, f := range e.p.files {
		if err := f.write(); err != nil {
			return fmt.Errorf("write %s: %w", f.path, err)
		}
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", e.p.argv[0], err)
	}
	e.set(func() { e.state, e.pid, e.healthy = StateStarting, cmd.Process.Pid, false })
	e.log.Info("engine started", "pid", cmd.Process.Pid, "addr", e.p.addr, "kv_events", e.p.kvEvents, "gpus", e.p.gpus)
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()

	inc, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	if e.p.kvEvents != "" {
		sub := eventSource(&e.p, e.log, e.zmq)
		wg.Go(func() {
			if err := sub.Run(inc, e.hub.Handler()); err != nil && inc.Err() == nil {
				e.log.Error("kv events subscriber failed", "err", err)
			}
		})
	}
	wg.Go(func() { e.watch(inc, cmd.Process.Pid) })

	select {
	case err := <-exited:
		if err == nil {
			err = errors.New("exited with status 0")
		}
		return err
	case <-ctx.Done():
		e.stop(cmd.Process.Pid, exited)
		return ctx.Err()
	}
}

// stop sends SIGTERM to the engine's process group and SIGKILL after StopTimeout.
func (e *proc) stop(pid int, exited <-chan error) {
	e.log.Info("stopping engine", "pid", pid)
	_ = signalGroup(pid, syscall.SIGTERM)
	t := time.NewTimer(time.Duration(e.cfg.StopTimeout))
	defer t.Stop()
	select {
	case <-exited:
		return
	case <-t.C:
		e.log.Warn("engine ignored SIGTERM; killing", "pid", pid)
		_ = signalGroup(pid, syscall.SIGKILL)
		<-exited
	}
}

// watch checks the engine's health path (/health) and scrapes /metrics every ScrapeInterval while the incarnation
// lives; an engine not healthy within StartTimeout is killed (and so restarted).
func (e *proc) watch(ctx context.Context, pid int) {
	every := time.Duration(e.cfg.ScrapeInterval)
	deadline := time.Now().Add(time.Duration(e.cfg.StartTimeout))
	base := "http://" + e.p.addr
	first := true
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		ok := healthy(ctx, e.http, base+e.p.health)
		var l engine.Load
		var err error
		if ok {
			l, err = scrape(ctx, e.http, base+"/metrics")
			if err != nil && ctx.Err() == nil {
				e.log.Debug("metrics scrape failed", "err", err)
			}
		}
		if ctx.Err() != nil {
			return
		}
		var starting bool
		e.set(func() {
			if ok {
				if e.state == StateStarting {
					e.state = StateRunning
				}
				if err == nil {
					e.cur = l
				}
			}
			e.healthy = ok
			starting = e.state == StateStarting
		})
		if ok && first {
			e.log.Info("engine healthy")
			first = false
		}
		e.load.PutLoad(&relayv1.LoadReport{
			Engine: e.p.instance, Running: uint32(l.Running), Waiting: uint32(l.Waiting), KvUsage: l.KVUsage,
			Healthy: ok, UnixNano: time.Now().UnixNano(),
		})
		if starting && time.Now().After(deadline) {
			e.log.Error("engine not healthy within start timeout; killing it", "timeout", time.Duration(e.cfg.StartTimeout))
			_ = signalGroup(pid, syscall.SIGKILL)
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// lineWriter copies an engine's output to w line by line, each line prefixed with the
// engine's name, and keeps the last lines for error messages. It is safe for concurrent use
// (stdout and stderr share it); w is shared by every engine under mu.
type lineWriter struct {
	prefix string
	w      io.Writer
	mu     *sync.Mutex

	own   sync.Mutex
	buf   []byte
	lines []string
}

const tailLines = 10

func (l *lineWriter) Write(p []byte) (int, error) {
	l.own.Lock()
	defer l.own.Unlock()
	l.buf = append(l.buf, p...)
	for {
		i := bytes.IndexByte(l.buf, '\n')
		if i < 0 {
			break
		}
		l.emit(string(l.buf[:i]))
		l.buf = l.buf[i+1:]
	}
	if len(l.buf) > 64<<10 { // a line without end: emit what we have
		l.emit(string(l.buf))
		l.buf = l.buf[:0]
	}
	return len(p), nil
}

func (l *lineWriter) emit(line string) {
	line = strings.TrimRight(line, "\r")
	l.lines = append(l.lines, line)
	if len(l.lines) > tailLines {
		l.lines = l.lines[len(l.lines)-tailLines:]
	}
	if l.w == nil {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	_, _ = io.WriteString(l.w, l.prefix+line+"\n")
}

func (l *lineWriter) tail() string {
	l.own.Lock()
	defer l.own.Unlock()
	return strings.Join(l.lines, "\n")
}
