package engine_test

import (
	"context"
	"encoding/binary"
	"net"
	"sync"
	"testing"
	"time"

	"log/slog"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kvgate/kvgate/engine"
	"github.com/kvgate/kvgate/engine/zmtptest"
	"github.com/kvgate/kvgate/polltest"
)

// rejected reads the MetricZMQRejected counter of one socket kind and reason.
func rejected(t *testing.T, reg *prometheus.Registry, socket, reason string) float64 {
	t.Helper()
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fams {
		if f.GetName() != engine.MetricZMQRejected {
			continue
		}
		for _, m := range f.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["socket"] == socket && labels["reason"] == reason {
				return m.GetCounter().GetValue()
			}
		}
	}
	return 0
}

// waitRejected waits until the counter reaches want.
func waitRejected(t *testing.T, reg *prometheus.Registry, socket, reason string, want float64) {
	t.Helper()
	if !polltest.Wait(10*time.Second, func() bool { return rejected(t, reg, socket, reason) >= want }) {
		t.Fatalf("%s{socket=%q,reason=%q} = %v, want %v", engine.MetricZMQRejected, socket, reason,
			rejected(t, reg, socket, reason), want)
	}
}

func payload(t *testing.T, i int) []byte {
	t.Helper()
	b, err := engine.EncodeBatch(testBatch(i), engine.ShapeMap, engine.HashInt)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestZMQHostileFrameHeader sends each socket kind kvgate opens a frame header claiming
// 2^62 bytes after a correct ZMTP handshake (zmq4 v0.17.0 panics on it and takes the
// process down): the connection is closed and counted, and a well-behaved peer is served
// afterwards.
func TestZMQHostileFrameHeader(t *testing.T) {
	tests := []struct {
		name   string
		socket string // the label of the socket under test
		// run starts the socket under test and returns the hostile peer, handshaken,
		// and a check that a well-behaved peer is served afterwards.
		run func(t *testing.T, m *engine.ZMQMetrics) (hostile *zmtptest.Peer, after func())
	}{{
		name: "subscriber dialing a publisher", socket: "sub",
		run: func(t *testing.T, m *engine.ZMQMetrics) (*zmtptest.Peer, func()) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { ln.Close() })
			s := engine.NewSubscriber(engine.SubscriberConfig{Endpoint: "tcp://" + ln.Addr().String(), Topic: "kv",
				Metrics: m, DialRetry: 10 * time.Millisecond, Logger: quiet})
			r := newRecorder()
			runSub(t, s, r)
			bad := zmtptest.Accept(t, ln)
			bad.Handshake("PUB")
			return bad, func() {
				// The subscriber re-dials; this time the publisher behaves.
				good := zmtptest.Accept(t, ln)
				good.Handshake("PUB")
				good.Write(zmtptest.Message([]byte("kv"), be(0), payload(t, 0)))
				waitFor(t, r, "the batch", func(seqs []uint64, _ [][2]uint64) bool { return len(seqs) == 1 }, nil)
			}
		},
	}, {
		name: "subscriber bound", socket: "sub",
		run: func(t *testing.T, m *engine.ZMQMetrics) (*zmtptest.Peer, func()) {
			s := engine.NewSubscriber(engine.SubscriberConfig{Endpoint: "tcp://127.0.0.1:0", Bind: true,
				Metrics: m, Logger: quiet})
			r := newRecorder()
			runSub(t, s, r)
			bad := zmtptest.Dial(t, s.Addr())
			bad.Handshake("PUB")
			return bad, func() {
				p, err := engine.NewPublisher(engine.PublisherConfig{Endpoint: s.Addr(), Dial: true, Logger: quiet})
				if err != nil {
					t.Fatal(err)
				}
				defer p.Close()
				n := 0
				waitFor(t, r, "a batch", func(seqs []uint64, _ [][2]uint64) bool { return len(seqs) > 0 },
					func() { publish(t, p, n); n++ })
			}
		},
	}, {
		name: "publisher", socket: "pub",
		run: func(t *testing.T, m *engine.ZMQMetrics) (*zmtptest.Peer, func()) {
			p, err := engine.NewPublisher(engine.PublisherConfig{Endpoint: "tcp://127.0.0.1:0", Metrics: m, Logger: quiet})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { p.Close() })
			bad := zmtptest.Dial(t, p.Addr())
			bad.Handshake("SUB")
			return bad, func() {
				s := engine.NewSubscriber(engine.SubscriberConfig{Endpoint: p.Addr(), Logger: quiet})
				r := newRecorder()
				runSub(t, s, r)
				n := 0
				waitFor(t, r, "a batch", func(seqs []uint64, _ [][2]uint64) bool { return len(seqs) > 0 },
					func() { publish(t, p, n); n++ })
			}
		},
	}, {
		name: "replay router", socket: "router",
		run: func(t *testing.T, m *engine.ZMQMetrics) (*zmtptest.Peer, func()) {
			p, err := engine.NewPublisher(engine.PublisherConfig{Endpoint: "tcp://127.0.0.1:0",
				ReplayEndpoint: "tcp://127.0.0.1:0", Metrics: m, Logger: quiet})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { p.Close() })
			publish(t, p, 0)
			bad := zmtptest.Dial(t, p.ReplayAddr())
			bad.Handshake("DEALER")
			return bad, func() {
				good := zmtptest.Dial(t, p.ReplayAddr())
				good.Handshake("DEALER")
				good.Write(zmtptest.Message(nil, be(0)))
				var seqs []uint64
				for {
					f, err := good.ReadMessage()
					if err != nil {
						t.Fatalf("replay reply: %v", err)
					}
					if len(f) != 3 || len(f[1]) != 8 {
						t.Fatalf("replay reply frames %q", f)
					}
					if binary.BigEndian.Uint64(f[1]) == 1<<64-1 {
						break
					}
					seqs = append(seqs, binary.BigEndian.Uint64(f[1]))
				}
				if len(seqs) != 1 || seqs[0] != 0 {
					t.Fatalf("replayed %v, want [0]", seqs)
				}
			}
		},
	}, {
		name: "replay client dialing a replay socket", socket: "dealer",
		run: func(t *testing.T, m *engine.ZMQMetrics) (*zmtptest.Peer, func()) {
			e := newRawEngine(t, false)
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { ln.Close() })
			s := engine.NewSubscriber(engine.SubscriberConfig{Endpoint: addr(t, e.pub), ReplayEndpoint: "tcp://" + ln.Addr().String(),
				Topic: "kv", Metrics: m, DialRetry: 10 * time.Millisecond, ReplayTimeout: 2 * time.Second, Logger: quiet})
			r := newRecorder()
			runSub(t, s, r)
			// Joining at seq >= 5 asks the replay socket for what came before (the first
			// messages may go out before the subscription has arrived: send until one
			// is read, which the replay request shows).
			stop, sent := make(chan struct{}), make(chan struct{})
			next := uint64(5)
			go func() {
				defer close(sent)
				for ; ; next++ {
					e.send(next, nil, nil)
					select {
					case <-stop:
						return
					case <-time.After(20 * time.Millisecond):
					}
				}
			}()
			bad := zmtptest.Accept(t, ln)
			close(stop)
			<-sent
			bad.Handshake("ROUTER")
			return bad, func() {
				// The failed replay is a gap; live batches keep coming.
				waitFor(t, r, "the first batch after the failed replay", func(seqs []uint64, gaps [][2]uint64) bool {
					return len(seqs) > 0 && len(gaps) > 0 && gaps[0] == [2]uint64{0, seqs[0]}
				}, nil)
				e.send(next+1, nil, nil)
				waitFor(t, r, "the next batch", func(seqs []uint64, _ [][2]uint64) bool { return seqs[len(seqs)-1] == next+1 }, nil)
			}
		},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			checkLeaks(t)
			reg := prometheus.NewRegistry()
			bad, after := tt.run(t, engine.NewZMQMetrics(reg))
			bad.Write(zmtptest.HostileHeader)
			bad.WaitClosed()
			waitRejected(t, reg, tt.socket, engine.ReasonFrameTooLarge, 1)
			after()
		})
	}
}

func (r *recorder) seqsNow() []uint64 {
	seqs, _ := r.snapshot()
	return seqs
}

// TestZMQRejectsBrokenPeers feeds a bound subscriber (the socket anyone who can reach a
// router in bind mode talks to) what zmq4 must never read: each connection is closed and
// counted with its reason, and a real publisher is served afterwards.
func TestZMQRejectsBrokenPeers(t *testing.T) {
	checkLeaks(t)
	reg := prometheus.NewRegistry()
	s := engine.NewSubscriber(engine.SubscriberConfig{Endpoint: "tcp://127.0.0.1:0", Bind: true, Topic: "kv",
		Metrics: engine.NewZMQMetrics(reg), Limits: engine.ZMQLimits{MaxMessage: 4096, HandshakeTimeout: 300 * time.Millisecond},
		Logger: quiet})
	r := newRecorder()
	runSub(t, s, r)

	ready := func(props ...byte) []byte {
		return zmtptest.Frame(0x04, append([]byte("\x05READY"), props...))
	}
	tests := []struct {
		name   string
		send   []byte // after the greeting
		shake  bool   // do the full handshake first
		reason string
	}{
		{"frame over MaxMessage", zmtptest.Message([]byte("kv"), be(1), make([]byte, 5000)), true, engine.ReasonFrameTooLarge},
		{"message over MaxMessage", zmtptest.Message([]byte("kv"), make([]byte, 2000), make([]byte, 2000)), true, engine.ReasonMessageTooLarge},
		{"endless empty frames", func() []byte {
			var b []byte
			for range 100 {
				b = append(b, 0x01, 0)
			}
			return b
		}(), true, engine.ReasonMessageTooLarge},
		{"reserved flag bits", []byte{0x80, 0}, true, engine.ReasonProtocol},
		// zmq4's metadata parser indexes past the end of these (a panic).
		{"READY property cut in its length", ready(3, 'a', 'b', 'c', 0), false, engine.ReasonProtocol},
		{"READY property longer than the command", ready(1, 'a', 0, 0, 0, 9, 'x'), false, engine.ReasonProtocol},
		{"READY from a socket that cannot publish", zmtptest.Frame(0x04, zmtptest.ReadyBody("REQ")), false, engine.ReasonProtocol},
		// zmq4's SocketType.IsCompatible panics on a type it does not know.
		{"READY with an unknown socket type", zmtptest.Frame(0x04, zmtptest.ReadyBody("000")), false, engine.ReasonProtocol},
		{"a message before READY", zmtptest.Message([]byte("kv")), false, engine.ReasonProtocol},
		{"a multi-frame command", append(zmtptest.Frame(0x05, []byte("\x05READY")), zmtptest.Frame(0x04, nil)...), false, engine.ReasonProtocol},
	}
	counts := map[string]float64{}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := zmtptest.Dial(t, s.Addr())
			if tt.shake {
				p.Handshake("PUB")
				p.Write(tt.send)
			} else {
				p.Write(append(zmtptest.Greeting(), tt.send...))
			}
			p.WaitClosed()
			counts[tt.reason]++
			waitRejected(t, reg, "sub", tt.reason, counts[tt.reason])
		})
	}

	// A peer that connects and says nothing would hold zmq4's accept loop (which runs
	// the handshake inline) forever; it gets HandshakeTimeout.
	idle := zmtptest.Dial(t, s.Addr())
	good := zmtptest.Dial(t, s.Addr())
	good.Handshake("PUB")
	good.Write(zmtptest.Message([]byte("kv"), be(0), payload(t, 0)))
	waitFor(t, r, "the well-behaved publisher's batch", func(seqs []uint64, _ [][2]uint64) bool { return len(seqs) == 1 }, nil)
	idle.WaitClosed()
	waitRejected(t, reg, "sub", engine.ReasonHandshake, 1)
}

// logRecords is a slog.Handler keeping every record.
type logRecords struct {
	mu   sync.Mutex
	recs []slog.Record
}

func (h *logRecords) Enabled(context.Context, slog.Level) bool { return true }
func (h *logRecords) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	h.recs = append(h.recs, r.Clone())
	h.mu.Unlock()
	return nil
}
func (h *logRecords) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *logRecords) WithGroup(string) slog.Handler      { return h }

// lines returns how many records carry msg and the sum of their "count" attributes.
func (h *logRecords) lines(msg string) (n int, count int64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, r := range h.recs {
		if r.Message != msg {
			continue
		}
		n++
		r.Attrs(func(a slog.Attr) bool {
			if a.Key == "count" {
				count += a.Value.Int64()
			}
			return true
		})
	}
	return n, count
}

// atLeast returns the records at or above level.
func (h *logRecords) atLeast(level slog.Level) []slog.Record {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []slog.Record
	for _, r := range h.recs {
		if r.Level >= level {
			out = append(out, r)
		}
	}
	return out
}

// TestSubscriberLogsOncePerIntervalPerProblem floods a bound subscriber with 5,000 topics
// and malformed messages: each kind of problem is one line per interval with a count
// (not one line per message), and the counts add up.
func TestSubscriberLogsOncePerIntervalPerProblem(t *testing.T) {
	checkLeaks(t)
	logs := &logRecords{}
	s := engine.NewSubscriber(engine.SubscriberConfig{Endpoint: "tcp://127.0.0.1:0", Bind: true,
		LogEvery: time.Hour, Logger: slog.New(logs)})
	r := &topicRecorder{recorder: newRecorder(), seqs: map[string][]uint64{}, gaps: map[string][][2]uint64{}}
	stop := runSub(t, s, r)
	p := zmtptest.Dial(t, s.Addr())
	p.Handshake("PUB")
	const topics, malformed = 5000, 300
	var b []byte
	for i := range topics {
		b = append(b, zmtptest.Message([]byte{'t', byte(i >> 8), byte(i)}, be(7), payload(t, i))...)
	}
	for range malformed {
		b = append(b, zmtptest.Message([]byte("t"), []byte{1})...)
	}
	// The last message, on a topic already known, tells when all the others were read.
	b = append(b, zmtptest.Message([]byte{'t', 0, 0}, be(8), payload(t, 0))...)
	p.Write(b)
	waitFor(t, r.recorder, "the last message", func([]uint64, [][2]uint64) bool {
		r.mu.Lock()
		defer r.mu.Unlock()
		return len(r.seqs["t\x00\x00"]) == 2
	}, nil)
	stop() // flushes what the interval held back

	for _, c := range []struct {
		msg   string
		count int64
	}{
		{"kv events: joined a publisher mid-stream", 4096}, // engine.maxTopics
		{"kv events: too many topics, message dropped", topics - 4096},
		{"kv events: malformed message", malformed},
	} {
		n, count := logs.lines(c.msg)
		if n > 2 || count != c.count {
			t.Errorf("%q: %d lines counting %d, want at most 2 lines counting %d", c.msg, n, count, c.count)
		}
	}
	if n := len(logs.atLeast(slog.LevelDebug)); n > 10 {
		t.Errorf("%d log lines for the flood, want a handful", n)
	}
}

// TestSubscriberJoinIsNotAWarning: the first batch from a publisher (what a fresh
// `kvgate up` sees when the engine published before the router connected) is a gap for
// the handler, but nothing was lost, so nothing is logged as a warning; a real loss is.
func TestSubscriberJoinIsNotAWarning(t *testing.T) {
	checkLeaks(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	logs := &logRecords{}
	s := engine.NewSubscriber(engine.SubscriberConfig{Endpoint: "tcp://" + ln.Addr().String(), Logger: slog.New(logs)})
	r := newRecorder()
	runSub(t, s, r)
	p := zmtptest.Accept(t, ln)
	p.Handshake("PUB")
	p.Write(zmtptest.Message(nil, be(7), payload(t, 7)))
	waitFor(t, r, "the first batch", func(seqs []uint64, _ [][2]uint64) bool { return len(seqs) == 1 }, nil)
	if _, gaps := r.snapshot(); len(gaps) != 1 || gaps[0] != [2]uint64{0, 7} {
		t.Fatalf("gaps %v, want the join gap [0 7]", gaps)
	}
	if w := logs.atLeast(slog.LevelWarn); len(w) != 0 {
		t.Fatalf("joining logged %d warnings, the first %q", len(w), w[0].Message)
	}
	p.Write(zmtptest.Message(nil, be(9), payload(t, 9)))
	waitFor(t, r, "the batch after the loss", func(seqs []uint64, _ [][2]uint64) bool { return len(seqs) == 2 }, nil)
	if n, _ := logs.lines("kv events: batches lost"); n != 1 {
		t.Fatalf("a lost batch logged %d warnings, want 1", n)
	}
}

// TestSubscriberRedialsPublishersRejectedAtOnce: a publisher whose hostile header arrives
// with its READY is rejected while zmq4 is still adding the connection (and sending it the
// subscription under the socket's lock); the subscriber must still re-dial, every time.
// (zmq4 re-dialed from the failed subscription write, under that lock: a deadlock.)
func TestSubscriberRedialsPublishersRejectedAtOnce(t *testing.T) {
	checkLeaks(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	reg := prometheus.NewRegistry()
	s := engine.NewSubscriber(engine.SubscriberConfig{Endpoint: "tcp://" + ln.Addr().String(),
		Metrics: engine.NewZMQMetrics(reg), DialRetry: time.Millisecond, Logger: quiet})
	r := newRecorder()
	runSub(t, s, r)
	const rounds = 20
	for i := range rounds {
		bad := zmtptest.Accept(t, ln)
		bad.Write(append(append(zmtptest.Greeting(), zmtptest.Frame(0x04, zmtptest.ReadyBody("PUB"))...), zmtptest.HostileHeader...))
		bad.WaitClosed()
		waitRejected(t, reg, "sub", engine.ReasonFrameTooLarge, float64(i+1))
	}
	good := zmtptest.Accept(t, ln)
	good.Handshake("PUB")
	good.Write(zmtptest.Message(nil, be(0), payload(t, 0)))
	waitFor(t, r, "the batch", func(seqs []uint64, _ [][2]uint64) bool { return len(seqs) == 1 }, nil)
}

// TestPublisherDropsASubscriberThatStopsReading: zmq4's PUB writes to its subscribers one
// after the other, so a subscriber that stops reading stalled every other one for good once
// the kernel's buffers were full. It is disconnected after WriteTimeout and counted; the
// others keep receiving.
func TestPublisherDropsASubscriberThatStopsReading(t *testing.T) {
	checkLeaks(t)
	reg := prometheus.NewRegistry()
	p, err := engine.NewPublisher(engine.PublisherConfig{Endpoint: "tcp://127.0.0.1:0", Metrics: engine.NewZMQMetrics(reg),
		Limits: engine.ZMQLimits{WriteTimeout: 300 * time.Millisecond}, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	stuck := zmtptest.Dial(t, p.Addr())
	stuck.Handshake("SUB")
	stuck.Write(zmtptest.Message([]byte{1})) // subscribe to everything, then never read

	s := engine.NewSubscriber(engine.SubscriberConfig{Endpoint: p.Addr(), Logger: quiet})
	r := newRecorder()
	runSub(t, s, r)
	big := testBatch(0)
	big.Events[0].TokenIDs = make([]uint32, 100_000) // ~100 KiB per batch
	for i := range big.Events[0].TokenIDs {
		big.Events[0].TokenIDs[i] = uint32(i)
	}
	big.Events[0].BlockSize = len(big.Events[0].TokenIDs)
	waitFor(t, r, "the first batch", func(seqs []uint64, _ [][2]uint64) bool { return len(seqs) > 0 }, func() {
		if _, err := p.Publish(big); err != nil {
			t.Fatal(err)
		}
	})
	// Fill the stuck subscriber's buffers until it is cut off.
	// Each check publishes one more batch, so the buffers fill at the polling pace.
	if !polltest.Wait(20*time.Second, func() bool {
		if rejected(t, reg, "pub", engine.ReasonSlowReader) >= 1 {
			return true
		}
		if _, err := p.Publish(big); err != nil {
			t.Fatal(err)
		}
		return false
	}) {
		t.Fatal("the subscriber that stopped reading was not disconnected")
	}
	stuck.WaitClosed()
	seqs, _ := r.snapshot()
	last := seqs[len(seqs)-1]
	waitFor(t, r, "batches after the cut", func(seqs []uint64, _ [][2]uint64) bool { return seqs[len(seqs)-1] > last+3 },
		func() { publish(t, p, 1) })
}
