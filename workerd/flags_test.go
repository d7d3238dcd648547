package workerd

import (
	"strings"
	"testing"

	"github.com/spf13/pflag"
)

// TestFlagsConfig: flags given on the command line win over the file field by field,
// --engine adds to the file's engines, --no-consul drops the file's Consul, defaults apply
// only when neither says anything, and no engine at all is refused.
func TestFlagsConfig(t *testing.T) {
	for _, tc := range []struct {
		name    string
		args    []string
		check   func(t *testing.T, c Config)
		wantErr string
	}{
		{"file only", []string{"--config", "testdata/workerd.yaml"}, func(t *testing.T, c Config) {
			if c.Listen != "0.0.0.0:7070" || c.Node != "gpu-node-12" || len(c.Engines) != 3 || c.Consul == nil {
				t.Errorf("config = %+v", c)
			}
		}, ""},
		{"flags win", []string{"--config", "testdata/workerd.yaml", "--listen", "127.0.0.1:9", "--node", "n2",
			"--no-consul", "--engine", "kind=sim,model=m", "--prefill", "10.0.0.9:8000"}, func(t *testing.T, c Config) {
			if c.Listen != "127.0.0.1:9" || c.Node != "n2" || c.Consul != nil {
				t.Errorf("listen %q node %q consul %+v", c.Listen, c.Node, c.Consul)
			}
			if len(c.Engines) != 4 || c.Engines[3].Kind != KindSim || c.Engines[3].Model != "m" {
				t.Errorf("engines %+v", c.Engines)
			}
			if len(c.PrefillEndpoints) == 0 || c.PrefillEndpoints[len(c.PrefillEndpoints)-1] != "10.0.0.9:8000" {
				t.Errorf("prefills %v", c.PrefillEndpoints)
			}
		}, ""},
		{"defaults", []string{"--engine", "kind=sim,model=m", "--consul", "127.0.0.1:8500"}, func(t *testing.T, c Config) {
			if c.Listen != DefaultListen || c.Consul == nil || c.Consul.Address != "127.0.0.1:8500" || len(c.Engines) != 1 {
				t.Errorf("config = %+v", c)
			}
		}, ""},
		{"no engines", nil, nil, "no engines"},
		{"bad engine", []string{"--engine", "kind=sim,port=x"}, nil, "not a non-negative integer"},
		{"missing file", []string{"--config", "testdata/none.yaml"}, nil, "none.yaml"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var f Flags
			fs := pflag.NewFlagSet("workerd", pflag.ContinueOnError)
			f.Register(fs)
			if err := fs.Parse(tc.args); err != nil {
				t.Fatal(err)
			}
			c, _, err := f.Config()
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tc.check(t, c)
		})
	}
}
