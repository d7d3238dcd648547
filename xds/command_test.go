package xds_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"

	"github.com/kvgate/kvgate/tlsconfig"
	"github.com/kvgate/kvgate/xds"
)

func writeTemp(t *testing.T, name, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// parseFlags registers xds.Flags on a fresh flag set and parses args as the command would.
func parseFlags(t *testing.T, args ...string) *xds.Flags {
	t.Helper()
	var f xds.Flags
	fs := pflag.NewFlagSet("xds", pflag.ContinueOnError)
	fs.SetOutput(&bytes.Buffer{})
	f.Register(fs)
	if err := fs.Parse(args); err != nil {
		t.Fatal(err)
	}
	return &f
}

// TestFlagsModel: the --config file is the base, flags given on the command line win field
// by field, flags left at their defaults do not override the file.
func TestFlagsModel(t *testing.T) {
	cfg := writeTemp(t, "xds.yaml", `
listener: "0.0.0.0:10000"
router: ["10.0.0.1:9002"]
router_tls: {ca: /etc/ca.crt, cert: /etc/envoy.crt, key: /etc/envoy.key, server_name: router.svc}
options:
  request_body: full-duplex
  message_timeout: 1s
  failure_mode_allow: true
`)
	oldCfg := writeTemp(t, "old.yaml", `
router: ["10.0.0.1:9002"]
routerTLS: {ca: /etc/ca.crt, sni: router.svc}
options: {messageTimeout: 1s}
`)
	for _, tc := range []struct {
		name  string
		args  []string
		want  xds.Model
		warns int
		err   string
	}{
		{name: "flags only", args: []string{"--router", "10.0.0.9:9002", "--message-timeout", "2s"},
			want: xds.Model{Listener: xds.DefaultEnvoyListen, Router: []string{"10.0.0.9:9002"}, Options: xds.Options{MessageTimeout: xds.Duration(2 * time.Second)}}},
		{name: "file only", args: []string{"--config", cfg},
			want: xds.Model{Listener: "0.0.0.0:10000", Router: []string{"10.0.0.1:9002"},
				RouterTLS: &tlsconfig.Files{CA: "/etc/ca.crt", Cert: "/etc/envoy.crt", Key: "/etc/envoy.key", ServerName: "router.svc"},
				Options:   xds.Options{RequestBody: "full-duplex", MessageTimeout: xds.Duration(time.Second), FailureModeAllow: true}}},
		{name: "flags win field by field", args: []string{"--config", cfg, "--router", "10.0.0.2:9002", "--envoy-listen", "127.0.0.1:1",
			"--router-tls-server-name", "other.svc", "--failure-mode-allow=false", "--response-body", "full-duplex"},
			want: xds.Model{Listener: "127.0.0.1:1", Router: []string{"10.0.0.2:9002"},
				RouterTLS: &tlsconfig.Files{CA: "/etc/ca.crt", Cert: "/etc/envoy.crt", Key: "/etc/envoy.key", ServerName: "other.svc"},
				Options:   xds.Options{RequestBody: "full-duplex", ResponseBody: "full-duplex", MessageTimeout: xds.Duration(time.Second)}}},
		{name: "old flag and old keys", args: []string{"--config", oldCfg, "--router-tls-sni", "flag.svc"}, warns: 3,
			want: xds.Model{Listener: xds.DefaultEnvoyListen, Router: []string{"10.0.0.1:9002"},
				RouterTLS: &tlsconfig.Files{CA: "/etc/ca.crt", ServerName: "flag.svc"},
				Options:   xds.Options{MessageTimeout: xds.Duration(time.Second)}}},
		{name: "no router", args: nil, err: "--router is required"},
		{name: "server name without a CA", args: []string{"--router", "a:1", "--router-tls-server-name", "x"}, err: "does not enable TLS"},
		{name: "pools in the config", args: []string{"--config", writeTemp(t, "p.yaml", "router: [a:1]\npools: {m: []}\n")}, err: "pools come from discovery"},
		{name: "unknown key in the config", args: []string{"--config", writeTemp(t, "u.yaml", "router: [a:1]\nrouter_tsl: {}\n")}, err: `line 2: unknown field "router_tsl"`},
		{name: "missing config", args: []string{"--config", "/nonexistent.yaml"}, err: "no such file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, warns, err := parseFlags(t, tc.args...).Model()
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err = %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(m, tc.want) {
				t.Errorf("model\n got %+v %+v\nwant %+v %+v", m, m.RouterTLS, tc.want, tc.want.RouterTLS)
			}
			if len(warns) != tc.warns {
				t.Errorf("warnings %q, want %d", warns, tc.warns)
			}
		})
	}
}

// TestFlagsConfig: the source and the server side, defaults loopback.
func TestFlagsConfig(t *testing.T) {
	eps := writeTemp(t, "eps.yaml", "- {address: \"10.0.0.1:8000\", models: [m]}\n")
	cfg, err := parseFlags(t, "--router", "a:1", "--endpoints", eps).Config(nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Listen != "127.0.0.1:18000" || cfg.Source == nil || cfg.TLS.Enabled() {
		t.Fatalf("config %+v", cfg)
	}
	for _, tc := range []struct {
		args []string
		err  string
	}{
		{[]string{"--router", "a:1"}, "--consul ADDR or --endpoints FILE"},
		{[]string{"--router", "a:1", "--endpoints", eps, "--consul", "127.0.0.1:8500"}, "exclusive"},
		{[]string{"--router", "a:1", "--endpoints", writeTemp(t, "bad.yaml", "- {address: \"10.0.0.1:8000\"}\n")}, "line 1: [0]: models is required"},
	} {
		if _, err := parseFlags(t, tc.args...).Config(nil, nil); err == nil || !strings.Contains(err.Error(), tc.err) {
			t.Errorf("%v: err = %v, want %q", tc.args, err, tc.err)
		}
	}
}

// TestPrintOnce: the dry run prints the resources translated from the first report.
func TestPrintOnce(t *testing.T) {
	eps := writeTemp(t, "eps.yaml", "- {name: e1, address: \"10.0.0.1:8000\", models: [m], block_size: 32}\n")
	cfg, err := parseFlags(t, "--router", "127.0.0.1:9002", "--endpoints", eps).Config(nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	var out, problems bytes.Buffer
	if err := xds.PrintOnce(context.Background(), cfg, &out, &problems); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"10.0.0.1", "block_size: 32", "127.0.0.1"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
}
