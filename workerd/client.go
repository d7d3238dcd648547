package workerd

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	relayv1 "github.com/kvgate/kvgate/api/relay/v1"
	"github.com/kvgate/kvgate/engine"
)

// LoadHandler is implemented by an engine.Handler that also wants the engine's load. Load is
// called from a goroutine of its own, concurrently with Batch and Gap, each time workerd
// scrapes the engine (every ScrapeInterval); healthy reports the engine's /health.
type LoadHandler interface {
	Load(l engine.Load, healthy bool)
}

// RelayClientConfig configures a RelayClient.
type RelayClientConfig struct {
	Addr        string            // workerd relay address (host:port), the Consul meta "workerd"
	Engine      string            // engine instance name (the Consul service ID)
	Log         *slog.Logger      // discards when nil
	DialOptions []grpc.DialOption // insecure transport when empty
	MinBackoff  time.Duration     // first reconnect delay (100ms)
	MaxBackoff  time.Duration     // longest reconnect delay (5s)
}

// RelayClient reads one engine's KV events from a workerd relay and presents them as the
// engine package's Handler, as if it were subscribed to the engine's ZMQ stream:
//   - a snapshot arrives as one Batch whose events are AllBlocksCleared followed by a
//     BlockStored per block (parents first), numbered with the snapshot's relay seq;
//   - live batches follow with consecutive relay seqs;
//   - after a reconnect it resumes where it left off when workerd still holds the batches;
//     otherwise Gap(last+1, seq) is called and a fresh snapshot batch follows.
//
// An engine restart arrives as a batch holding one AllBlocksCleared event.
type RelayClient struct {
	cfg      RelayClientConfig
	streamID string
	lastSeq  uint64
	have     bool
}

// RelayClient has the shape of an event source (engine.Subscriber's Run), so a router can take
// either.
var _ interface {
	Run(context.Context, engine.Handler) error
} = (*RelayClient)(nil)

// NewRelayClient returns a client for the engine named engineName on the workerd at addr.
func NewRelayClient(addr, engineName string, log *slog.Logger) *RelayClient {
	return NewRelayClientConfig(RelayClientConfig{Addr: addr, Engine: engineName, Log: log})
}

// NewRelayClientConfig returns a client with every setting explicit.
func NewRelayClientConfig(cfg RelayClientConfig) *RelayClient {
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if len(cfg.DialOptions) == 0 {
		cfg.DialOptions = []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}
	}
	if cfg.MinBackoff <= 0 {
		cfg.MinBackoff = 100 * time.Millisecond
	}
	if cfg.MaxBackoff <= 0 {
		cfg.MaxBackoff = 5 * time.Second
	}
	cfg.Log = cfg.Log.With("workerd", cfg.Addr, "engine", cfg.Engine)
	return &RelayClient{cfg: cfg}
}

// LastSeq returns the relay stream id and the last seq delivered; only meaningful between
// Run calls (Run owns them while it runs).
func (c *RelayClient) LastSeq() (streamID string, seq uint64) { return c.streamID, c.lastSeq }

// Run delivers events to h, reconnecting with backoff, until ctx ends; then it returns nil.
// Batch and Gap are called from Run's goroutine, one at a time; if h is a LoadHandler, Load
// is called from another goroutine. A Run after a returned Run resumes from the last seq.
func (c *RelayClient) Run(ctx context.Context, h engine.Handler) error {
	conn, err := grpc.NewClient(c.cfg.Addr, c.cfg.DialOptions...)
	if err != nil {
		return err
	}
	defer conn.Close()
	client := relayv1.NewRelayClient(conn)
	done := make(chan struct{})
	if lh, ok := h.(LoadHandler); ok {
		go func() { defer close(done); c.loadLoop(ctx, client, lh) }()
	} else {
		close(done)
	}
	defer func() { <-done }()

	backoff := c.cfg.MinBackoff
	for ctx.Err() == nil {
		progressed, err := c.stream(ctx, client, h)
		if ctx.Err() != nil {
			break
		}
		if progressed {
			backoff = c.cfg.MinBackoff
		}
		c.cfg.Log.Debug("relay stream ended; reconnecting", "err", err, "after", backoff)
		if !sleepCtx(ctx, backoff) {
			break
		}
		backoff = min(2*backoff, c.cfg.MaxBackoff)
	}
	return nil
}

// stream runs one Events call; progressed reports whether anything was delivered.
func (c *RelayClient) stream(ctx context.Context, client relayv1.RelayClient, h engine.Handler) (progressed bool, err error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	st, err := client.Events(ctx, &relayv1.EventsRequest{Engine: c.cfg.Engine, StreamId: c.streamID, LastSeq: c.lastSeq})
	if err != nil {
		return false, err
	}
	var snap []engine.Event
	inSnap := false
	for {
		msg, err := st.Recv()
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = errors.New("relay closed the stream")
			}
			return progressed, err
		}
		switch body := msg.GetBody().(type) {
		case *relayv1.EventsResponse_Snapshot:
			if !inSnap {
				inSnap = true
				snap = append(snap[:0], engine.Event{Kind: engine.AllBlocksCleared, Medium: engine.MediumGPU})
			}
			for _, p := range body.Snapshot.GetEvents() {
				if e, ok := fromProto(p); ok {
					snap = append(snap, e)
				}
			}
			if !body.Snapshot.GetLast() {
				continue
			}
			if c.have {
				h.Gap(c.lastSeq+1, msg.GetSeq())
			}
			h.Batch(msg.GetSeq(), engine.EventBatch{TS: float64(time.Now().UnixNano()) / 1e9, Events: snap})
			snap, inSnap = nil, false
			c.streamID, c.lastSeq, c.have = msg.GetStreamId(), msg.GetSeq(), true
			progressed = true
		case *relayv1.EventsResponse_Batch:
			if inSnap || !c.have || msg.GetStreamId() != c.streamID || msg.GetSeq() != c.lastSeq+1 {
				// Out of protocol: start over with a snapshot.
				c.cfg.Log.Warn("relay sent an unexpected batch; resyncing", "seq", msg.GetSeq(), "last", c.lastSeq)
				c.streamID = ""
				return progressed, errors.New("relay protocol violation")
			}
			b := body.Batch
			evs := make([]engine.Event, 0, len(b.GetEvents()))
			for _, p := range b.GetEvents() {
				if e, ok := fromProto(p); ok {
					evs = append(evs, e)
				}
			}
			h.Batch(msg.GetSeq(), engine.EventBatch{TS: b.GetTs(), Events: evs})
			c.lastSeq = msg.GetSeq()
			progressed = true
		}
	}
}

func (c *RelayClient) loadLoop(ctx context.Context, client relayv1.RelayClient, h LoadHandler) {
	backoff := c.cfg.MinBackoff
	for ctx.Err() == nil {
		st, err := client.Load(ctx, &relayv1.LoadRequest{Engine: c.cfg.Engine})
		if err == nil {
			for {
				r, err := st.Recv()
				if err != nil {
					break
				}
				backoff = c.cfg.MinBackoff
				h.Load(engine.Load{Running: float64(r.GetRunning()), Waiting: float64(r.GetWaiting()), KVUsage: r.GetKvUsage()}, r.GetHealthy())
			}
		}
		if !sleepCtx(ctx, backoff) {
			return
		}
		backoff = min(2*backoff, c.cfg.MaxBackoff)
	}
}

func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
