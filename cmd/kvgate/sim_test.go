package main

import (
	"net"
	"strings"
	"testing"
)

// TestSimListensOnLoopbackByDefault: the simulated engine's HTTP, KV-event and replay
// sockets bind loopback unless a flag says otherwise.
func TestSimListensOnLoopbackByDefault(t *testing.T) {
	f := newSimCmd(&globals{}).Flags()
	for _, name := range []string{"host", "kv-events", "kv-events-replay"} {
		v := f.Lookup(name).DefValue
		host := strings.TrimPrefix(v, "tcp://")
		if h, _, err := net.SplitHostPort(host); err == nil {
			host = h
		}
		if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
			t.Errorf("--%s defaults to %q, want a loopback address", name, v)
		}
	}
}
