package fleet

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"slices"
	"strconv"
	"time"

	"github.com/hashicorp/consul/api"
)

// osHostname is os.Hostname (a variable-free seam is not needed: the name only makes the
// service ID unique per host).
func osHostname() (string, error) { return os.Hostname() }

// RouterService is the Consul service a router with --consul and --metrics-addr registers
// itself under, so that planners find where to read its pools.
const RouterService = "kvgate-router"

// RouterSource returns the base URLs of the routers to read demand from.
type RouterSource func(ctx context.Context) ([]string, error)

// FixedRouters is a RouterSource of a fixed list.
func FixedRouters(urls []string) RouterSource {
	urls = slices.Clone(urls)
	return func(context.Context) ([]string, error) { return urls, nil }
}

// ConsulRouters lists the RouterService instances (with tag, when set) besides fixed. No
// router at all is an error: a planner that sees no demand must not scale the fleet down.
func ConsulRouters(c *api.Client, tag string, fixed []string) RouterSource {
	fixed = slices.Clone(fixed)
	return func(ctx context.Context) ([]string, error) {
		urls := slices.Clone(fixed)
		entries, _, err := c.Catalog().Service(RouterService, tag, (&api.QueryOptions{}).WithContext(ctx))
		if err != nil {
			return nil, fmt.Errorf("consul: %w", err)
		}
		for _, e := range entries {
			host := e.ServiceAddress
			if host == "" {
				host = e.Address
			}
			urls = append(urls, "http://"+net.JoinHostPort(host, strconv.Itoa(e.ServicePort)))
		}
		slices.Sort(urls)
		urls = slices.Compact(urls)
		if len(urls) == 0 {
			return nil, errors.New("no router registered in consul (" + RouterService + ") nor given")
		}
		return urls, nil
	}
}

// KeepRouterRegistration registers a router's metrics listener (addr, host:port; an
// unspecified host registers the Consul node's address) as a RouterService instance until
// ctx ends, registering it again when the agent forgets it, then deregisters it.
func KeepRouterRegistration(ctx context.Context, c *api.Client, tag, addr string, every time.Duration, log *slog.Logger) error {
	host, portStr, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("router registration: %w", err)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil {
		return fmt.Errorf("router registration: port %q", portStr)
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
		host = ""
	}
	if every <= 0 {
		every = 5 * time.Second
	}
	hostname, _ := osHostname()
	id := RouterService + "-" + hostname + "-" + portStr
	reg := &api.AgentServiceRegistration{ID: id, Name: RouterService, Address: host, Port: port}
	if tag != "" {
		reg.Tags = []string{tag}
	}
	agent := c.Agent()
	defer func() {
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_ = agent.ServiceDeregisterOpts(id, (&api.QueryOptions{}).WithContext(dctx))
	}()
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		if _, _, err := agent.Service(id, (&api.QueryOptions{}).WithContext(ctx)); err != nil && ctx.Err() == nil {
			if err := agent.ServiceRegisterOpts(reg, api.ServiceRegisterOpts{}.WithContext(ctx)); err != nil {
				log.Warn("router registration in consul failed; retrying", "err", err)
			} else {
				log.Info("router registered in consul for planners", "service", RouterService, "id", id)
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}
