// Package conformance checks an Endpoint Picker (EPP) as a black box against the Gateway API
// Inference Extension's Endpoint Picker Protocol, and for the behaviour a user of one cares
// about (prefix affinity, load spreading). It drives the EPP over ext_proc as Envoy does and
// runs the behaviour checks through kvgate's remote-EPP gateway against the real engines.
package conformance

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"text/tabwriter"
	"time"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
)

// Names of the Endpoint Picker Protocol (kept here: the suite owes nothing to kvgate's own
// router).
const (
	headerDestination = "x-gateway-destination-endpoint"
	lbNamespace       = "envoy.lb"
	servedKey         = "x-gateway-destination-endpoint-served"
	subsetNamespace   = "envoy.lb.subset_hint"
	subsetKey         = "x-gateway-destination-endpoint-subset"
	extProcService    = "envoy.service.ext_proc.v3.ExternalProcessor"
	// maxChunk is the largest body piece an EPP may send back in one streamed_response:
	// Envoy's ext_proc streams bodies in pieces under 64 KiB.
	maxChunk = 64 << 10
)

// Config is the EPP under test and its pool.
type Config struct {
	// EPP is the ext_proc gRPC address; Health the gRPC health address (default EPP).
	EPP, Health string
	// TLS, when set, is the client TLS configuration to the EPP (and its health port).
	TLS *tls.Config
	// Endpoints are the pool's ready engines, host:port (or URLs).
	Endpoints []string
	// Unready, when set, is an endpoint of the EPP's pool that is down: the check that a
	// pick with no ready endpoint is a 503 uses it (skipped without).
	Unready string
	// ShedHeader, when set ("name: value"), marks a request sheddable: the 429 check floods
	// the pool with such requests and expects 429s (skipped without).
	ShedHeader string
	// Model is the model the requests name.
	Model string
	// Timeout bounds each wait for an answer. Zero: 30s.
	Timeout time.Duration
}

// Result is one check's outcome.
type Result struct {
	Name    string `json:"name"`
	Pass    bool   `json:"pass"`
	Skipped bool   `json:"skipped,omitempty"`
	Detail  string `json:"detail"`
}

// Report is every check's outcome, in order.
type Report struct {
	Checks []Result `json:"checks"`
}

// Failed counts the checks that ran and failed.
func (r Report) Failed() int {
	n := 0
	for _, c := range r.Checks {
		if !c.Pass && !c.Skipped {
			n++
		}
	}
	return n
}

// WriteJSON writes the report as {"checks":[...]}.
func (r Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

// WriteTable writes one line per check: name, PASS/FAIL/SKIP, detail.
func (r Report) WriteTable(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "CHECK\tRESULT\tDETAIL")
	for _, c := range r.Checks {
		res := "PASS"
		switch {
		case c.Skipped:
			res = "SKIP"
		case !c.Pass:
			res = "FAIL"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\n", c.Name, res, c.Detail)
	}
	fmt.Fprintf(tw, "\n%d checks, %d failed\n", len(r.Checks), r.Failed())
	return tw.Flush()
}

// Suite runs the checks against one EPP.
type Suite struct {
	cfg    Config
	log    *slog.Logger
	conn   *grpc.ClientConn
	health *grpc.ClientConn
	client extprocv3.ExternalProcessorClient
	pool   map[string]bool // ready endpoints and the unready one
}

// check is one named check; it returns what it saw, or an error saying what is wrong.
type check struct {
	name string
	run  func(ctx context.Context, s *Suite) (string, error)
}

// errSkip marks a check that cannot run with the configuration given.
type errSkip string

func (e errSkip) Error() string { return string(e) }

// Run runs every check against the EPP and returns the report. An error means the suite
// could not start (bad configuration), not that the EPP failed a check.
func Run(ctx context.Context, cfg Config, log *slog.Logger) (Report, error) {
	s, err := newSuite(cfg, log)
	if err != nil {
		return Report{}, err
	}
	defer s.close()
	var rep Report
	for _, c := range checks {
		rep.Checks = append(rep.Checks, s.run(ctx, c))
	}
	return rep, nil
}

func newSuite(cfg Config, log *slog.Logger) (*Suite, error) {
	if cfg.EPP == "" {
		return nil, errors.New("conformance: the EPP address is missing")
	}
	if len(cfg.Endpoints) == 0 {
		return nil, errors.New("conformance: the pool has no endpoints")
	}
	if cfg.Model == "" {
		return nil, errors.New("conformance: the model is missing")
	}
	if cfg.Health == "" {
		cfg.Health = cfg.EPP
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 30 * time.Second
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Suite{cfg: cfg, log: log, pool: map[string]bool{}}
	for i, e := range cfg.Endpoints {
		hp, err := hostPort(e)
		if err != nil {
			return nil, fmt.Errorf("conformance: endpoint %q: %w", e, err)
		}
		s.cfg.Endpoints[i] = hp
		s.pool[hp] = true
	}
	if cfg.Unready != "" {
		hp, err := hostPort(cfg.Unready)
		if err != nil {
			return nil, fmt.Errorf("conformance: unready endpoint %q: %w", cfg.Unready, err)
		}
		s.cfg.Unready = hp
		s.pool[hp] = true
	}
	creds := insecure.NewCredentials()
	if cfg.TLS != nil {
		creds = credentials.NewTLS(cfg.TLS)
	}
	var err error
	if s.conn, err = grpc.NewClient(cfg.EPP, grpc.WithTransportCredentials(creds)); err != nil {
		return nil, fmt.Errorf("conformance: %w", err)
	}
	s.health = s.conn
	if cfg.Health != cfg.EPP {
		if s.health, err = grpc.NewClient(cfg.Health, grpc.WithTransportCredentials(creds)); err != nil {
			s.conn.Close()
			return nil, fmt.Errorf("conformance: %w", err)
		}
	}
	s.client = extprocv3.NewExternalProcessorClient(s.conn)
	return s, nil
}

func (s *Suite) close() {
	if s.health != s.conn {
		s.health.Close()
	}
	s.conn.Close()
}

func (s *Suite) run(ctx context.Context, c check) Result {
	ctx, cancel := context.WithTimeout(ctx, 4*s.cfg.Timeout)
	defer cancel()
	detail, err := c.run(ctx, s)
	var skip errSkip
	switch {
	case errors.As(err, &skip):
		return Result{Name: c.name, Skipped: true, Detail: "skipped: " + skip.Error()}
	case err != nil:
		s.log.Debug("conformance check failed", "check", c.name, "error", err)
		return Result{Name: c.name, Detail: err.Error()}
	}
	return Result{Name: c.name, Pass: true, Detail: detail}
}

// hostPort normalizes an endpoint (host:port or a URL) to host:port.
func hostPort(addr string) (string, error) {
	if _, rest, ok := strings.Cut(addr, "://"); ok {
		addr = strings.TrimRight(rest, "/")
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", err
	}
	if host == "" || port == "" {
		return "", fmt.Errorf("%q is not host:port", addr)
	}
	return net.JoinHostPort(host, port), nil
}
