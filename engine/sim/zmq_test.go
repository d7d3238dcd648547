package sim

import (
	"encoding/binary"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/kvgate/kvgate/engine"
)

// sendHostileHeader connects to a ZMQ endpoint as a socket of kind typ, completes the
// ZMTP 3.0 NULL handshake and sends a frame header claiming 2^62 bytes, then waits for the
// other side to close the connection.
func sendHostileHeader(t *testing.T, endpoint, typ string) {
	t.Helper()
	c, err := net.DialTimeout("tcp", strings.TrimPrefix(endpoint, "tcp://"), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	g := make([]byte, 64)
	g[0], g[9], g[10] = 0xff, 0x7f, 3
	copy(g[12:], "NULL")
	ready := append([]byte("\x05READY\x0bSocket-Type"), binary.BigEndian.AppendUint32(nil, uint32(len(typ)))...)
	ready = append(ready, typ...)
	b := append(g, 0x04, byte(len(ready)))
	b = append(b, ready...)
	b = binary.BigEndian.AppendUint64(append(b, 0x02), 1<<62)
	if _, err := c.Write(b); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, err = io.Copy(io.Discard, c)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("%s kept the hostile connection open", endpoint)
	}
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
		deadline := time.Now().Add(10 * time.Second)
		for rejectedOnMetrics(t, s, socket) != 1 {
			if time.Now().After(deadline) {
				t.Fatalf("%s{socket=%q} = %v, want 1", engine.MetricZMQRejected, socket, rejectedOnMetrics(t, s, socket))
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	completion(t, client(t), s, map[string]any{"prompt": longText(1, 40), "max_tokens": 1})
	if bs := replay(t, s); len(bs) == 0 {
		t.Fatal("no batch replayed after the hostile peers")
	}
}
