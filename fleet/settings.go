package fleet

import (
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/kvgate/kvgate/planner"
	"github.com/kvgate/kvgate/tlsconfig"
)

// Settings are `kvgate planner`'s: where the nodes and routers are, and the planner's
// targets. Build makes the Loop.
type Settings struct {
	Consul    string   // Consul agent HTTP address: workerds registered as workerd.NodeService
	ConsulTag string   // only workerds with this tag
	RouterTag string   // only routers with this tag
	Workerds  []string // workerd gRPC addresses besides Consul's
	Routers   []string // router metrics base URLs (GET <url>/v1/pools), besides Consul's RouterService
	TLS       tlsconfig.Files

	Mode         string
	TTFT, ITL    time.Duration
	GPUBudget    int
	Interval     time.Duration
	Startup      time.Duration
	DownBand     float64 // sla: planner.Config.DownBand (0: its default)
	Profile      string  // profile file (sla mode)
	Advisory     bool
	DrainTimeout time.Duration
}

// Build checks the settings and makes the loop; close releases its connections.
func (s Settings) Build(log *slog.Logger, reg prometheus.Registerer) (l *Loop, close func(), err error) {
	if len(s.Routers) == 0 && s.Consul == "" {
		return nil, nil, errors.New("planner: no router: give --consul ADDR (routers with --metrics-addr register there) or --router URL")
	}
	if s.Consul == "" && len(s.Workerds) == 0 {
		return nil, nil, errors.New("planner: no workerds: give --consul ADDR or --workerd ADDR")
	}
	pc := planner.Config{Mode: s.Mode, TTFT: s.TTFT, ITL: s.ITL, GPUBudget: s.GPUBudget, Interval: s.Interval, Startup: s.Startup, DownBand: s.DownBand}
	if s.Profile != "" {
		if pc.Profile, err = planner.LoadProfile(s.Profile); err != nil {
			return nil, nil, fmt.Errorf("planner: --profile: %w", err)
		}
	} else if s.Mode == planner.ModeSLA {
		return nil, nil, errors.New("planner: sla mode needs --profile FILE (record one with `kvgate planner profile`), or use --mode load")
	}
	tc, err := s.TLS.Client()
	if err != nil {
		return nil, nil, fmt.Errorf("planner: tls: %w", err)
	}
	var cc *api.Client
	if s.Consul != "" {
		cfg := api.DefaultConfig()
		cfg.Address = s.Consul
		if cc, err = api.NewClient(cfg); err != nil {
			return nil, nil, fmt.Errorf("planner: consul: %w", err)
		}
	}
	nodes := NewNodes(cc, s.ConsulTag, s.Workerds, tc)
	routers := FixedRouters(s.Routers)
	if cc != nil {
		routers = ConsulRouters(cc, s.RouterTag, s.Routers)
	}
	l, err = New(Config{
		Planner: pc, Advisory: s.Advisory, DrainTimeout: s.DrainTimeout,
		Nodes: nodes.Source, Demand: RouterDemand(&http.Client{Timeout: 5 * time.Second}, routers),
	}, log, reg)
	if err != nil {
		nodes.Close()
		return nil, nil, err
	}
	return l, nodes.Close, nil
}
