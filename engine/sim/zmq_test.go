package sim

import (
	"strings"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/kvgate/kvgate/engine"
	"github.com/kvgate/kvgate/engine/zmtptest"
	"github.com/kvgate/kvgate/polltest"
)

// sendHostileHeader connects to a ZMQ endpoint as a socket of kind typ, completes the
// ZMTP handshake, sends a frame header claiming 2^62 bytes and waits for the other side to
// close the connection.
func sendHostileHeader(t *testing.T, endpoint, typ string) {
	t.Helper()
	p := zmtptest.Dial(t, endpoint)
	p.Handshake(typ)
	p.Write(zmtptest.HostileHeader)
	p.WaitClosed()
}

// rejectedOnMetrics reads kvgate_zmq_rejected_connections_total{socket} from /metrics.
func rejectedOnMetrics(t *testing.T, s *Server, socket string) float64 {
	t.Helper()
	resp, err := client(t).Get("http://" + s.Addr() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	var v float64
	f := fams[engine.MetricZMQRejected]
	if f == nil {
		f = fams[strings.TrimSuffix(engine.MetricZMQRejected, "_total")]
	}
	for _, m := range f.GetMetric() {
		for _, l := range m.GetLabel() {
			if l.GetName() == "socket" && l.GetValue() == socket {
				v += m.GetCounter().GetValue()
			}
		}
	}
	return v
}

// TestHostileZMQPeersAreDisconnected: a ZMTP peer claiming a 2^62-byte frame on the event
// port or the replay port (zmq4 v0.17.0 panics on it, killing the sim) is disconnected and
// counted on /metrics; the sim keeps serving requests, events and replays.
func TestHostileZMQPeersAreDisconnected(t *testing.T) {
	s := testServer(t, ServerConfig{})
	sendHostileHeader(t, s.KVEventsAddr(), "SUB")
	sendHostileHeader(t, s.KVEventsReplayAddr(), "DEALER")
	for _, socket := range []string{"pub", "router"} {
		if !polltest.Wait(10*time.Second, func() bool { return rejectedOnMetrics(t, s, socket) == 1 }) {
			t.Fatalf("%s{socket=%q} = %v, want 1", engine.MetricZMQRejected, socket, rejectedOnMetrics(t, s, socket))
		}
	}
	completion(t, client(t), s, map[string]any{"prompt": longText(1, 40), "max_tokens": 1})
	if bs := replay(t, s); len(bs) == 0 {
		t.Fatal("no batch replayed after the hostile peers")
	}
}
