package xds_test

import (
	"strings"
	"testing"

	"github.com/kvgate/kvgate/xds"
)

func TestParseEndpoints(t *testing.T) {
	tests := []struct {
		name, in, err string
		n             int
		healthy       bool
	}{
		{name: "defaults", in: "- {address: \"10.0.0.1:8000\", models: [m]}\n", n: 1, healthy: true},
		{name: "explicit unhealthy", in: "- {name: a, address: \"10.0.0.1:8000\", models: [m], healthy: false, role: decode}\n", n: 1},
		{name: "json", in: `[{"name":"a","address":"10.0.0.1:8000","models":["m"],"blockSize":16}]`, n: 1, healthy: true},
		{name: "empty", in: "[]", n: 0},
		{name: "no models", in: "- {address: \"10.0.0.1:8000\"}\n", err: "required"},
		{name: "no address", in: "- {models: [m]}\n", err: "required"},
		{name: "unknown field", in: "- {address: \"10.0.0.1:8000\", models: [m], gpu: 1}\n", err: "unknown field"},
		{name: "not a list", in: "address: x\n", err: "endpoints file"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			eps, err := xds.ParseEndpoints([]byte(tt.in))
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("error = %v, want %q", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(eps) != tt.n {
				t.Fatalf("got %d endpoints, want %d", len(eps), tt.n)
			}
			if tt.n > 0 {
				if eps[0].Healthy != tt.healthy || eps[0].Name == "" || eps[0].Role == "" {
					t.Errorf("endpoint = %+v", eps[0])
				}
			}
		})
	}
}

// FuzzParseEndpoints: no file makes the parser or the translation of what it returns panic.
func FuzzParseEndpoints(f *testing.F) {
	f.Add([]byte("- {name: a, address: \"10.0.0.1:8000\", models: [m, n], role: prefill}\n"))
	f.Add([]byte(`[{"address":"[::1]:8000","models":[""]}]`))
	f.Fuzz(func(t *testing.T, data []byte) {
		eps, err := xds.ParseEndpoints(data)
		if err != nil {
			return
		}
		res, _ := xds.Translate(xds.Model{Router: []string{"127.0.0.1:9002"}, Pools: xds.Pools(eps)})
		if res == nil {
			t.Fatal("endpoints made the translation fail")
		}
	})
}
