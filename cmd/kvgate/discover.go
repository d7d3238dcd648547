package main

import (
	"context"
	"crypto/tls"
	"log/slog"
	"slices"

	"github.com/spf13/cobra"

	"github.com/kvgate/kvgate/discovery"
	"github.com/kvgate/kvgate/relay"
	"github.com/kvgate/kvgate/router"
	"github.com/kvgate/kvgate/tlsconfig"
)

// consulFlags point a router at a Consul catalog of engines (those workerd registers).
type consulFlags struct {
	addr, service, tag string
	relayTLS           tlsconfig.Files // TLS to the workerd relays the endpoints name
}

func (c *consulFlags) add(cmd *cobra.Command) {
	f := cmd.Flags()
	f.StringVar(&c.addr, "consul", "", "Consul agent HTTP address (e.g. 127.0.0.1:8500): route to the healthy engines registered there, following changes")
	f.StringVar(&c.service, "consul-service", discovery.DefaultService, "Consul service name the engines are registered under")
	f.StringVar(&c.tag, "consul-tag", "", "only engines with this Consul tag")
}

// addRelayTLS registers --relay-tls-*: TLS to the workerd relays discovered endpoints name.
func (c *consulFlags) addRelayTLS(cmd *cobra.Command) {
	c.relayTLS.AddClientFlags(cmd.Flags(), "relay-", "the workerd relays")
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
			KVTopic: e.KVTopic, MetricsURL: e.MetricsURL, Workerd: e.Workerd, TLS: e.TLS,
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
func relaySource(log *slog.Logger, tc *tls.Config) func(router.Endpoint) router.EventSource {
	return func(e router.Endpoint) router.EventSource {
		if e.Workerd == "" {
			return nil
		}
		return relay.NewClientConfig(relay.ClientConfig{Addr: e.Workerd, Engine: e.Name, Log: log, TLS: tc})
	}
}
