package consultest

import (
	"net"
	"strconv"
	"testing"
)

// TestFreePortsDistinct: the ports of one agent are distinct. 500 picks that each closed
// their listener before the next (the old freePort, called four times per agent) repeat a
// port with probability about 0.99 over Linux's 28k ephemeral ports (birthday bound); held
// until all are chosen, they cannot.
func TestFreePortsDistinct(t *testing.T) {
	ports := freePorts(t, 500)
	seen := map[int]bool{}
	for _, p := range ports {
		if seen[p] {
			t.Fatalf("port %d handed out twice", p)
		}
		seen[p] = true
	}
	// And each is free again for the agent once freePorts returns.
	for _, p := range ports[:4] {
		l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p)))
		if err != nil {
			t.Fatalf("port %d not free after freePorts: %v", p, err)
		}
		l.Close()
	}
}
