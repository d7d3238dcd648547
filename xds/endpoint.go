package xds

import (
	"cmp"
	"fmt"
	"net"
	"slices"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	"github.com/kvgate/kvgate/discovery"
	"google.golang.org/protobuf/types/known/structpb"
)

// buildAssignment is the EDS ClusterLoadAssignment of one pool. Endpoints arrive already
// checked and sorted by address; health is what discovery reports, Envoy's own health
// checks come on top.
func buildAssignment(name string, eps []Endpoint) *endpoint.ClusterLoadAssignment {
	lbs := make([]*endpoint.LbEndpoint, 0, len(eps))
	for _, e := range eps {
		sa, _ := socketAddress(e.Address) // checked by servingEndpoints
		health := core.HealthStatus_HEALTHY
		if !e.Healthy {
			health = core.HealthStatus_UNHEALTHY
		}
		lb := &endpoint.LbEndpoint{
			HostIdentifier: &endpoint.LbEndpoint_Endpoint{Endpoint: &endpoint.Endpoint{
				Address:  &core.Address{Address: &core.Address_SocketAddress{SocketAddress: sa}},
				Hostname: e.Name,
			}},
			HealthStatus: health,
		}
		if md := endpointMetadata(e); md != nil {
			lb.Metadata = &core.Metadata{FilterMetadata: map[string]*structpb.Struct{metadataNamespace: md}}
		}
		lbs = append(lbs, lb)
	}
	return &endpoint.ClusterLoadAssignment{
		ClusterName: name,
		Endpoints:   []*endpoint.LocalityLbEndpoints{{LbEndpoints: lbs}},
	}
}

func endpointMetadata(e Endpoint) *structpb.Struct {
	f := map[string]*structpb.Value{}
	if e.Role != "" {
		f["role"] = structpb.NewStringValue(e.Role)
	}
	if e.Workerd != "" {
		f["workerd"] = structpb.NewStringValue(e.Workerd)
	}
	if e.BlockSize > 0 {
		f["block_size"] = structpb.NewNumberValue(float64(e.BlockSize))
	}
	if len(f) == 0 {
		return nil
	}
	return &structpb.Struct{Fields: f}
}

// servingEndpoints keeps the endpoints that can take client requests (aggregated and decode
// engines with an ip:port address), deduplicated by address and sorted, and reports the
// ones it drops.
func servingEndpoints(model string, eps []Endpoint) ([]Endpoint, []error) {
	var out []Endpoint
	var problems []error
	seen := map[string]bool{}
	for _, e := range eps {
		switch e.Role {
		case "", discovery.RoleAggregated, discovery.RoleDecode:
		case discovery.RolePrefill:
			continue
		default:
			problems = append(problems, fmt.Errorf("model %q: endpoint %q (%s): unknown role %q, left out", model, e.Name, e.Address, e.Role))
			continue
		}
		if err := checkIPPort(e.Address); err != nil {
			problems = append(problems, fmt.Errorf("model %q: endpoint %q: %w, left out", model, e.Name, err))
			continue
		}
		if seen[e.Address] {
			problems = append(problems, fmt.Errorf("model %q: endpoint %s listed twice, kept once", model, e.Address))
			continue
		}
		seen[e.Address] = true
		out = append(out, e)
	}
	slices.SortFunc(out, func(a, b Endpoint) int { return cmp.Compare(a.Address, b.Address) })
	return out, problems
}

// checkIPPort accepts ip:port only: EDS endpoints are not resolved by Envoy.
func checkIPPort(addr string) error {
	sa, err := socketAddress(addr)
	if err != nil {
		return fmt.Errorf("address %q: %w", addr, err)
	}
	if net.ParseIP(sa.GetAddress()) == nil {
		return fmt.Errorf("address %q is not ip:port", addr)
	}
	return nil
}
