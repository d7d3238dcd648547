// Package discovery finds the engines the router and the xDS server send traffic to: from a
// Consul catalog watched with blocking queries, from an endpoints file, or from a static list.
// It owns no step of a request or a KV event; it says where the endpoints of R5 and E2-E4 are.
package discovery

import (
	"context"
	"maps"
	"slices"
)

// Roles an engine plays.
const (
	RoleAggregated = "aggregated"
	RolePrefill    = "prefill"
	RoleDecode     = "decode"
)

// DefaultService is the Consul service name engines register under.
const DefaultService = "kvgate-engine"

// Consul service meta keys written by workerd and read by Consul.Watch. Meta keys are limited
// by Consul to [A-Za-z0-9_-]; values to 512 bytes.
const (
	MetaModel     = "model"      // the first model the engine serves
	MetaModels    = "models"     // every model, comma-separated
	MetaRole      = "role"       // RoleAggregated, RolePrefill or RoleDecode
	MetaBlockSize = "block_size" // KV block size in tokens, decimal
	MetaKVEvents  = "kv_events"  // ZMQ endpoint of the engine's KV-event publisher, absent = none
	MetaKVReplay  = "kv_replay"  // ZMQ endpoint of the publisher's replay socket, absent = none
	MetaWorkerd   = "workerd"    // workerd relay gRPC address (host:port), absent = none
	MetaEngine    = "engine"     // engine kind: vllm, sglang, sim
)

// Endpoint is one engine instance as the router sees it.
type Endpoint struct {
	Name       string            // unique instance id (the Consul service ID)
	Address    string            // ip:port of the engine's OpenAI HTTP server
	Models     []string          // models it serves
	Role       string            // RoleAggregated, RolePrefill or RoleDecode
	BlockSize  int               // KV block size in tokens; 0 = unknown
	KVEvents   string            // ZMQ endpoint of its KV events, "" = none
	KVReplay   string            // ZMQ replay endpoint of its KV events, "" = none
	KVBind     bool              // bind KVEvents instead of connecting (publishers that dial)
	KVTopic    string            // KV-event subscription topic prefix, "" = every topic
	MetricsURL string            // engine's Prometheus metrics, "" = http://Address/metrics
	Workerd    string            // workerd relay gRPC address, "" = none
	TLS        bool              // the engine serves HTTPS (an https:// address in an endpoints file)
	Healthy    bool              // every health check passing (Static: as given)
	Meta       map[string]string // all service meta, including the keys above
}

// Source yields the endpoint set.
//
// Watch sends the full set (sorted by Name) once at start and again on every change, and
// closes the channel when ctx ends. A consumer that falls behind misses intermediate sets,
// never the latest one. The slices and maps sent belong to the receiver. Watch may be called
// more than once; each call has its own channel.
type Source interface {
	Watch(ctx context.Context) <-chan []Endpoint
}

// Equal reports whether two endpoints are the same in every field.
func (e Endpoint) Equal(o Endpoint) bool {
	return e.Name == o.Name && e.Address == o.Address && slices.Equal(e.Models, o.Models) &&
		e.Role == o.Role && e.BlockSize == o.BlockSize && e.KVEvents == o.KVEvents && e.KVReplay == o.KVReplay &&
		e.KVBind == o.KVBind && e.KVTopic == o.KVTopic && e.MetricsURL == o.MetricsURL && e.Workerd == o.Workerd && e.TLS == o.TLS && e.Healthy == o.Healthy && maps.Equal(e.Meta, o.Meta)
}

// Serves reports whether the endpoint lists model.
func (e Endpoint) Serves(model string) bool { return slices.Contains(e.Models, model) }

func (e Endpoint) clone() Endpoint {
	e.Models = slices.Clone(e.Models)
	e.Meta = maps.Clone(e.Meta)
	return e
}

func equalSets(a, b []Endpoint) bool {
	return slices.EqualFunc(a, b, Endpoint.Equal)
}

func sortedCopy(eps []Endpoint) []Endpoint {
	out := make([]Endpoint, len(eps))
	for i, e := range eps {
		out[i] = e.clone()
	}
	slices.SortFunc(out, func(a, b Endpoint) int {
		switch {
		case a.Name < b.Name:
			return -1
		case a.Name > b.Name:
			return 1
		}
		return 0
	})
	return out
}

// latest is a one-slot mailbox: put replaces what the reader has not taken yet, so a slow
// reader sees the newest set and the writer never blocks.
type latest struct {
	ch chan []Endpoint
}

func newLatest() latest { return latest{ch: make(chan []Endpoint, 1)} }

func (l latest) put(eps []Endpoint) {
	for {
		select {
		case l.ch <- eps:
			return
		default:
		}
		select {
		case <-l.ch:
		default:
		}
	}
}

// forward copies sets from box to a new channel until ctx ends, then runs done and closes
// the channel.
func forward(ctx context.Context, box latest, done func()) <-chan []Endpoint {
	out := make(chan []Endpoint)
	go func() {
		defer close(out)
		if done != nil {
			defer done()
		}
		var (
			eps  []Endpoint
			have bool
		)
		for {
			if !have {
				select {
				case <-ctx.Done():
					return
				case eps = <-box.ch:
					have = true
				}
			}
			select { // prefer a newer set that is already waiting
			case eps = <-box.ch:
			default:
			}
			select {
			case <-ctx.Done():
				return
			case eps = <-box.ch: // a newer set replaces the one not yet taken
			case out <- eps:
				have = false
			}
		}
	}()
	return out
}
