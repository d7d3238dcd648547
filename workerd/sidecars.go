package workerd

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"sync"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kvgate/kvgate/discovery"
	"github.com/kvgate/kvgate/sidecar"
)

// newSidecars binds a sidecar for every decode engine that has one; reg (nil: none) gets
// their metrics, labelled by instance; tc (nil: plaintext) is their TLS. Their known prefill
// engines are this node's and Config.PrefillEndpoints, and with Consul the ones followed
// there (Run).
func (w *Workerd) newSidecars(log *slog.Logger, reg prometheus.Registerer, tc *tls.Config) error {
	w.sidecars = map[string]*sidecar.Server{}
	fixed := slices.Clone(w.cfg.PrefillEndpoints)
	for _, p := range w.plans {
		if p.role == discovery.RolePrefill {
			fixed = append(fixed, p.addr)
		}
	}
	w.prefills = sidecar.NewPrefillSet(fixed...)
	w.decodes = sidecar.NewPrefillSet()
	for _, p := range w.plans {
		if p.sidecar == "" {
			continue
		}
		s, err := sidecar.New(sidecar.Config{Addr: p.sidecar, Engine: p.addr, Name: p.instance, Prefill: w.prefills, Decode: w.decodes, TLS: tc}, log, reg)
		if err != nil {
			for _, o := range w.sidecars {
				o.Close()
			}
			return fmt.Errorf("workerd: engine %s: %w", p.instance, err)
		}
		w.sidecars[p.instance] = s
	}
	return nil
}

// runSidecars serves every sidecar until the returned stop is called; stop waits for them.
func (w *Workerd) runSidecars(ctx context.Context) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	for name, s := range w.sidecars {
		wg.Go(func() {
			if err := s.Run(ctx); err != nil {
				w.log.Error("sidecar stopped", "engine", name, "err", err)
			}
		})
	}
	return func() { cancel(); wg.Wait() }
}

// engineAddress is where routers send an engine's requests: its sidecar when it has one.
func (w *Workerd) engineAddress(p plan) string {
	if s := w.sidecars[p.instance]; s != nil {
		return advertised(s.Addr(), p.addr)
	}
	return p.addr
}

// advertised is addr with an unspecified host (0.0.0.0, ::) replaced by like's host.
func advertised(addr, like string) string {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return addr
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
		if h, _, err := net.SplitHostPort(like); err == nil {
			host = h
		}
	}
	return net.JoinHostPort(host, port)
}
