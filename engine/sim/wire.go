package sim

import "github.com/kvgate/kvgate/engine"

// WireEvent is ev as the engine package's codec models it, with 64-bit block hashes as
// vLLM publishes them by default: what the server publishes with engine.HashInt, and what a
// virtual-time replay hands the router directly.
func WireEvent(ev KVEvent) engine.Event { return toWire(ev, engine.HashInt) }
