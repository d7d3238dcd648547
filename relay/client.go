// Package relay carries a node's KV events and engine load to routers (api/relay/v1): the
// server workerd runs on the node (one Hub per engine: block set, numbered batches, snapshot
// on connect) and the Client a router reads them with. In a KV event's path it owns the hop
// from the node to the router; it owns no step of a request.
package relay

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	relayv1 "github.com/kvgate/kvgate/api/relay/v1"
	"github.com/kvgate/kvgate/backoff"
	"github.com/kvgate/kvgate/engine"
)

// LoadHandler is implemented by an engine.Handler that also wants the engine's load (the
// router's handler does). Load is called from a goroutine of its own, concurrently with Batch
// and Gap, each time workerd scrapes the engine (every ScrapeInterval); healthy reports the
// engine's /health.
type LoadHandler interface {
	Load(l engine.Load, healthy bool)
}

// ClientConfig configures a Client.
type ClientConfig struct {
	Addr   string       // workerd relay address (host:port), the Consul meta "workerd"
	Engine string       // engine instance name (the Consul service ID)
	Log    *slog.Logger // discards when nil
	// TLS, when set, dials the relay over TLS (with a client certificate in it: mutual TLS).
	TLS         *tls.Config
	DialOptions []grpc.DialOption // plaintext transport (or TLS) when empty
	MinBackoff  time.Duration     // first reconnect delay (100ms)
	MaxBackoff  time.Duration     // longest reconnect delay (5s)
}

// Client reads one engine's KV events from a workerd relay and presents them as the
// engine package's Handler, as if it were subscribed to the engine's ZMQ stream:
//   - a snapshot arrives as one Batch whose events are AllBlocksCleared followed by a
//     BlockStored per block (parents first), numbered with the snapshot's relay seq;
//   - live batches follow with consecutive relay seqs;
//   - after a reconnect it resumes where it left off when workerd still holds the batches;
//     otherwise Gap(last+1, seq) is called and a fresh snapshot batch follows.
//
// An engine restart arrives as a batch holding one AllBlocksCleared event.
type Client struct {
	cfg      ClientConfig
	streamID string
	lastSeq  uint64
	have     bool
}

// Client has the shape of an event source (engine.Subscriber's Run), so a router can take
// either.
var _ interface {
	Run(context.Context, engine.Handler) error
} = (*Client)(nil)

// NewClient returns a client for the engine named engineName on the workerd at addr.
func NewClient(addr, engineName string, log *slog.Logger) *Client {
	return NewClientConfig(ClientConfig{Addr: addr, Engine: engineName, Log: log})
}

// NewClientConfig returns a client with every setting explicit.
func NewClientConfig(cfg ClientConfig) *Client {
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if len(cfg.DialOptions) == 0 {
		creds := insecure.NewCredentials()
		if cfg.TLS != nil {
			creds = credentials.NewTLS(cfg.TLS)
		}
		cfg.DialOptions = []grpc.DialOption{grpc.WithTransportCredentials(creds)}
	}
	if cfg.MinBackoff <= 0 {
		cfg.MinBackoff = 100 * time.Millisecond
	}
	if cfg.MaxBackoff <= 0 {
		cfg.MaxBackoff = 5 * time.Second
	}
	cfg.Log = cfg.Log.With("workerd", cfg.Addr, "engine", cfg.Engine)
	return &Client{cfg: cfg}
}

// LastSeq returns the relay stream id and the last seq delivered; only meaningful between
// Run calls (Run owns them while it runs).
func (c *Client) LastSeq() (streamID string, seq uint64) { return c.streamID, c.lastSeq }

// Run delivers events to h, reconnecting with jittered backoff, until ctx ends; then it returns nil.
// Batch and Gap are called from Run's goroutine, one at a time; if h is a LoadHandler, Load
// is called from another goroutine. A Run after a returned Run resumes from the last seq.
func (c *Client) Run(ctx context.Context, h engine.Handler) error {
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

	retry := backoff.New(c.cfg.MinBackoff, c.cfg.MaxBackoff)
	for ctx.Err() == nil {
		progressed, err := c.stream(ctx, client, h)
		if ctx.Err() != nil {
			break
		}
		if progressed {
			retry.Reset()
		}
		c.cfg.Log.Debug("relay stream ended; reconnecting", "err", err)
		if !retry.Wait(ctx) {
			break
		}
	}
	return nil
}

// stream runs one Events call; progressed reports whether anything was delivered.
func (c *Client) stream(ctx context.Context, client relayv1.RelayClient, h engine.Handler) (progressed bool, err error) {
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

func (c *Client) loadLoop(ctx context.Context, client relayv1.RelayClient, h LoadHandler) {
	retry := backoff.New(c.cfg.MinBackoff, c.cfg.MaxBackoff)
	for ctx.Err() == nil {
		st, err := client.Load(ctx, &relayv1.LoadRequest{Engine: c.cfg.Engine})
		if err == nil {
			for {
				r, err := st.Recv()
				if err != nil {
					break
				}
				retry.Reset()
				h.Load(engine.Load{Running: float64(r.GetRunning()), Waiting: float64(r.GetWaiting()), KVUsage: r.GetKvUsage()}, r.GetHealthy())
			}
		}
		if !retry.Wait(ctx) {
			return
		}
	}
}
