package xds

import (
	"errors"
	"fmt"
	"strings"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"google.golang.org/protobuf/proto"

	"github.com/kvgate/kvgate/envoy"
)

// Check verifies that resources are what Envoy would accept: every resource passes its
// proto validation with typed configs unpacked and validated too, names are unique, every
// route names an existing cluster and can be reached (no earlier route takes all its paths),
// every listener's RDS name exists, and EDS clusters and assignments match one to one. It
// joins every problem found.
func Check(r *Resources) error {
	v := envoy.NewValidator()
	validate := func(kind, name string, m proto.Message) error {
		if err := v.Validate(m); err != nil {
			return fmt.Errorf("%s %q: %w", kind, name, err)
		}
		return nil
	}
	var errs []error
	clusters := map[string]*cluster.Cluster{}
	for _, c := range r.Clusters {
		errs = append(errs, validate("cluster", c.GetName(), c))
		if clusters[c.GetName()] != nil {
			errs = append(errs, fmt.Errorf("cluster %q defined twice", c.GetName()))
		}
		clusters[c.GetName()] = c
	}
	assignments := map[string]bool{}
	for _, a := range r.Endpoints {
		errs = append(errs, validate("endpoints", a.GetClusterName(), a))
		if assignments[a.GetClusterName()] {
			errs = append(errs, fmt.Errorf("endpoints %q defined twice", a.GetClusterName()))
		}
		assignments[a.GetClusterName()] = true
		c := clusters[a.GetClusterName()]
		if c == nil || c.GetType() != cluster.Cluster_EDS {
			errs = append(errs, fmt.Errorf("endpoints %q: no EDS cluster of that name", a.GetClusterName()))
		}
	}
	for name, c := range clusters {
		if c.GetType() == cluster.Cluster_EDS && !assignments[name] {
			errs = append(errs, fmt.Errorf("EDS cluster %q has no endpoints resource", name))
		}
	}
	routes := map[string]bool{}
	for _, rc := range r.Routes {
		errs = append(errs, validate("routes", rc.GetName(), rc))
		if routes[rc.GetName()] {
			errs = append(errs, fmt.Errorf("routes %q defined twice", rc.GetName()))
		}
		routes[rc.GetName()] = true
		for _, vh := range rc.GetVirtualHosts() {
			errs = append(errs, shadowed(vh)...)
			for _, rt := range vh.GetRoutes() {
				if a, ok := rt.GetAction().(*route.Route_Route); ok {
					if name := a.Route.GetCluster(); clusters[name] == nil {
						errs = append(errs, fmt.Errorf("route %q names cluster %q, which does not exist", rt.GetName(), name))
					}
				}
			}
		}
	}
	listeners := map[string]bool{}
	for _, l := range r.Listeners {
		errs = append(errs, validate("listener", l.GetName(), l))
		if listeners[l.GetName()] {
			errs = append(errs, fmt.Errorf("listener %q defined twice", l.GetName()))
		}
		listeners[l.GetName()] = true
		for _, fc := range l.GetFilterChains() {
			for _, f := range fc.GetFilters() {
				var m hcm.HttpConnectionManager
				if f.GetTypedConfig().MessageIs(&m) {
					if err := f.GetTypedConfig().UnmarshalTo(&m); err != nil {
						errs = append(errs, fmt.Errorf("listener %q: %w", l.GetName(), err))
						continue
					}
					if name := m.GetRds().GetRouteConfigName(); name != "" && !routes[name] {
						errs = append(errs, fmt.Errorf("listener %q asks for routes %q, which do not exist", l.GetName(), name))
					}
				}
			}
		}
	}
	return errors.Join(errs...)
}

// shadowed reports the routes of vh no request reaches because an earlier route matching on
// the path alone (exact or prefix, case sensitive) takes every path they match: an exact
// route after a prefix covering it, as Envoy takes the first match.
func shadowed(vh *route.VirtualHost) []error {
	var errs []error
	rs := vh.GetRoutes()
	for i, r := range rs {
		exact, prefix := r.GetMatch().GetPath(), r.GetMatch().GetPrefix()
		for _, e := range rs[:i] {
			m := e.GetMatch()
			if len(m.GetHeaders()) > 0 || len(m.GetQueryParameters()) > 0 || m.GetCaseSensitive() != nil ||
				m.GetRuntimeFraction() != nil || m.GetGrpc() != nil || m.GetTlsContext() != nil ||
				len(m.GetDynamicMetadata()) > 0 || m.GetFilterState() != nil {
				continue // matches only some requests
			}
			var covers bool
			switch p := m.GetPathSpecifier().(type) {
			case *route.RouteMatch_Path:
				covers = exact != "" && exact == p.Path
			case *route.RouteMatch_Prefix:
				covers = exact != "" && strings.HasPrefix(exact, p.Prefix) || prefix != "" && strings.HasPrefix(prefix, p.Prefix)
			}
			if covers {
				errs = append(errs, fmt.Errorf("route %q is never reached: route %q before it takes all its requests", r.GetName(), e.GetName()))
				break
			}
		}
	}
	return errs
}
