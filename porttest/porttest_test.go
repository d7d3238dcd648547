package porttest

import (
	"net"
	"strconv"
	"testing"
)

// TestFreeBelowEphemeralAndDistinct: every port is below the kernel's ephemeral range (so no
// outgoing connection can hold it), no port is handed out twice, and each can be bound on the
// addresses its function promises.
func TestFreeBelowEphemeralAndDistinct(t *testing.T) {
	high := ephemeralLow()
	seen := map[int]bool{}
	check := func(kind string, port int, networks ...string) {
		t.Helper()
		if port < lowest || port >= high {
			t.Fatalf("%s: port %d outside [%d, %d)", kind, port, lowest, high)
		}
		if seen[port] {
			t.Fatalf("%s: port %d handed out twice", kind, port)
		}
		seen[port] = true
		for _, n := range networks {
			host := "127.0.0.1"
			if n == "tcp-any" {
				n, host = "tcp", ""
			}
			if !listenable(n, host, port) {
				t.Fatalf("%s: port %d not free on %s %q", kind, port, n, host)
			}
		}
	}
	for range 300 {
		check("Free", Free(t), "tcp")
	}
	for range 50 {
		check("FreeEverywhere", FreeEverywhere(t), "tcp-any")
		check("FreeTCPAndUDP", FreeTCPAndUDP(t), "tcp", "udp")
	}
	host, port, err := net.SplitHostPort(Addr(t))
	if p, _ := strconv.Atoi(port); err != nil || host != "127.0.0.1" || p < lowest {
		t.Fatalf("Addr: %s:%s %v", host, port, err)
	}
}

// TestFreeSkipsHeldPorts: a port somebody listens on is never returned. Every port but one in
// a small range is held, and pick must find that one.
func TestFreeSkipsHeldPorts(t *testing.T) {
	var held []net.Listener
	defer func() {
		for _, l := range held {
			l.Close()
		}
	}()
	for range 20 {
		port := Free(t)
		l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, l)
		mu.Lock()
		delete(given, port) // only the listener keeps it from being picked again now
		mu.Unlock()
	}
	for range 500 {
		port := Free(t)
		for _, l := range held {
			if l.Addr().(*net.TCPAddr).Port == port {
				t.Fatalf("port %d returned while a listener holds it", port)
			}
		}
	}
}
