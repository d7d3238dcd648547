package router_test

import (
	"context"
	"encoding/binary"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kvgate/kvgate/engine"
	"github.com/kvgate/kvgate/engine/zmtptest"
	"github.com/kvgate/kvgate/router"
)

// warnings is a slog.Handler keeping the messages of records at warning level or above.
type warnings struct {
	mu   sync.Mutex
	msgs []string
}

func (h *warnings) Enabled(_ context.Context, l slog.Level) bool { return l >= slog.LevelWarn }
func (h *warnings) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	h.msgs = append(h.msgs, r.Message)
	h.mu.Unlock()
	return nil
}
func (h *warnings) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *warnings) WithGroup(string) slog.Handler      { return h }

func gatheredCounter(t *testing.T, reg *prometheus.Registry, name string, labels map[string]string) float64 {
	t.Helper()
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fams {
		if f.GetName() != name {
			continue
		}
	metrics:
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if want, ok := labels[l.GetName()]; ok && want != l.GetValue() {
					continue metrics
				}
			}
			return m.GetCounter().GetValue()
		}
	}
	return 0
}

// TestRouterSurvivesHostileKVEventPublisher: a "publisher" that completes the ZMTP
// handshake and claims a frame above Config.KVEventLimits (zmq4 v0.17.0 allocates whatever
// a header claims and panics on 2^62 bytes, killing the router) is disconnected and counted
// on the router's registry; the router re-dials, and when the publisher behaves its events
// reach the index. Joining the stream mid-way (seq 1: seq 0
// went out before the router connected, as on a fresh `kvgate up`) is not a warning.
func TestRouterSurvivesHostileKVEventPublisher(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	cfg := router.DefaultConfig()
	cfg.Endpoints = []router.Endpoint{{Name: "z", Address: "127.0.0.1:1", Models: []string{model}, BlockSize: 16,
		KVEvents: "tcp://" + ln.Addr().String()}}
	cfg.Seed, cfg.ScrapeInterval = 42, -1
	cfg.KVEventLimits.MaxMessage = 1 << 20
	reg, logs := prometheus.NewRegistry(), &warnings{}
	r, err := router.New(cfg, slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})), reg)
	if err != nil {
		t.Fatal(err)
	}
	run(t, r)

	bad := zmtptest.Accept(t, ln)
	bad.Handshake("PUB")
	bad.Write(binary.BigEndian.AppendUint64([]byte{0x02}, 2<<20)) // a 2 MiB frame's header: above the limit
	bad.WaitClosed()
	eventually(t, "the rejected connection counted", func() bool {
		return gatheredCounter(t, reg, engine.MetricZMQRejected,
			map[string]string{"socket": "sub", "reason": engine.ReasonFrameTooLarge}) == 1
	})
	bad = zmtptest.Accept(t, ln) // the router re-dials
	bad.Handshake("PUB")
	bad.Write(zmtptest.HostileHeader)
	bad.WaitClosed()
	eventually(t, "the rejected connection counted", func() bool {
		return gatheredCounter(t, reg, engine.MetricZMQRejected,
			map[string]string{"socket": "sub", "reason": engine.ReasonFrameTooLarge}) == 2
	})

	good := zmtptest.Accept(t, ln)
	good.Handshake("PUB")
	payload, err := engine.EncodeBatch(stored(chatTokens(t, longText("zmq", 200)), 16, 7000, engine.MediumGPU),
		engine.ShapeMap, engine.HashInt)
	if err != nil {
		t.Fatal(err)
	}
	good.Write(zmtptest.Message(nil, binary.BigEndian.AppendUint64(nil, 1), payload))
	eventually(t, "events reach the index", func() bool { return loadOf(r, "z").CachedBlocks > 0 })
	logs.mu.Lock()
	defer logs.mu.Unlock()
	for _, m := range logs.msgs {
		if strings.HasPrefix(m, "kv events") {
			t.Errorf("warning %q on joining a publisher mid-stream", m)
		}
	}
}
