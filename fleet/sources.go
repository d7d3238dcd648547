package fleet

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	fleetv1 "github.com/kvgate/kvgate/api/fleet/v1"
	"github.com/kvgate/kvgate/router"
	"github.com/kvgate/kvgate/workerd"
)

// GRPCNode is a workerd reached over its fleet API.
type GRPCNode struct {
	addr string
	conn *grpc.ClientConn
	c    fleetv1.FleetClient
}

var _ Node = (*GRPCNode)(nil)

// NewGRPCNode dials (lazily) the workerd at addr; tc nil is plaintext.
func NewGRPCNode(addr string, tc *tls.Config) (*GRPCNode, error) {
	creds := insecure.NewCredentials()
	if tc != nil {
		creds = credentials.NewTLS(tc)
	}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		return nil, fmt.Errorf("fleet: workerd %s: %w", addr, err)
	}
	return &GRPCNode{addr: addr, conn: conn, c: fleetv1.NewFleetClient(conn)}, nil
}

// Name is the workerd's address.
func (n *GRPCNode) Name() string { return n.addr }

// Close closes the connection.
func (n *GRPCNode) Close() error { return n.conn.Close() }

// State calls Node.
func (n *GRPCNode) State(ctx context.Context) (*fleetv1.NodeResponse, error) {
	return n.c.Node(ctx, &fleetv1.NodeRequest{})
}

// Start calls Start.
func (n *GRPCNode) Start(ctx context.Context, template string, count int) ([]string, error) {
	r, err := n.c.Start(ctx, &fleetv1.StartRequest{Template: template, Count: int32(count)})
	return r.GetEngines(), err
}

// Drain calls Drain for the named engines.
func (n *GRPCNode) Drain(ctx context.Context, engines []string, timeout time.Duration) error {
	_, err := n.c.Drain(ctx, &fleetv1.DrainRequest{Engines: engines, TimeoutMs: timeout.Milliseconds()})
	return err
}

// Nodes finds workerds: the fixed addresses, and with a Consul client every instance of
// workerd.NodeService (with tag, when set). Connections are kept across calls and closed
// by Close. It is safe for concurrent use.
type Nodes struct {
	consul *api.Client
	tag    string
	fixed  []string
	tls    *tls.Config

	mu    sync.Mutex
	conns map[string]*GRPCNode
}

// NewNodes returns a node finder; consul nil uses only fixed.
func NewNodes(consul *api.Client, tag string, fixed []string, tc *tls.Config) *Nodes {
	return &Nodes{consul: consul, tag: tag, fixed: slices.Clone(fixed), tls: tc, conns: map[string]*GRPCNode{}}
}

// Source is the NodeSource of a Loop.
func (s *Nodes) Source(ctx context.Context) ([]Node, error) {
	addrs := slices.Clone(s.fixed)
	if s.consul != nil {
		entries, _, err := s.consul.Catalog().Service(workerd.NodeService, s.tag, (&api.QueryOptions{}).WithContext(ctx))
		if err != nil {
			return nil, fmt.Errorf("consul: %w", err)
		}
		for _, e := range entries {
			host := e.ServiceAddress
			if host == "" {
				host = e.Address
			}
			addrs = append(addrs, net.JoinHostPort(host, strconv.Itoa(e.ServicePort)))
		}
	}
	slices.Sort(addrs)
	addrs = slices.Compact(addrs)
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Node, 0, len(addrs))
	for _, a := range addrs {
		n := s.conns[a]
		if n == nil {
			var err error
			if n, err = NewGRPCNode(a, s.tls); err != nil {
				return nil, err
			}
			s.conns[a] = n
		}
		out = append(out, n)
	}
	for a, n := range s.conns { // workerds gone from Consul
		if !slices.Contains(addrs, a) {
			n.Close()
			delete(s.conns, a)
		}
	}
	return out, nil
}

// Close closes every connection.
func (s *Nodes) Close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for a, n := range s.conns {
		n.Close()
		delete(s.conns, a)
	}
}

// RouterDemand reads GET <url>/v1/pools from every router (base URLs such as
// http://127.0.0.1:9090, the routers' metrics listeners) and sums them per pool. Any router
// failing fails the read: partial sums would look like a drop in demand.
func RouterDemand(hc *http.Client, routers RouterSource) DemandSource {
	return func(ctx context.Context) ([]router.PoolStats, error) {
		urls, err := routers(ctx)
		if err != nil {
			return nil, err
		}
		sum := map[router.Pool]*router.PoolStats{}
		for _, u := range urls {
			pools, err := readPools(ctx, hc, strings.TrimSuffix(u, "/")+router.PoolsPath)
			if err != nil {
				return nil, err
			}
			for _, p := range pools {
				s := sum[p.Pool]
				if s == nil {
					s = &router.PoolStats{Pool: p.Pool}
					sum[p.Pool] = s
				}
				addPools(s, p)
			}
		}
		out := make([]router.PoolStats, 0, len(sum))
		for _, s := range sum {
			if s.KVReporting > 0 {
				s.KVUsage /= float64(s.KVReporting)
			}
			out = append(out, *s)
		}
		return out, nil
	}
}

// addPools adds p to s; KVUsage is summed weighted by KVReporting (divided by the caller).
func addPools(s *router.PoolStats, p router.PoolStats) {
	s.Endpoints = max(s.Endpoints, p.Endpoints) // every router sees the same endpoints
	s.Healthy = max(s.Healthy, p.Healthy)
	s.QueuedPrefillTokens += p.QueuedPrefillTokens
	s.RunningRequests += p.RunningRequests
	s.WaitingRequests = max(s.WaitingRequests, p.WaitingRequests) // engine-reported: the same engines
	s.KVUsage += p.KVUsage * float64(p.KVReporting)
	s.KVReporting += p.KVReporting
	s.Requests += p.Requests
	s.PromptTokens += p.PromptTokens
	s.CachedTokens += p.CachedTokens
	s.OutputTokens += p.OutputTokens
	s.TTFT = addHistogram(s.TTFT, p.TTFT)
	s.ITL = addHistogram(s.ITL, p.ITL)
}

// addHistogram is a + b, or a alone when the two have other bounds (routers of other
// versions: one router's latency is better than a mixed sum).
func addHistogram(a, b *router.Histogram) *router.Histogram {
	if b == nil {
		return a
	}
	if a == nil {
		c := *b
		c.Counts = append([]uint64(nil), b.Counts...)
		return &c
	}
	a.Add(b)
	return a
}

// validHistogram reports whether h could have come from a router: a count per bucket and one
// above the bounds, bounds positive, finite and increasing, counts that add up, a finite sum.
func validHistogram(h *router.Histogram) bool {
	if h == nil {
		return true
	}
	if len(h.Bounds) == 0 || len(h.Counts) != len(h.Bounds)+1 || !(h.Sum >= 0) || math.IsInf(h.Sum, 0) {
		return false
	}
	var n uint64
	for i, b := range h.Bounds {
		if !(b > 0) || math.IsInf(b, 0) || (i > 0 && b <= h.Bounds[i-1]) {
			return false
		}
	}
	for _, c := range h.Counts {
		if n+c < n {
			return false
		}
		n += c
	}
	return n == h.Count
}

func readPools(ctx context.Context, hc *http.Client, url string) ([]router.PoolStats, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("router %s: %w", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 8<<20))
	if err != nil {
		return nil, fmt.Errorf("router %s: %w", url, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("router %s: %s: %.200s", url, resp.Status, body)
	}
	pools, err := decodePools(body)
	if err != nil {
		return nil, fmt.Errorf("router %s: %w", url, err)
	}
	return pools, nil
}

// decodePools reads a /v1/pools body, refusing numbers a router cannot have sent (negative
// gauges, KV usage outside 0..1) so that a broken or hostile answer cannot steer the planner.
func decodePools(body []byte) ([]router.PoolStats, error) {
	var pr router.PoolsResponse
	if err := json.Unmarshal(body, &pr); err != nil {
		return nil, err
	}
	for _, p := range pr.Pools {
		if p.Endpoints < 0 || p.Healthy < 0 || p.QueuedPrefillTokens < 0 || p.RunningRequests < 0 || p.KVReporting < 0 ||
			!(p.WaitingRequests >= 0) || !(p.KVUsage >= 0 && p.KVUsage <= 1) || !validHistogram(p.TTFT) || !validHistogram(p.ITL) {
			return nil, fmt.Errorf("pool %s/%s: impossible values %+v", p.Model, p.Role, p)
		}
	}
	return pr.Pools, nil
}
