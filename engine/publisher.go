package engine

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	stdlog "log"
	"log/slog"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/go-zeromq/zmq4"
)

// DefaultEndpoint is where a Publisher binds when given no endpoint: vLLM's KV-event port,
// on loopback (vLLM itself binds tcp://*:5557; binding wider is the caller's explicit
// choice, and the workerd relay is the network path for events).
const DefaultEndpoint = "tcp://127.0.0.1:5557"

// DefaultReplayEndpoint is the replay socket of vLLM's examples (port 5558), on loopback.
const DefaultReplayEndpoint = "tcp://127.0.0.1:5558"

// DefaultBufferSize is how many batches a publisher keeps for replay
// (vLLM's buffer_steps default).
const DefaultBufferSize = 10_000

// endSeq is the sequence frame that ends a replay: -1 as 8 big-endian bytes.
var endSeq = []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}

// PublisherConfig configures a Publisher.
type PublisherConfig struct {
	// Endpoint is the PUB address: bound by default (DefaultEndpoint when
	// empty; "tcp://127.0.0.1:0" picks a free port, see Addr), dialed when
	// Dial is set (for subscribers that bind, as llm-d-inference-sim does).
	Endpoint string
	Dial     bool
	// Topic is the first frame of every message ("" like vLLM's default).
	Topic string
	// ReplayEndpoint, when set, is bound as a ROUTER serving vLLM's replay
	// protocol from the last BufferSize batches.
	ReplayEndpoint string
	BufferSize     int           // DefaultBufferSize when 0
	Shape          Shape         // ShapeMap (current vLLM) when 0
	HashFormat     HashFormat    // HashInt (vLLM's default) when 0
	Logger         *slog.Logger  // slog.Default() when nil
	DialRetry      time.Duration // wait between dial attempts; 100ms when 0
	// DPRank, when set, is stamped on every batch published without one,
	// as vLLM's publisher stamps its data-parallel rank (0 by default).
	DPRank *int
	// Limits bounds what a subscriber (or replay client) may send; a connection that
	// breaks them is closed and counted in Metrics (nil: counted, not exported).
	Limits  ZMQLimits
	Metrics *ZMQMetrics
	// LogEvery is how often one kind of problem with a peer is logged at most, with a
	// count (DefaultLogEvery when 0).
	LogEvery time.Duration
}

// Publisher publishes KV-event batches exactly as vLLM's ZmqEventPublisher
// does: a PUB socket sending multipart [topic, seq (8 bytes big-endian),
// msgpack batch] with seq counting from 0, and an optional ROUTER replay
// socket. It is safe for concurrent use.
type Publisher struct {
	cfg    PublisherConfig
	log    *slog.Logger
	lg     *LogLimiter
	ctx    context.Context
	cancel context.CancelFunc
	pub    zmq4.Socket
	replay zmq4.Socket
	addr   string
	raddr  string
	wg     sync.WaitGroup

	mu     sync.Mutex
	next   uint64
	closed bool
	ring   []sent // the last BufferSize batches, oldest at ring[head]
	head   int
	size   int // capacity hint: the last payload's length
}

type sent struct {
	seq     uint64
	payload []byte
}

// NewPublisher binds (or dials) the PUB socket and the replay socket.
func NewPublisher(cfg PublisherConfig) (*Publisher, error) {
	if cfg.Endpoint == "" {
		cfg.Endpoint = DefaultEndpoint
	}
	if cfg.BufferSize <= 0 {
		cfg.BufferSize = DefaultBufferSize
	}
	if cfg.Shape == 0 {
		cfg.Shape = ShapeMap
	}
	if cfg.HashFormat == 0 {
		cfg.HashFormat = HashInt
	}
	if cfg.DialRetry <= 0 {
		cfg.DialRetry = 100 * time.Millisecond
	}
	if _, err := EncodeBatch(EventBatch{}, cfg.Shape, cfg.HashFormat); err != nil {
		return nil, err
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	ctx, cancel := context.WithCancel(context.Background())
	p := &Publisher{cfg: cfg, log: log, lg: NewLogLimiter(log, cfg.LogEvery), ctx: ctx, cancel: cancel}
	pctx := guarded(ctx, zmq4.Pub, cfg.Limits, cfg.Metrics, p.lg, cfg.DialRetry)
	if cfg.Dial {
		p.pub = zmq4.NewPub(pctx, zmq4.WithDialerMaxRetries(-1), zmq4.WithDialerRetry(cfg.DialRetry),
			zmq4.WithAutomaticReconnect(true), zmq4.WithLogger(zmqLogger(log)))
		p.addr = cfg.Endpoint
		p.wg.Go(func() {
			// Dial retries until the subscriber binds or Close cancels ctx.
			if err := p.pub.Dial(guardedEndpoint(cfg.Endpoint)); err != nil && ctx.Err() == nil {
				log.Error("kv events: dial failed", "endpoint", cfg.Endpoint, "err", err)
			}
		})
	} else {
		p.pub = zmq4.NewPub(pctx, zmq4.WithLogger(zmqLogger(log)))
		if err := p.pub.Listen(guardedEndpoint(cfg.Endpoint)); err != nil {
			cancel()
			p.pub.Close()
			return nil, fmt.Errorf("engine: bind KV-event publisher: %w", err)
		}
		p.addr = boundAddr(p.pub.Addr())
	}
	if cfg.ReplayEndpoint != "" {
		rctx := guarded(ctx, zmq4.Router, cfg.Limits, cfg.Metrics, p.lg, cfg.DialRetry)
		p.replay = zmq4.NewRouter(rctx, zmq4.WithLogger(zmqLogger(log)))
		if err := p.replay.Listen(guardedEndpoint(cfg.ReplayEndpoint)); err != nil {
			p.Close()
			return nil, fmt.Errorf("engine: bind KV-event replay socket: %w", err)
		}
		p.raddr = boundAddr(p.replay.Addr())
		p.wg.Go(p.serveReplay)
	}
	p.wg.Go(func() { flushEvery(ctx, p.lg) })
	return p, nil
}

// boundAddr renders a listener address as a dialable ZMQ endpoint: an
// unspecified host (0.0.0.0, ::) becomes 127.0.0.1.
func boundAddr(a net.Addr) string {
	if a == nil {
		return ""
	}
	host, port, err := net.SplitHostPort(a.String())
	if err != nil {
		return a.Network() + "://" + a.String()
	}
	if ip := net.ParseIP(host); ip == nil || ip.IsUnspecified() {
		host = "127.0.0.1"
	}
	return "tcp://" + net.JoinHostPort(host, port)
}

// Addr is the PUB endpoint: the bound address with the port resolved (and an
// unspecified host shown as 127.0.0.1), or the dialed endpoint.
func (p *Publisher) Addr() string { return p.addr }

// ReplayAddr is the bound replay endpoint, "" without one.
func (p *Publisher) ReplayAddr() string { return p.raddr }

// Publish encodes b in the configured shape and sends it with the next
// sequence number, which it returns. A PUB socket drops messages nobody
// subscribes to; the replay buffer keeps them.
func (p *Publisher) Publish(b EventBatch) (uint64, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return 0, errors.New("engine: publisher closed")
	}
	if b.DPRank == nil {
		b.DPRank = p.cfg.DPRank
	}
	payload, err := AppendBatch(make([]byte, 0, p.size), b, p.cfg.Shape, p.cfg.HashFormat)
	if err != nil {
		return 0, err
	}
	p.size = len(payload)
	seq := p.next
	var seqb [8]byte
	binary.BigEndian.PutUint64(seqb[:], seq)
	msg := zmq4.NewMsgFrom([]byte(p.cfg.Topic), seqb[:], payload)
	if err := p.pub.Send(msg); err != nil {
		return 0, fmt.Errorf("engine: publish seq %d: %w", seq, err)
	}
	p.next++
	if len(p.ring) < p.cfg.BufferSize {
		p.ring = append(p.ring, sent{seq, payload})
	} else {
		p.ring[p.head] = sent{seq, payload}
		p.head = (p.head + 1) % len(p.ring)
	}
	return seq, nil
}

// since returns the buffered batches with seq >= from, oldest first.
func (p *Publisher) since(from uint64) []sent {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []sent
	for i := range p.ring {
		s := p.ring[(p.head+i)%len(p.ring)]
		if s.seq >= from {
			out = append(out, s)
		}
	}
	return out
}

// serveReplay answers replay requests as vLLM does: a request is
// [identity, "", start seq (8 bytes big-endian)]; the reply is one message
// [identity, "", seq, payload] per buffered batch with seq >= start, then
// [identity, "", -1 (8 bytes), ""]. A request without the empty delimiter
// frame (a raw DEALER) is answered without it.
func (p *Publisher) serveReplay() {
	for {
		msg, err := p.replay.Recv()
		if p.ctx.Err() != nil {
			return
		}
		if err != nil {
			p.lg.Warn("kv events: replay receive failed", "err", err)
			continue
		}
		f := msg.Frames
		var id []byte
		var prefix [][]byte
		switch {
		case len(f) == 3 && len(f[1]) == 0 && len(f[2]) == 8:
			id, prefix = f[0], [][]byte{f[0], {}}
		case len(f) == 2 && len(f[1]) == 8:
			id, prefix = f[0], [][]byte{f[0]}
		default:
			p.lg.Warn("kv events: invalid replay request", "frames", len(f))
			continue
		}
		start := binary.BigEndian.Uint64(f[len(f)-1])
		batches := p.since(start)
		p.log.Debug("kv events: replay", "peer", string(id), "from", start, "batches", len(batches))
		for _, s := range batches {
			var seqb [8]byte
			binary.BigEndian.PutUint64(seqb[:], s.seq)
			if err := p.replay.Send(zmq4.NewMsgFrom(append(prefix[:len(prefix):len(prefix)], seqb[:], s.payload)...)); err != nil {
				break
			}
		}
		_ = p.replay.Send(zmq4.NewMsgFrom(append(prefix[:len(prefix):len(prefix)], endSeq, nil)...))
	}
}

// Close stops the sockets and waits for the publisher's goroutines.
func (p *Publisher) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	p.mu.Unlock()
	p.cancel()
	err := p.pub.Close()
	if p.replay != nil {
		if rerr := p.replay.Close(); err == nil {
			err = rerr
		}
	}
	p.wg.Wait()
	if err != nil && isClosedErr(err) {
		err = nil
	}
	return err
}

func isClosedErr(err error) bool {
	return errors.Is(err, net.ErrClosed) || errors.Is(err, context.Canceled) ||
		strings.Contains(err.Error(), "closed")
}

// zmqLogger routes zmq4's own log lines to log at debug level.
func zmqLogger(log *slog.Logger) *stdlog.Logger {
	return slog.NewLogLogger(log.Handler(), slog.LevelDebug)
}
