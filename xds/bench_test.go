package xds_test

import (
	"context"
	"fmt"
	"testing"

	cache "github.com/envoyproxy/go-control-plane/pkg/cache/v3"

	"github.com/kvgate/kvgate/discovery"
	"github.com/kvgate/kvgate/xds"
)

// fleet is 1,000 engines across 50 models, 20 per model.
func fleet() []discovery.Endpoint {
	eps := make([]discovery.Endpoint, 0, 1000)
	for i := range 1000 {
		eps = append(eps, discovery.Endpoint{
			Name:      fmt.Sprintf("engine-%d", i),
			Address:   fmt.Sprintf("10.%d.%d.%d:8000", i/65536, (i/256)%256, i%256),
			Models:    []string{fmt.Sprintf("model-%02d", i%50)},
			Role:      discovery.RoleAggregated,
			BlockSize: 16,
			Workerd:   fmt.Sprintf("10.%d.%d.%d:9100", i/65536, (i/256)%256, i%256),
			Healthy:   true,
		})
	}
	return eps
}

// BenchmarkSnapshotRebuild times what the server does on every discovery change with 1,000
// engines across 50 models: group into pools, translate, validate every resource (typed
// configs included) and check consistency, hash versions, build the snapshot and set it in
// the go-control-plane cache. "unchanged" is the same work up to the version hash, where
// the server stops when nothing changed.
func BenchmarkSnapshotRebuild(b *testing.B) {
	eps := fleet()
	base := xds.Model{Router: []string{"10.255.0.1:9002", "10.255.0.2:9002"}}
	b.Run("changed", func(b *testing.B) {
		c := cache.NewSnapshotCache(true, cache.IDHash{}, nil)
		ctx := context.Background()
		var resources int
		b.ReportAllocs()
		for i := 0; b.Loop(); i++ {
			eps[i%len(eps)].Healthy = !eps[i%len(eps)].Healthy // a real change every time
			m := base
			m.Pools = xds.Pools(eps)
			res, err := xds.Translate(m)
			if err != nil {
				b.Fatal(err)
			}
			snap, err := res.Snapshot()
			if err != nil {
				b.Fatal(err)
			}
			if err := c.SetSnapshot(ctx, "kvgate", snap); err != nil {
				b.Fatal(err)
			}
			resources = len(res.Listeners) + len(res.Clusters) + len(res.Routes) + len(res.Endpoints)
		}
		b.ReportMetric(float64(resources), "resources")
		b.ReportMetric(1000, "engines")
	})
	b.Run("unchanged", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			m := base
			m.Pools = xds.Pools(eps)
			res, err := xds.Translate(m)
			if err != nil {
				b.Fatal(err)
			}
			if _, err := res.Version(); err != nil {
				b.Fatal(err)
			}
		}
	})
}
