package engine

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-zeromq/zmq4"
	"github.com/go-zeromq/zmq4/transport"
	"github.com/prometheus/client_golang/prometheus"
)

// zmq4 builds every connection on a transport looked up by the endpoint's scheme. The
// sockets of this package use schemes of their own (guardedSchemes), registered once,
// whose connections pass what the peer sends through a frameReader before zmq4 reads it.
// The transports are stateless: each socket's limits, metrics and log travel in the
// context it was created with, which zmq4 hands to Dial and Listen.
var guardedSchemes = map[string]string{"tcp": "kvgate+tcp", "ipc": "kvgate+ipc"}

func init() {
	for network, scheme := range guardedSchemes {
		proto := network
		if network == "ipc" {
			proto = "unix"
		}
		if err := zmq4.RegisterTransport(scheme, guardedTransport{proto: proto, base: transport.New(proto)}); err != nil {
			panic(err) // only a duplicate name fails: a programming error
		}
	}
}

// guardedEndpoint rewrites a tcp:// or ipc:// endpoint to its guarded scheme; others
// (inproc://, in-process only) are returned unchanged.
func guardedEndpoint(ep string) string {
	network, rest, ok := strings.Cut(ep, "://")
	if s, found := guardedSchemes[network]; ok && found {
		return s + "://" + rest
	}
	return ep
}

// ZMQMetrics counts the ZMQ connections this package's sockets close because of what the
// peer sent. One per registry, shared by every socket; safe for concurrent use.
type ZMQMetrics struct {
	rejected *prometheus.CounterVec
}

// NewZMQMetrics registers the counters with reg (nil: counted, not exported). Called again
// with the same registry it returns counters backed by the ones already registered.
func NewZMQMetrics(reg prometheus.Registerer) *ZMQMetrics {
	c := prometheus.NewCounterVec(prometheus.CounterOpts{Name: MetricZMQRejected,
		Help: "ZMQ connections closed because the peer broke the protocol or the size limits, by socket kind and reason."},
		[]string{"socket", "reason"})
	if reg != nil {
		if err := reg.Register(c); err != nil {
			var are prometheus.AlreadyRegisteredError
			if errors.As(err, &are) {
				if existing, ok := are.ExistingCollector.(*prometheus.CounterVec); ok {
					c = existing
				}
			}
		}
	}
	return &ZMQMetrics{rejected: c}
}

// guard is one socket's protection: what its connections may receive, where a rejection
// is counted and logged.
type guard struct {
	self  zmq4.SocketType
	lim   ZMQLimits
	m     *ZMQMetrics
	log   *LogLimiter
	retry time.Duration // a dialing socket waits this long before re-dialing a peer it rejected

	rejectedAt atomic.Int64 // unix nanoseconds of the last rejection
}

type guardKey struct{}

// guarded returns ctx carrying a guard for a socket of kind self; create the socket with it.
func guarded(ctx context.Context, self zmq4.SocketType, lim ZMQLimits, m *ZMQMetrics, log *LogLimiter, retry time.Duration) context.Context {
	if m == nil {
		m = NewZMQMetrics(nil)
	}
	return context.WithValue(ctx, guardKey{}, &guard{self: self, lim: lim.withDefaults(), m: m, log: log, retry: retry})
}

func (g *guard) rejected(c net.Conn, err error) {
	reason := ReasonProtocol
	var ze *zmtpError
	if errors.As(err, &ze) {
		reason = ze.reason
	}
	g.rejectedAt.Store(time.Now().UnixNano())
	g.m.rejected.WithLabelValues(strings.ToLower(string(g.self)), reason).Inc()
	g.log.Warn("zmq: peer connection closed", "socket", string(g.self), "peer", c.RemoteAddr().String(),
		"reason", reason, "err", err)
}

// wrap guards c, a connection of the socket whose context is ctx. HandshakeTimeout bounds
// the handshake. A dialed connection is also closed when the socket closes (ctx): closing
// then never waits for its handshake, and one that zmq4 adds while the socket is closing (a
// re-dial racing Close) does not outlive it. (An accepted one is left to the timeout and to
// zmq4: closing it at once would fail the handshake of a subscriber re-dialing a publisher
// that is going away while its listener still accepts.)
func (g *guard) wrap(ctx context.Context, c net.Conn, dialed bool) net.Conn {
	_ = c.SetReadDeadline(time.Now().Add(g.lim.HandshakeTimeout))
	gc := &guardedConn{Conn: c, g: g, z: newFrameReader(g.self, g.lim), stop: func() bool { return false }}
	if dialed {
		gc.stop = context.AfterFunc(ctx, func() { c.Close() })
	}
	return gc
}

type guardedTransport struct {
	proto string
	base  transport.Transport
}

func (t guardedTransport) Dial(ctx context.Context, d transport.Dialer, addr string) (net.Conn, error) {
	g, _ := ctx.Value(guardKey{}).(*guard)
	if g != nil {
		// Re-dialing a peer that was just rejected waits, so a hostile publisher cannot
		// keep the socket busy reconnecting.
		if wait := time.Until(time.Unix(0, g.rejectedAt.Load()).Add(g.retry)); wait > 0 {
			t := time.NewTimer(wait)
			select {
			case <-ctx.Done():
				t.Stop()
				return nil, ctx.Err()
			case <-t.C:
			}
		}
	}
	c, err := t.base.Dial(ctx, d, addr)
	if err != nil || g == nil {
		return c, err
	}
	gc := g.wrap(ctx, c, true).(*guardedConn)
	// Both ends of ZMTP send their greeting at once. Hand zmq4 only a connection whose peer
	// has begun its greeting: one that closes first (a publisher going away whose listener
	// still accepted) is a failed dial, which zmq4 retries, while a handshake failure would
	// end its re-dialing for good.
	var first [greetingLen]byte
	n, err := gc.Read(first[:])
	if err != nil {
		gc.Conn.Close()
		return nil, fmt.Errorf("zmtp: %s closed before its greeting: %w", addr, err)
	}
	gc.pending = first[:n:n]
	return gc, nil
}

func (t guardedTransport) Listen(ctx context.Context, addr string) (net.Listener, error) {
	l, err := t.base.Listen(ctx, addr)
	g, _ := ctx.Value(guardKey{}).(*guard)
	if err != nil || g == nil {
		return l, err
	}
	return guardedListener{Listener: l, g: g, ctx: ctx}, nil
}

func (t guardedTransport) Addr(ep string) (string, error) { return t.base.Addr(ep) }

type guardedListener struct {
	net.Listener
	g   *guard
	ctx context.Context
}

func (l guardedListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return l.g.wrap(l.ctx, c, false), nil
}

// guardedConn checks what the peer sends before zmq4 reads it. zmq4 completes the
// handshake synchronously in its accept loop and leaks connections whose handshake fails,
// so until the peer's READY has been read the connection has a read deadline, and a
// failed handshake closes it here.
type guardedConn struct {
	net.Conn
	g    *guard
	z    *frameReader
	stop func() bool // cancels closing on the socket's end once the connection is over

	once    sync.Once
	wonce   sync.Once   // a slow reader is counted once
	pending []byte      // the peer's first bytes, read by Dial
	err     error       // the rejection, returned by every later Read
	shaken  atomic.Bool // the handshake completed: the deadline is cleared
}

func (c *guardedConn) Read(p []byte) (int, error) {
	if c.err != nil {
		return 0, c.err
	}
	if len(c.pending) > 0 { // read (and checked) while dialing
		n := copy(p, c.pending)
		c.pending = c.pending[n:]
		return n, nil
	}
	n, err := c.Conn.Read(p)
	if n > 0 {
		if ferr := c.z.feed(p[:n]); ferr != nil {
			c.fail(ferr)
			return 0, c.err
		}
		if !c.shaken.Load() && c.z.ready {
			c.shaken.Store(true)
			_ = c.Conn.SetReadDeadline(time.Time{})
		}
	}
	if err != nil {
		c.stop() // the connection is over: nothing left to close when the socket closes
	}
	if err != nil && !c.shaken.Load() {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			c.fail(reject(ReasonHandshake, "no handshake within %v", c.g.lim.HandshakeTimeout))
			return n, c.err
		}
		c.Conn.Close()
	}
	return n, err
}

// Write bounds each write by WriteTimeout and reports a failure as a timeout (see
// writeError) after closing the connection: its reader, which then fails too, is the one
// that tells zmq4.
func (c *guardedConn) Write(p []byte) (int, error) {
	_ = c.Conn.SetWriteDeadline(time.Now().Add(c.g.lim.WriteTimeout))
	n, err := c.Conn.Write(p)
	if err != nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			c.wonce.Do(func() {
				c.g.rejected(c.Conn, reject(ReasonSlowReader, "peer read nothing for %v", c.g.lim.WriteTimeout))
			})
		}
		c.Conn.Close()
		return n, writeError{err}
	}
	return n, nil
}

// writeError is a failed write, reported to zmq4 as a timeout. On a non-timeout error zmq4
// marks the connection closed and a dialing socket re-dials right there, in the writing
// goroutine; when the write is the subscription a SUB socket sends while adding a new
// connection, it holds the socket's lock and the re-dial waits for that lock forever (seen
// with a publisher rejected right after its handshake). The reader of the same connection
// fails too, holding no lock, and zmq4 re-dials from there.
type writeError struct{ err error }

func (e writeError) Error() string   { return e.err.Error() }
func (e writeError) Timeout() bool   { return true }
func (e writeError) Temporary() bool { return true }

func (c *guardedConn) fail(err error) {
	c.err = err
	c.once.Do(func() {
		c.stop()
		c.Conn.Close()
		c.g.rejected(c.Conn, err)
	})
}
