// Package xds is kvgate's Envoy control plane: it translates discovered endpoints and the
// routing config into Envoy's listeners, routes, clusters and endpoints and serves them over
// xDS. It owns no step of a request or a KV event; it configures Envoy, which does R1 and R7.
package xds

import (
	"errors"
	"fmt"
	"slices"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
)

// Resources is one complete, consistent Envoy configuration, each list sorted by name. Treat
// it as read-only once Translate returns it: its versions are computed once.
type Resources struct {
	Listeners []*listener.Listener
	Clusters  []*cluster.Cluster
	Routes    []*route.RouteConfiguration
	Endpoints []*endpoint.ClusterLoadAssignment

	versions *[4]string // per type, in groups() order; nil until first asked
}

// Translate turns a Model into Envoy resources. It is a pure function: same model, same
// resources, byte for byte. A nil *Resources comes with a fatal error (the model cannot be
// served: no router, a bad listener address). Otherwise the resources are complete, checked
// by Check, and the error, when not nil, joins the non-fatal problems met on the way
// (endpoints left out, models without engines) for the caller to report.
func Translate(m Model) (*Resources, error) {
	o := m.Options.withDefaults()
	if err := checkOptions(o); err != nil {
		return nil, err
	}
	if len(m.Router) == 0 {
		return nil, errors.New("xds: no router address: the ext_proc filter needs one")
	}
	lis, err := buildListener(m, o)
	if err != nil {
		return nil, fmt.Errorf("xds: %w", err)
	}
	rc, err := buildRouterCluster(m, o)
	if err != nil {
		return nil, fmt.Errorf("xds: router: %w", err)
	}

	var problems []error
	models := make([]string, 0, len(m.Pools))
	for name := range m.Pools {
		if name == "" {
			problems = append(problems, errors.New("a pool with an empty model name, left out"))
			continue
		}
		models = append(models, name)
	}
	slices.Sort(models)

	res := &Resources{
		Listeners: []*listener.Listener{lis},
		Routes:    []*route.RouteConfiguration{buildRoutes(models, o)},
		Clusters:  []*cluster.Cluster{rc, buildPickedCluster(o), buildPoolCluster(EnginesCluster, o)},
	}
	all := map[string]Endpoint{}
	for _, model := range models {
		eps, p := servingEndpoints(model, m.Pools[model])
		problems = append(problems, p...)
		if len(eps) == 0 {
			problems = append(problems, fmt.Errorf("model %q has no serving engine", model))
		}
		for _, e := range eps {
			all[e.Address] = e
		}
		name := ModelCluster(model)
		res.Clusters = append(res.Clusters, buildPoolCluster(name, o))
		res.Endpoints = append(res.Endpoints, buildAssignment(name, eps))
	}
	engines := make([]Endpoint, 0, len(all))
	for _, e := range all {
		engines = append(engines, e)
	}
	engines, _ = servingEndpoints("", engines) // sorts; already checked
	res.Endpoints = append(res.Endpoints, buildAssignment(EnginesCluster, engines))
	res.sort()

	if err := Check(res); err != nil {
		// A bug in the translation, not in the input: say so loudly.
		return nil, fmt.Errorf("xds: generated configuration is invalid: %w", err)
	}
	return res, errors.Join(problems...)
}

func checkOptions(o Options) error {
	switch o.RequestBody {
	case BodyBuffered, BodyFullDuplex:
	default:
		return fmt.Errorf("xds: request body mode %q: want %s or %s", o.RequestBody, BodyBuffered, BodyFullDuplex)
	}
	switch o.ResponseBody {
	case BodyStreamed, BodyFullDuplex:
	default:
		return fmt.Errorf("xds: response body mode %q: want %s or %s", o.ResponseBody, BodyStreamed, BodyFullDuplex)
	}
	return nil
}

func (r *Resources) sort() {
	slices.SortFunc(r.Listeners, func(a, b *listener.Listener) int { return compareNames(a.GetName(), b.GetName()) })
	slices.SortFunc(r.Clusters, func(a, b *cluster.Cluster) int { return compareNames(a.GetName(), b.GetName()) })
	slices.SortFunc(r.Routes, func(a, b *route.RouteConfiguration) int { return compareNames(a.GetName(), b.GetName()) })
	slices.SortFunc(r.Endpoints, func(a, b *endpoint.ClusterLoadAssignment) int {
		return compareNames(a.GetClusterName(), b.GetClusterName())
	})
}

func compareNames(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}
