package sim

import "github.com/kvgate/kvgate/engine"

// WireEvent is ev as the engine package's codec models it: what the server publishes, and
// what a virtual-time replay hands the router directly.
func WireEvent(ev KVEvent) engine.Event { return toWire(ev) }
