// Package porttest picks ports for servers a test must name before they start (child
// processes, agents, sockets that cannot report the port they bound).
//
// The usual trick, listening on port 0 and closing, hands out a port from the kernel's
// ephemeral range, the same range the kernel draws from for every outgoing connection and
// every other port-0 listener on the machine: between the close and the child's bind, another
// test process's connection can take it, and the child dies with "address already in use".
// Free picks at random below that range instead, where only servers told a port listen.
package porttest

import (
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// lowest is the bottom of the range Free picks from (ports under it are often well-known
// services' own).
const lowest = 20000

// Free returns a loopback TCP port that nobody listens on now, that no earlier call in this
// process returned, and that lies below the kernel's ephemeral port range.
func Free(t testing.TB) int {
	t.Helper()
	return pick(t, func(port int) bool { return listenable("tcp", "127.0.0.1", port) })
}

// FreeEverywhere is Free for a program that binds every interface: the port must be free on
// every address, not only on 127.0.0.1.
func FreeEverywhere(t testing.TB) int {
	t.Helper()
	return pick(t, func(port int) bool { return listenable("tcp", "", port) })
}

// FreeTCPAndUDP is Free for a program that listens on both protocols on one port (Consul's
// Serf).
func FreeTCPAndUDP(t testing.TB) int {
	t.Helper()
	return pick(t, func(port int) bool {
		return listenable("tcp", "127.0.0.1", port) && listenable("udp", "127.0.0.1", port)
	})
}

// Addr is Free as a "127.0.0.1:port" address.
func Addr(t testing.TB) string {
	t.Helper()
	return fmt.Sprintf("127.0.0.1:%d", Free(t))
}

var (
	mu    sync.Mutex
	given = map[int]bool{} // ports returned in this process
)

func pick(t testing.TB, free func(int) bool) int {
	t.Helper()
	mu.Lock()
	defer mu.Unlock()
	high := ephemeralLow() - 1
	for range 1000 {
		port := lowest + rand.IntN(high-lowest+1)
		if given[port] || !free(port) {
			continue
		}
		given[port] = true
		return port
	}
	t.Fatalf("porttest: no free port in %d-%d after 1000 tries", lowest, high)
	return 0
}

// listenable reports whether port can be bound on host for network now.
func listenable(network, host string, port int) bool {
	addr := net.JoinHostPort(host, strconv.Itoa(port))
	if network == "udp" {
		c, err := net.ListenPacket(network, addr)
		if err != nil {
			return false
		}
		c.Close()
		return true
	}
	l, err := net.Listen(network, addr)
	if err != nil {
		return false
	}
	l.Close()
	return true
}

// ephemeralLow is the bottom of the kernel's ephemeral port range (Linux's
// ip_local_port_range; 32768, Linux's default, elsewhere or when unreadable), kept at least
// 1,000 ports above lowest.
func ephemeralLow() int {
	low := 32768
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		if f := strings.Fields(string(b)); len(f) == 2 {
			if n, err := strconv.Atoi(f[0]); err == nil {
				low = n
			}
		}
	}
	return max(low, lowest+1000)
}
