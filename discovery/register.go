package discovery

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/kvgate/kvgate/backoff"
)

// Registration is one engine instance to publish in Consul.
type Registration struct {
	// Endpoint names the instance: Name (the service ID, unique in the datacenter), Address
	// (ip:port, required), Models, Role, BlockSize, KVEvents, KVReplay, Workerd; Meta adds
	// extra keys.
	// Healthy is ignored: Consul's check decides.
	Endpoint Endpoint
	Kind     string   // engine kind, written to MetaEngine
	Tags     []string // extra tags
	// HealthURL is the HTTP check's URL; "" = http://<Address>/health. An HTTP check needs a
	// 2xx to pass; 429 is warning; anything else critical.
	HealthURL       string
	CheckInterval   time.Duration // 0 = 2s (Consul's minimum is 1s)
	CheckTimeout    time.Duration // 0 = 1s
	DeregisterAfter time.Duration // remove the instance after this long critical; 0 = never
}

var metaKey = regexp.MustCompile(`^[A-Za-z0-9_-]{1,128}$`)

// CheckID is the ID of the HTTP check Register attaches to the service with this ID.
func CheckID(serviceID string) string { return "service:" + serviceID + ":health" }

func (c *Consul) registration(r Registration) (*api.AgentServiceRegistration, error) {
	ep := r.Endpoint
	if ep.Name == "" {
		return nil, errors.New("discovery: registration without a name")
	}
	host, portStr, err := net.SplitHostPort(ep.Address)
	if err != nil {
		return nil, fmt.Errorf("discovery: %s: address %q: %w", ep.Name, ep.Address, err)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil || port <= 0 || port > 65535 {
		return nil, fmt.Errorf("discovery: %s: bad port in %q", ep.Name, ep.Address)
	}
	meta := maps.Clone(ep.Meta)
	if meta == nil {
		meta = map[string]string{}
	}
	set := func(k, v string) {
		if v != "" {
			meta[k] = v
		}
	}
	if len(ep.Models) > 0 {
		set(MetaModel, ep.Models[0])
		set(MetaModels, strings.Join(ep.Models, ","))
	}
	role := ep.Role
	if role == "" {
		role = RoleAggregated
	}
	set(MetaRole, role)
	if ep.BlockSize > 0 {
		set(MetaBlockSize, strconv.Itoa(ep.BlockSize))
	}
	set(MetaKVEvents, ep.KVEvents)
	set(MetaKVReplay, ep.KVReplay)
	set(MetaWorkerd, ep.Workerd)
	set(MetaEngine, r.Kind)
	for k, v := range meta {
		if !metaKey.MatchString(k) {
			return nil, fmt.Errorf("discovery: %s: meta key %q: Consul allows [A-Za-z0-9_-], up to 128 bytes", ep.Name, k)
		}
		if len(v) > 512 {
			return nil, fmt.Errorf("discovery: %s: meta %q is %d bytes, Consul allows 512", ep.Name, k, len(v))
		}
	}
	tags := append([]string(nil), r.Tags...)
	if c.cfg.Tag != "" {
		tags = append(tags, c.cfg.Tag)
	}
	url := r.HealthURL
	if url == "" {
		url = "http://" + ep.Address + "/health"
	}
	interval, timeout := r.CheckInterval, r.CheckTimeout
	if interval <= 0 {
		interval = 2 * time.Second
	}
	if timeout <= 0 {
		timeout = time.Second
	}
	check := &api.AgentServiceCheck{
		CheckID:  CheckID(ep.Name),
		Name:     "engine health " + url,
		HTTP:     url,
		Method:   "GET",
		Interval: interval.String(),
		Timeout:  timeout.String(),
	}
	if r.DeregisterAfter > 0 {
		check.DeregisterCriticalServiceAfter = r.DeregisterAfter.String()
	}
	return &api.AgentServiceRegistration{
		ID:      ep.Name,
		Name:    c.cfg.Service,
		Tags:    tags,
		Address: host,
		Port:    port,
		Meta:    meta,
		Check:   check,
	}, nil
}

// Register publishes r with the local agent (idempotent: registering the same ID again
// replaces it).
func (c *Consul) Register(ctx context.Context, r Registration) error {
	reg, err := c.registration(r)
	if err != nil {
		return err
	}
	if err := c.client.Agent().ServiceRegisterOpts(reg, api.ServiceRegisterOpts{}.WithContext(ctx)); err != nil {
		return fmt.Errorf("discovery: register %s: %w", reg.ID, err)
	}
	return nil
}

// Deregister removes the instance with this ID from the local agent. Removing one that is
// not there is not an error.
func (c *Consul) Deregister(ctx context.Context, id string) error {
	err := c.client.Agent().ServiceDeregisterOpts(id, (&api.QueryOptions{}).WithContext(ctx))
	if err != nil && !isNotFound(err) {
		return fmt.Errorf("discovery: deregister %s: %w", id, err)
	}
	return nil
}

// Registered reports whether the local agent holds the instance with this ID.
func (c *Consul) Registered(ctx context.Context, id string) (bool, error) {
	_, _, err := c.client.Agent().Service(id, (&api.QueryOptions{}).WithContext(ctx))
	if err == nil {
		return true, nil
	}
	if isNotFound(err) {
		return false, nil
	}
	return false, err
}

// Keep registers r and keeps it registered until ctx ends, then deregisters it. Every
// interval (0 = 5s) it asks the agent whether the instance is still there and registers it
// again when it is not (an agent restarted in dev mode, or a wiped data dir, forgets its
// services). Errors are logged and retried with backoff; Keep returns when ctx ends and the
// deregistration has been tried (bounded by 5s), with the invalid-registration error if r
// can never be registered.
func (c *Consul) Keep(ctx context.Context, r Registration, interval time.Duration) error {
	if _, err := c.registration(r); err != nil {
		return err
	}
	if interval <= 0 {
		interval = 5 * time.Second
	}
	id := r.Endpoint.Name
	log := c.log.With("id", id)
	defer func() {
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if err := c.Deregister(dctx, id); err != nil {
			log.Warn("consul deregistration failed", "err", err)
		} else {
			log.Info("deregistered from consul")
		}
	}()
	retry := backoff.New(c.cfg.MinBackoff, c.cfg.MaxBackoff)
	registered := false
	for {
		wait := interval
		present, err := false, error(nil)
		if registered {
			present, err = c.Registered(ctx, id)
		}
		if err == nil && !present {
			if err = c.Register(ctx, r); err == nil {
				if registered {
					log.Warn("consul had lost the instance; registered it again")
				} else {
					log.Info("registered in consul", "address", r.Endpoint.Address)
				}
				registered = true
			}
		}
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			log.Warn("consul registration check failed", "err", err)
			wait = retry.Next()
		} else {
			retry.Reset()
		}
		if !backoff.Sleep(ctx, backoff.Clock{}, wait) {
			return nil
		}
	}
}
