package e2e

import (
	"context"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/kvgate/kvgate/engine"
	"github.com/kvgate/kvgate/engine/zmtptest"
	"github.com/kvgate/kvgate/porttest"
	"github.com/kvgate/kvgate/router"
)

// TestFaultHostileZMTP sends a ZMTP frame header claiming 2^62 bytes, after a correct NULL
// handshake, to every kind of ZMQ socket kvgate opens, beside real traffic: the router's
// subscriber dialing a publisher, the router's subscriber bound for engines that dial
// (bind:), a sim's event publisher and its replay ROUTER socket. Each must close only that
// connection and count it; every process keeps running, the attacked publisher's events
// still reach the router, and real requests all succeed.
func TestFaultHostileZMTP(t *testing.T) {
	replay := fmt.Sprintf("tcp://127.0.0.1:%d", porttest.Free(t))
	a := startSims(t, 1, "--kv-events-replay", replay)[0]
	quiet := startSims(t, 2, "--kv-events", "") // their events come from the hostile peers below
	hostile, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer hostile.Close()
	bound := fmt.Sprintf("tcp://127.0.0.1:%d", porttest.Free(t))
	sims := []simProc{a, quiet[0], quiet[1]}
	rt := startRouter(t, sims, []string{a.kv, "tcp://" + hostile.Addr().String(), "bind:" + bound}, "--pending-ttl=-1s")

	// The router dials the hostile publisher.
	p := zmtptest.Accept(t, hostile)
	p.Handshake("PUB")
	p.Write(zmtptest.HostileHeader)
	p.WaitClosed()
	// A hostile publisher dials the router's bound subscriber.
	p = zmtptest.Dial(t, bound)
	p.Handshake("PUB")
	p.Write(zmtptest.HostileHeader)
	p.WaitClosed()
	waitUntil(t, "the router to count 2 rejected ZMQ connections", func() bool {
		return metric(t, rt.base, engine.MetricZMQRejected) >= 2
	})
	// A hostile subscriber and a hostile replay client against the sim.
	p = zmtptest.Dial(t, a.kv)
	p.Handshake("SUB")
	p.Write(zmtptest.HostileHeader)
	p.WaitClosed()
	p = zmtptest.Dial(t, replay)
	p.Handshake("DEALER")
	p.Write(zmtptest.HostileHeader)
	p.WaitClosed()
	waitUntil(t, "the sim to count 2 rejected ZMQ connections", func() bool {
		return metric(t, "http://"+a.addr, engine.MetricZMQRejected) >= 2
	})

	// Real traffic, and the attacked publisher's events still reach the router.
	f := &figures{}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for i := range 12 {
		f.add(streamChat(ctx, rt.base, faultPrompt(6000+i), 8))
	}
	o := streamChat(ctx, "http://"+a.addr, longPrompt("zmtp", 100), 2) // straight to the sim
	f.add(o)
	waitIndexed(t, rt.base, a.addr, 1)
	f.load = waitNoLoad(t, rt.base)
	f.crashes = crashes(t, survivor{"router", rt.p, rt.base + "/health"},
		survivor{"engine 0 (attacked)", a.p, "http://" + a.addr + "/health"},
		survivor{"engine 1", quiet[0].p, "http://" + quiet[0].addr + "/health"},
		survivor{"engine 2", quiet[1].p, "http://" + quiet[1].addr + "/health"})
	f.log(t, "ZMTP 2^62-byte frame header x4")
	if f.ok != f.sent {
		t.Errorf("%d of %d requests failed after the hostile ZMTP peers: %q", f.sent-f.ok, f.sent, f.errs)
	}
	if f.load != 0 {
		t.Errorf("the router counts load %v after every request ended", f.load)
	}
	if h := metric(t, rt.base, router.MetricHealthy); h != 3 {
		t.Errorf("%v engines healthy, want 3", h)
	}
}
