package xds

import (
	"github.com/kvgate/kvgate/discovery"
)

// Pools groups discovered engines by the models they serve, in the form Model.Pools takes.
// An engine serving several models appears in each model's pool.
func Pools(eps []discovery.Endpoint) map[string][]Endpoint {
	pools := map[string][]Endpoint{}
	for _, e := range eps {
		x := Endpoint{
			Name:      e.Name,
			Address:   e.Address,
			Role:      e.Role,
			Healthy:   e.Healthy,
			Workerd:   e.Workerd,
			BlockSize: e.BlockSize,
		}
		for _, model := range e.Models {
			pools[model] = append(pools[model], x)
		}
	}
	return pools
}
