package main

import (
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/kvgate/kvgate/router"
)

func TestLoadEndpointsFile(t *testing.T) {
	cases := []struct {
		name, text string
		want       []router.Endpoint
		err        bool
	}{
		{"yaml list", `
- name: gpu0
  address: http://10.0.0.5:8000
  models: [m]
  kv_events: tcp://10.0.0.5:5557
  kv_bind: true
- address: 10.0.0.6:8000
  role: decode
  block_size: 32
`, []router.Endpoint{
			{Name: "gpu0", Address: "10.0.0.5:8000", Models: []string{"m"}, Role: router.RoleAggregated, BlockSize: 16, KVEvents: "tcp://10.0.0.5:5557", KVBind: true},
			{Name: "10.0.0.6:8000", Address: "10.0.0.6:8000", Role: router.RoleDecode, BlockSize: 32},
		}, false},
		{"json wrapped", `{"endpoints":[{"address":"a:1","metrics_url":"http://a:1/metrics"}]}`,
			[]router.Endpoint{{Name: "a:1", Address: "a:1", Role: router.RoleAggregated, BlockSize: 16, MetricsURL: "http://a:1/metrics"}}, false},
		{"no address", `[{"name":"x"}]`, nil, true},
		{"not a list", `42`, nil, true},
		{"bad yaml", "- [", nil, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "eps.yaml")
			if err := os.WriteFile(p, []byte(c.text), 0o600); err != nil {
				t.Fatal(err)
			}
			got, err := loadEndpointsFile(p)
			if (err != nil) != c.err {
				t.Fatalf("err %v, want error %v", err, c.err)
			}
			if !c.err && !reflect.DeepEqual(got, c.want) {
				t.Errorf("got %+v\nwant %+v", got, c.want)
			}
		})
	}
}

func TestHostPort(t *testing.T) {
	for in, want := range map[string]string{
		"http://10.0.0.5:8000":     "10.0.0.5:8000",
		"http://10.0.0.5:8000/v1/": "10.0.0.5:8000",
		"10.0.0.5:8000":            "10.0.0.5:8000",
		"10.0.0.5:8000/":           "10.0.0.5:8000",
		"http://[::1]:80":          "[::1]:80",
	} {
		if got := hostPort(in); got != want {
			t.Errorf("hostPort(%q) = %q, want %q", in, got, want)
		}
	}
}

// FuzzLoadEndpointsFile checks the endpoint file loader never panics and never returns an
// endpoint without an address.
func FuzzLoadEndpointsFile(f *testing.F) {
	f.Add([]byte("- address: a:1\n  models: [m]\n"))
	f.Add([]byte(`{"endpoints":[{"address":"a:1"}]}`))
	f.Add([]byte(`[{"address":"http://x:1","kv_bind":true,"block_size":-3}]`))
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, data []byte) {
		p := filepath.Join(dir, "eps.yaml")
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		eps, err := loadEndpointsFile(p)
		if err != nil {
			return
		}
		for _, e := range eps {
			if e.Name == "" || e.Role == "" || e.Address == "" || e.BlockSize <= 0 {
				t.Fatalf("endpoint without defaults: %+v", e)
			}
		}
	})
}
