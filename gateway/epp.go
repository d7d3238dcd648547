package gateway

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	filterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/kvgate/kvgate/router"
)

// EPPMode is how the gateway sends bodies to a remote EPP, as Envoy's ext_proc filter's
// processing mode.
type EPPMode string

// EPP processing modes.
const (
	// EPPFullDuplex sends the request and response bodies as FULL_DUPLEX_STREAMED: pieces go
	// out without waiting and come back as streamed_response chunks.
	EPPFullDuplex EPPMode = "FULL_DUPLEX_STREAMED"
	// EPPBuffered sends the request body BUFFERED (one message, one answer) and the response
	// body STREAMED (one answer per chunk, so SSE still streams).
	EPPBuffered EPPMode = "BUFFERED"
)

// ParseEPPMode accepts FULL_DUPLEX_STREAMED (or full-duplex) and BUFFERED, any case.
func ParseEPPMode(s string) (EPPMode, error) {
	switch strings.ToUpper(strings.ReplaceAll(s, "-", "_")) {
	case "FULL_DUPLEX_STREAMED", "FULL_DUPLEX", "":
		return EPPFullDuplex, nil
	case "BUFFERED":
		return EPPBuffered, nil
	}
	return "", fmt.Errorf("unknown EPP processing mode %q (want FULL_DUPLEX_STREAMED or BUFFERED)", s)
}

func (m EPPMode) bodyModes() (req, resp filterv3.ProcessingMode_BodySendMode) {
	if m == EPPBuffered {
		return filterv3.ProcessingMode_BUFFERED, filterv3.ProcessingMode_STREAMED
	}
	return filterv3.ProcessingMode_FULL_DUPLEX_STREAMED, filterv3.ProcessingMode_FULL_DUPLEX_STREAMED
}

// FailureMode is the InferencePool's failureMode: what happens when the EPP cannot pick.
type FailureMode string

// Failure modes.
const (
	// FailClose answers 503 when the EPP is unreachable, times out or breaks the protocol.
	FailClose FailureMode = "FailClose"
	// FailOpen picks among the pool's endpoints itself (round-robin) instead.
	FailOpen FailureMode = "FailOpen"
)

// ParseFailureMode accepts FailOpen and FailClose, any case.
func ParseFailureMode(s string) (FailureMode, error) {
	switch strings.ToLower(s) {
	case "failclose", "":
		return FailClose, nil
	case "failopen":
		return FailOpen, nil
	}
	return "", fmt.Errorf("unknown failure mode %q (want FailOpen or FailClose)", s)
}

// EPPConfig configures the remote-EPP data plane.
type EPPConfig struct {
	// Addr is the EPP's ext_proc gRPC address, host:port.
	Addr string
	// TLS, when set, is the client TLS configuration to the EPP (with Certificates: mutual TLS).
	TLS *tls.Config
	// Mode is the processing mode. Zero: EPPFullDuplex.
	Mode EPPMode
	// FailureMode applies when the EPP cannot pick. Zero: FailClose.
	FailureMode FailureMode
	// Timeout bounds each wait for an EPP answer on the request path (Envoy's
	// message_timeout) and for the stream's end. Zero: DefaultEPPTimeout.
	Timeout time.Duration
	// Pool is the InferencePool's endpoints: the only ones a pick may name, the subset hint
	// sent to the EPP, and what FailOpen picks among. Models lists what /v1/models serves.
	Pool []router.Endpoint
}

// DefaultEPPTimeout is EPPConfig.Timeout's default.
const DefaultEPPTimeout = 10 * time.Second

// eppChunk is the largest body piece sent to the EPP in one message (Envoy sends what
// arrives; kvgate's own server re-emits at most 62,000 bytes).
const eppChunk = 62000

// epp is the gateway's side of one remote EPP: the gRPC connection and the pool.
type epp struct {
	cfg    EPPConfig
	conn   *grpc.ClientConn
	client extprocv3.ExternalProcessorClient
	pool   map[string]bool // addresses
	tls    map[string]bool // the pool's addresses served over HTTPS
	subset []string        // the pool's addresses in order, sent as the subset hint
	next   atomic.Uint64   // FailOpen's round-robin
	m      *eppMetrics
	log    *slog.Logger
}

// NewEPP returns a Gateway whose picks come from a remote Endpoint Picker over ext_proc,
// driven as Envoy drives it. Close releases the connection.
func NewEPP(cfg Config, ec EPPConfig, log *slog.Logger, reg prometheus.Registerer) (*Gateway, error) {
	if ec.Addr == "" {
		return nil, errors.New("gateway: EPP address missing")
	}
	if len(ec.Pool) == 0 {
		return nil, errors.New("gateway: the EPP's pool has no endpoints")
	}
	if ec.Mode == "" {
		ec.Mode = EPPFullDuplex
	}
	if ec.FailureMode == "" {
		ec.FailureMode = FailClose
	}
	if ec.Timeout <= 0 {
		ec.Timeout = DefaultEPPTimeout
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	e := &epp{cfg: ec, pool: map[string]bool{}, tls: map[string]bool{}, log: log}
	for _, p := range ec.Pool {
		a, err := hostPort(p.Address)
		if err != nil {
			return nil, fmt.Errorf("gateway: pool endpoint %q: %w", p.Address, err)
		}
		if p.TLS {
			e.tls[a] = true
		}
		if !e.pool[a] {
			e.pool[a] = true
			e.subset = append(e.subset, a)
		}
	}
	var err error
	if e.m, err = newEPPMetrics(reg); err != nil {
		return nil, err
	}
	creds := insecure.NewCredentials()
	if ec.TLS != nil {
		creds = credentials.NewTLS(ec.TLS)
	}
	if e.conn, err = grpc.NewClient(ec.Addr, grpc.WithTransportCredentials(creds)); err != nil {
		return nil, fmt.Errorf("gateway: EPP %s: %w", ec.Addr, err)
	}
	e.client = extprocv3.NewExternalProcessorClient(e.conn)
	g, err := newGateway(cfg, poolModels(ec.Pool), log, reg, e)
	if err != nil {
		e.conn.Close()
		return nil, err
	}
	return g, nil
}

// poolModels lists the models of the pool's endpoints.
type poolModels []router.Endpoint

func (p poolModels) Models() []string {
	var out []string
	for _, e := range p {
		for _, m := range e.Models {
			if !slices.Contains(out, m) {
				out = append(out, m)
			}
		}
	}
	return out
}

func (poolModels) Route(context.Context, router.Request) (*router.Decision, error) {
	return nil, errors.New("gateway: a remote EPP routes")
}

// hostPort normalizes an endpoint address (host:port, or a URL) to host:port.
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

// failOpenPick is the pool in round-robin order starting at the next endpoint.
func (e *epp) failOpenPick() []string {
	n := len(e.subset)
	start := int(e.next.Add(1)-1) % n
	out := make([]string, 0, n)
	for i := range n {
		out = append(out, e.subset[(start+i)%n])
	}
	return out
}

// Close releases the EPP connection (nil for an in-process gateway).
func (g *Gateway) Close() error {
	if g.epp == nil {
		return nil
	}
	return g.epp.conn.Close()
}
