package discovery

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/kvgate/kvgate/backoff"
)

// ConsulConfig says which Consul agent to talk to and which service to read and write.
type ConsulConfig struct {
	Address    string        // agent HTTP address, host:port or URL; "" = CONSUL_HTTP_ADDR or 127.0.0.1:8500
	Service    string        // service name; "" = DefaultService
	Tag        string        // Watch: only instances with this tag; Register: added to the tags
	Datacenter string        // "" = the agent's
	Token      string        // ACL token; "" = CONSUL_HTTP_TOKEN or none
	WaitTime   time.Duration // blocking-query wait; 0 = 1m
	MinBackoff time.Duration // first retry delay after an error; 0 = 100ms
	MaxBackoff time.Duration // longest retry delay; 0 = 5s
}

// Consul is a Source over a Consul catalog and the registrar workerd uses. Its methods are
// safe for concurrent use.
type Consul struct {
	cfg    ConsulConfig
	client *api.Client
	log    *slog.Logger
}

var _ Source = (*Consul)(nil)

// NewConsul builds a client; it does not contact the agent.
func NewConsul(cfg ConsulConfig, log *slog.Logger) (*Consul, error) {
	if cfg.Service == "" {
		cfg.Service = DefaultService
	}
	if cfg.WaitTime <= 0 {
		cfg.WaitTime = time.Minute
	}
	if cfg.MinBackoff <= 0 {
		cfg.MinBackoff = 100 * time.Millisecond
	}
	if cfg.MaxBackoff <= 0 {
		cfg.MaxBackoff = 5 * time.Second
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ac := api.DefaultConfig()
	if cfg.Address != "" {
		ac.Address = cfg.Address
	}
	if cfg.Datacenter != "" {
		ac.Datacenter = cfg.Datacenter
	}
	if cfg.Token != "" {
		ac.Token = cfg.Token
	}
	client, err := api.NewClient(ac)
	if err != nil {
		return nil, fmt.Errorf("discovery: consul client: %w", err)
	}
	return &Consul{cfg: cfg, client: client, log: log.With("component", "discovery", "service", cfg.Service)}, nil
}

// Client returns the underlying Consul client.
func (c *Consul) Client() *api.Client { return c.client }

// Watch implements Source with Consul blocking queries on /v1/health/service/<Service>. It
// sends the first answer, then a new set only when some endpoint changed (address, meta,
// health), retrying failed queries with exponential backoff. Healthy means every check of
// the instance and its node is passing.
func (c *Consul) Watch(ctx context.Context) <-chan []Endpoint {
	box := newLatest()
	go c.watch(ctx, box)
	return forward(ctx, box, nil)
}

func (c *Consul) watch(ctx context.Context, box latest) {
	var (
		index   uint64
		prev    []Endpoint
		sent    bool
		retry   = backoff.New(c.cfg.MinBackoff, c.cfg.MaxBackoff)
		failing bool
	)
	for ctx.Err() == nil {
		q := (&api.QueryOptions{WaitIndex: index, WaitTime: c.cfg.WaitTime}).WithContext(ctx)
		entries, meta, err := c.client.Health().Service(c.cfg.Service, c.cfg.Tag, false, q)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			if !failing {
				c.log.Warn("consul watch failing, retrying", "err", err)
				failing = true
			}
			if !retry.Wait(ctx) {
				return
			}
			// The agent may have restarted with a fresh index: start over.
			index = 0
			continue
		}
		if failing {
			c.log.Info("consul watch recovered")
			failing = false
		}
		retry.Reset()
		switch {
		case meta.LastIndex < index: // went backwards: a new raft log, re-read everything
			index = 0
		case meta.LastIndex == 0:
			index = 1 // never block on index 0 in a loop
		default:
			index = meta.LastIndex
		}
		eps := make([]Endpoint, 0, len(entries))
		for _, e := range entries {
			if ep, ok := fromEntry(e); ok {
				eps = append(eps, ep)
			}
		}
		eps = sortedCopy(eps)
		if !sent || !equalSets(prev, eps) {
			box.put(sortedCopy(eps))
			prev, sent = eps, true
		}
	}
}

func fromEntry(e *api.ServiceEntry) (Endpoint, bool) {
	if e == nil || e.Service == nil {
		return Endpoint{}, false
	}
	host := e.Service.Address
	if host == "" && e.Node != nil {
		host = e.Node.Address
	}
	meta := make(map[string]string, len(e.Service.Meta))
	for k, v := range e.Service.Meta {
		meta[k] = v
	}
	ep := Endpoint{
		Name:     e.Service.ID,
		Address:  net.JoinHostPort(host, strconv.Itoa(e.Service.Port)),
		Models:   ParseModels(meta),
		Role:     meta[MetaRole],
		KVEvents: meta[MetaKVEvents],
		KVReplay: meta[MetaKVReplay],
		Workerd:  meta[MetaWorkerd],
		Healthy:  e.Checks.AggregatedStatus() == api.HealthPassing,
		Meta:     meta,
	}
	if ep.Role == "" {
		ep.Role = RoleAggregated
	}
	if n, err := strconv.Atoi(meta[MetaBlockSize]); err == nil && n > 0 {
		ep.BlockSize = n
	}
	return ep, true
}

// ParseModels reads the model list from service meta: MetaModels (comma-separated), or
// MetaModel when that is absent.
func ParseModels(meta map[string]string) []string {
	var out []string
	if s := meta[MetaModels]; s != "" {
		for m := range strings.SplitSeq(s, ",") {
			if m = strings.TrimSpace(m); m != "" {
				out = append(out, m)
			}
		}
		return out
	}
	if m := meta[MetaModel]; m != "" {
		out = append(out, m)
	}
	return out
}

// isNotFound reports whether err is Consul's 404.
func isNotFound(err error) bool {
	var se api.StatusError
	return errors.As(err, &se) && se.Code == http.StatusNotFound
}
