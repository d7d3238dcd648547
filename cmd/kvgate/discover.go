package main

import (
	"context"
	"log/slog"
	"slices"

	"github.com/spf13/cobra"

	"github.com/kvgate/kvgate/discovery"
	"github.com/kvgate/kvgate/router"
	"github.com/kvgate/kvgate/workerd"
)

// consulFlags point a router at a Consul catalog of engines (those workerd registers).
type consulFlags struct {
	addr, service, tag string
}

func (c *consulFlags) add(cmd *cobra.Command) {
	f := cmd.Flags()
	f.StringVar(&c.addr, "consul", "", "Consul agent HTTP address (e.g. 127.0.0.1:8500): route to the healthy engines registered there, following changes")
	f.StringVar(&c.service, "consul-service", discovery.DefaultService, "Consul service name the engines are registered under")
	f.StringVar(&c.tag, "consul-tag", "", "only engines with this Consul tag")
}

// source returns the Consul watch, or nil when --consul is not set.
func (c *consulFlags) source(log *slog.Logger) (discovery.Source, error) {
	if c.addr == "" {
		return nil, nil
	}
	return discovery.NewConsul(discovery.ConsulConfig{Address: c.addr, Service: c.service, Tag: c.tag}, log)
}

// routerEndpoints converts discovered endpoints to the router's, dropping those whose checks
// are not all passing (an engine starting, dead or draining).
func routerEndpoints(eps []discovery.Endpoint) []router.Endpoint {
	out := make([]router.Endpoint, 0, len(eps))
	for _, e := range eps {
		if !e.Healthy {
			continue
		}
		role := router.Role(e.Role)
		if role == "" {
			role = router.RoleAggregated
		}
		out = append(out, router.Endpoint{
			Name: e.Name, Address: e.Address, Models: slices.Clone(e.Models), Role: role,
			BlockSize: e.BlockSize, KVEvents: e.KVEvents, KVBind: e.KVBind, KVReplay: e.KVReplay,
			KVTopic: e.KVTopic, MetricsURL: e.MetricsURL, Workerd: e.Workerd,
		})
	}
	return out
}

// followDiscovery hands the router every endpoint set src sends, after the static ones,
// until ctx ends. Endpoints that leave are dropped by SetEndpoints: their event sources stop,
// their blocks are forgotten, and requests already routed there release their load as
// they end.
func followDiscovery(ctx context.Context, src discovery.Source, static []router.Endpoint, rt *router.Router, log *slog.Logger) error {
	for eps := range src.Watch(ctx) {
		found := routerEndpoints(eps)
		rt.SetEndpoints(append(slices.Clone(static), found...))
		log.Info("discovered endpoints", "healthy", len(found), "unhealthy", len(eps)-len(found))
	}
	return nil
}

// relaySource is the router's Config.EventSource: an endpoint that names a workerd gets its
// KV events (snapshot, then numbered batches, resumed across reconnects) and its load and
// health from that workerd's relay, instead of from the engine.
func relaySource(log *slog.Logger) func(router.Endpoint) router.EventSource {
	return func(e router.Endpoint) router.EventSource {
		if e.Workerd == "" {
			return nil
		}
		return workerd.NewRelayClient(e.Workerd, e.Name, log)
	}
}

// The relay client delivers load to handlers that implement workerd.LoadHandler; the router
// hands its sources a router.LoadHandler. They must stay the same method.
var _ workerd.LoadHandler = router.LoadHandler(nil)
