package engine

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-zeromq/zmq4"
)

// SubscriberConfig configures a Subscriber.
type SubscriberConfig struct {
	// Endpoint is the engine's PUB endpoint to connect to, or with Bind the
	// address to bind for publishers that dial (llm-d-inference-sim);
	// "tcp://127.0.0.1:0" binds a free port, see Addr.
	Endpoint string
	Bind     bool
	// Topic is the subscription prefix; "" receives every topic.
	Topic string
	// ReplayEndpoint is the engine's replay ROUTER; "" means lost batches
	// cannot be recovered and are reported through Handler.Gap.
	ReplayEndpoint string
	Logger         *slog.Logger  // slog.Default() when nil
	ReplayTimeout  time.Duration // how long a replay may take; 2s when 0
	DialRetry      time.Duration // wait between dial attempts; 100ms when 0
	// Limits bounds what a publisher (or replay socket) may send; a connection that
	// breaks them is closed and counted in Metrics (nil: counted, not exported).
	Limits  ZMQLimits
	Metrics *ZMQMetrics
	// LogEvery is how often one kind of problem with this source (malformed or
	// undecodable messages, lost batches, too many topics, rejected connections) is logged
	// at most, as one line with a count (DefaultLogEvery when 0).
	LogEvery time.Duration
}

// Handler receives what a Subscriber reads. Its methods are called from the
// goroutine running Subscriber.Run, one at a time; the batch is the
// handler's to keep.
type Handler interface {
	// Batch is called in sequence order, at most once per sequence number
	// (per publisher incarnation).
	Batch(seq uint64, b EventBatch)
	// Gap reports that the batches from expected up to (not including) got
	// are lost and cannot be replayed, or, when got < expected, that the
	// publisher restarted (its sequence went back, or its stream identity
	// changed). Either way the engine's cache state is unknown: clear what
	// is known about it; batches from got onwards follow.
	Gap(expected, got uint64)
}

// TopicHandler is a Handler that also learns each batch's topic. A bound
// Subscriber that several publishers dial (llm-d-inference-sim pods, each
// with its own "kv@<pod>@<model>" topic) keeps one sequence per topic; when
// its handler is a TopicHandler, Run calls TopicBatch and TopicGap instead
// of Batch and Gap, with the same contract per topic.
type TopicHandler interface {
	Handler
	TopicBatch(topic string, seq uint64, b EventBatch)
	TopicGap(topic string, expected, got uint64)
}

// Subscriber reads one engine's KV-event stream (vLLM's ZmqEventPublisher
// protocol), detects sequence gaps and fills them from the replay socket.
// It remembers the last sequence delivered across Run calls, so a Run
// after a stopped one resumes where it left off (replaying what it missed).
type Subscriber struct {
	cfg   SubscriberConfig
	log   *slog.Logger
	lg    *LogLimiter
	addr  atomic.Pointer[string]
	ready chan struct{}
	once  sync.Once

	running atomic.Bool
	topics  map[string]*seqState // by topic; owned by the running Run
}

// seqState is what a Subscriber knows of one publisher's sequence.
type seqState struct {
	have   bool
	last   uint64
	stream []byte // vLLM's 16-byte publisher stream id, nil when not sent
}

// sink routes a topic's batches and gaps to the handler.
type sink struct {
	h     Handler
	th    TopicHandler
	topic string
}

func (k sink) batch(seq uint64, b EventBatch) {
	if k.th != nil {
		k.th.TopicBatch(k.topic, seq, b)
		return
	}
	k.h.Batch(seq, b)
}

func (k sink) gap(expected, got uint64) {
	if k.th != nil {
		k.th.TopicGap(k.topic, expected, got)
		return
	}
	k.h.Gap(expected, got)
}

// NewSubscriber returns a Subscriber; nothing happens until Run.
func NewSubscriber(cfg SubscriberConfig) *Subscriber {
	if cfg.ReplayTimeout <= 0 {
		cfg.ReplayTimeout = 2 * time.Second
	}
	if cfg.DialRetry <= 0 {
		cfg.DialRetry = 100 * time.Millisecond
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	log = log.With("kv_events", cfg.Endpoint) // not "endpoint": the router names its endpoint so
	return &Subscriber{cfg: cfg, log: log, lg: NewLogLimiter(log, cfg.LogEvery), ready: make(chan struct{}),
		topics: map[string]*seqState{}}
}

// Ready is closed once the first Run has bound its socket (Bind) or started
// dialing; wait on it before reading Addr.
func (s *Subscriber) Ready() <-chan struct{} { return s.ready }

// Addr is the bound endpoint when Bind (the port resolved, an unspecified
// host shown as 127.0.0.1), else the endpoint dialed; "" before Ready.
func (s *Subscriber) Addr() string {
	if a := s.addr.Load(); a != nil {
		return *a
	}
	return ""
}

// Run subscribes and calls h until ctx is done, then returns nil after every
// goroutine it started has ended. Connections that drop are re-dialed; a
// bind failure or an invalid endpoint is returned at once. Run must not be called
// again before it returns.
func (s *Subscriber) Run(ctx context.Context, h Handler) error {
	if !s.running.CompareAndSwap(false, true) {
		return errors.New("engine: Subscriber.Run is already running")
	}
	defer s.running.Store(false)

	var wg sync.WaitGroup
	defer wg.Wait()
	dialErr := make(chan error, 1)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	zlog := zmq4.WithLogger(zmqLogger(s.log))
	sctx := guarded(ctx, zmq4.Sub, s.cfg.Limits, s.cfg.Metrics, s.lg, s.cfg.DialRetry)
	var sub zmq4.Socket
	if s.cfg.Bind {
		sub = zmq4.NewSub(sctx, zlog)
	} else {
		sub = zmq4.NewSub(sctx, zlog, zmq4.WithDialerMaxRetries(-1), zmq4.WithDialerRetry(s.cfg.DialRetry),
			zmq4.WithAutomaticReconnect(true))
	}
	defer sub.Close()
	if err := sub.SetOption(zmq4.OptionSubscribe, s.cfg.Topic); err != nil {
		return fmt.Errorf("engine: subscribe %q: %w", s.cfg.Topic, err)
	}
	if s.cfg.Bind {
		if err := sub.Listen(guardedEndpoint(s.cfg.Endpoint)); err != nil {
			return fmt.Errorf("engine: bind KV-event subscriber: %w", err)
		}
		a := boundAddr(sub.Addr())
		s.addr.Store(&a)
	} else {
		a := s.cfg.Endpoint
		s.addr.Store(&a)
		// Dial retries until it connects; it fails only for an invalid
		// endpoint (or when ctx ends).
		wg.Go(func() {
			if err := sub.Dial(guardedEndpoint(s.cfg.Endpoint)); err != nil && ctx.Err() == nil {
				dialErr <- err
			}
		})
	}
	s.once.Do(func() { close(s.ready) })

	msgs := make(chan zmq4.Msg, 64)
	wg.Go(func() { recvLoop(ctx, sub, msgs) })

	rp := &replayClient{s: s}
	defer rp.close()
	defer s.lg.flush(true)
	flush := time.NewTicker(s.lg.every)
	defer flush.Stop()
	for {
		select {
		case <-flush.C:
			s.lg.flush(false)
		case <-ctx.Done():
			return nil
		case err := <-dialErr:
			return fmt.Errorf("engine: dial KV-event publisher: %w", err)
		case m := <-msgs:
			s.handle(ctx, m, h, rp)
		}
	}
}

// recvLoop moves messages from sock to out until ctx is done.
func recvLoop(ctx context.Context, sock zmq4.Socket, out chan<- zmq4.Msg) {
	for {
		m, err := sock.Recv()
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			select {
			case <-ctx.Done():
				return
			case <-time.After(10 * time.Millisecond):
			}
			continue
		}
		select {
		case out <- m:
		case <-ctx.Done():
			return
		}
	}
}

// handle applies one live message: [topic, seq, payload], where seq is 8
// bytes big-endian, optionally followed by a 16-byte publisher stream id
// (vLLM with a snapshot endpoint).
func (s *Subscriber) handle(ctx context.Context, m zmq4.Msg, h Handler, rp *replayClient) {
	if len(m.Frames) != 3 || len(m.Frames[1]) < 8 {
		s.lg.Warn("kv events: malformed message", "frames", len(m.Frames))
		return
	}
	topic := string(m.Frames[0])
	st := s.topics[topic]
	if st == nil {
		if len(s.topics) >= maxTopics {
			s.lg.Warn("kv events: too many topics, message dropped", "topic", topic, "limit", maxTopics)
			return
		}
		st = &seqState{}
		s.topics[topic] = st
	}
	out := sink{h: h, topic: topic}
	out.th, _ = h.(TopicHandler)

	seq := binary.BigEndian.Uint64(m.Frames[1][:8])
	var stream []byte
	if len(m.Frames[1]) >= 24 {
		stream = m.Frames[1][8:24]
	}
	if st.have && (seq <= st.last || (st.stream != nil && stream != nil && !bytes.Equal(stream, st.stream))) {
		s.lg.Info("kv events: publisher restarted", "topic", topic, "last", st.last, "seq", seq)
		out.gap(st.last+1, seq)
		st.have = false
		rp.close() // the replay socket restarted too: re-dial on next use
	}
	if stream == nil {
		st.stream = nil
	} else {
		st.stream = append(st.stream[:0], stream...)
	}
	expected := uint64(0)
	if st.have {
		expected = st.last + 1
	}
	if seq > expected {
		covered := expected
		if s.cfg.ReplayEndpoint != "" {
			batches, err := rp.fetch(ctx, expected, seq)
			if err != nil {
				s.lg.Warn("kv events: replay failed", "topic", topic, "from", expected, "to", seq, "err", err)
			}
			for _, b := range batches {
				if b.seq < covered {
					continue
				}
				if b.seq > covered {
					out.gap(covered, b.seq)
				}
				s.deliver(st, out, b.seq, b.payload)
				covered = b.seq + 1
			}
		}
		switch {
		case covered >= seq:
		case !st.have && covered == 0:
			// The first batch seen from a publisher: what it sent before we joined is
			// unknown (the Gap says so), but nothing we knew of was lost.
			s.lg.Info("kv events: joined a publisher mid-stream", "topic", topic, "seq", seq)
			out.gap(covered, seq)
		default:
			s.lg.Warn("kv events: batches lost", "topic", topic, "from", covered, "to", seq)
			out.gap(covered, seq)
		}
	}
	s.deliver(st, out, seq, m.Frames[2])
}

// maxTopics bounds the per-topic state a bound Subscriber keeps.
const maxTopics = 4096

// deliver decodes and hands over one batch; an undecodable batch is a gap of
// one.
func (s *Subscriber) deliver(st *seqState, out sink, seq uint64, payload []byte) {
	st.have, st.last = true, seq
	b, err := DecodeBatch(payload)
	if err != nil {
		s.lg.Warn("kv events: undecodable batch", "topic", out.topic, "seq", seq, "err", err)
		out.gap(seq, seq+1)
		return
	}
	out.batch(seq, b)
}

// replayClient speaks vLLM's replay protocol over a DEALER socket, dialed on
// first use and re-dialed after a failure.
type replayClient struct {
	s      *Subscriber
	sock   zmq4.Socket
	cancel context.CancelFunc
	msgs   chan zmq4.Msg
	wg     sync.WaitGroup
}

func (rc *replayClient) close() {
	if rc.sock == nil {
		return
	}
	rc.cancel()
	rc.sock.Close()
	rc.wg.Wait()
	rc.sock = nil
}

// fetch asks for every buffered batch from `from` on and returns those
// before `before`, in order. It returns what arrived before an error.
func (rc *replayClient) fetch(ctx context.Context, from, before uint64) ([]sent, error) {
	if rc.sock == nil {
		dctx, cancel := context.WithCancel(ctx)
		timeout := rc.s.cfg.ReplayTimeout
		cfg := rc.s.cfg
		lim := cfg.Limits.withDefaults()
		lim.HandshakeTimeout = min(lim.HandshakeTimeout, timeout) // Run waits for it
		gctx := guarded(dctx, zmq4.Dealer, lim, cfg.Metrics, rc.s.lg, cfg.DialRetry)
		sock := zmq4.NewDealer(gctx, zmq4.WithLogger(zmqLogger(rc.s.log)), zmq4.WithDialerMaxRetries(2),
			zmq4.WithDialerRetry(cfg.DialRetry), zmq4.WithDialerTimeout(timeout), zmq4.WithTimeout(timeout))
		if err := sock.Dial(guardedEndpoint(cfg.ReplayEndpoint)); err != nil {
			cancel()
			sock.Close()
			return nil, err
		}
		rc.sock, rc.cancel, rc.msgs = sock, cancel, make(chan zmq4.Msg, 64)
		rc.wg.Go(func() { recvLoop(dctx, sock, rc.msgs) })
	}
	var seqb [8]byte
	binary.BigEndian.PutUint64(seqb[:], from)
	// The empty delimiter frame makes the request look like a REQ socket's,
	// which is what vLLM's ROUTER expects: [identity, "", start].
	if err := rc.sock.Send(zmq4.NewMsgFrom([]byte{}, seqb[:])); err != nil {
		rc.close()
		return nil, err
	}
	timer := time.NewTimer(rc.s.cfg.ReplayTimeout)
	defer timer.Stop()
	var out []sent
	for {
		select {
		case <-ctx.Done():
			return out, ctx.Err()
		case <-timer.C:
			rc.close() // late replies must not mix with the next request
			return out, fmt.Errorf("no end of replay within %v", rc.s.cfg.ReplayTimeout)
		case m := <-rc.msgs:
			seq, payload, ok := replayFrames(m.Frames)
			if !ok {
				rc.s.lg.Warn("kv events: malformed replay message", "frames", len(m.Frames))
				continue
			}
			if bytes.Equal(seq, endSeq) {
				return out, nil
			}
			n := binary.BigEndian.Uint64(seq)
			if n >= from && n < before {
				out = append(out, sent{n, payload})
			}
		}
	}
}

// replayFrames reads a replay reply as a DEALER receives it: an optional
// empty delimiter, then [seq, payload] (vLLM) or [topic, seq, payload]
// (vLLM revisions that repeat the topic).
func replayFrames(f [][]byte) (seq, payload []byte, ok bool) {
	if len(f) >= 3 && len(f[0]) == 0 {
		f = f[1:]
	}
	switch len(f) {
	case 2:
		seq, payload = f[0], f[1]
	case 3:
		seq, payload = f[1], f[2]
	default:
		return nil, nil, false
	}
	if len(seq) < 8 {
		return nil, nil, false
	}
	return seq[:8], payload, true
}
