package xds

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/pflag"

	"github.com/kvgate/kvgate/discovery"
	"github.com/kvgate/kvgate/tlsconfig"
)

// Flags are the settings of `kvgate xds`: a --config file (the Model's listener, router,
// router_tls and options) with every flag given on the command line put over it, and where
// the engines come from (--consul or --endpoints).
type Flags struct {
	Listen        string
	ConfigFile    string
	Consul        string
	ConsulService string
	Endpoints     string
	DryRun        bool
	Debounce      time.Duration
	TLS           tlsconfig.Files // xDS server side
	RouterTLS     tlsconfig.Files // Envoy's side towards the router, paths on Envoy's host

	model             Model // the flags' values for the model's fields
	messageTimeout    time.Duration
	streamIdleTimeout time.Duration
	fs                *pflag.FlagSet
}

// Register adds the flags to fs; Model, Source and Config read what was given there.
func (f *Flags) Register(fs *pflag.FlagSet) {
	f.fs = fs
	fs.StringVar(&f.Listen, "listen", DefaultListen, "xDS gRPC address Envoy connects to (loopback by default; e.g. 0.0.0.0:18000 to serve other hosts)")
	fs.StringSliceVar(&f.model.Router, "router", nil, "ext_proc address of a kvgate router, host:port (repeatable; or router in --config)")
	fs.StringVar(&f.model.Listener, "envoy-listen", defaultEnvoyListen, "address Envoy serves the OpenAI API on (loopback by default; e.g. 0.0.0.0:8080 to serve clients on other hosts)")
	fs.StringVar(&f.Consul, "consul", "", "Consul agent HTTP address to discover engines from")
	fs.StringVar(&f.ConsulService, "consul-service", discovery.DefaultService, "Consul service name of the engines")
	fs.StringVar(&f.Endpoints, "endpoints", "", "endpoints file listing engines instead of Consul (the schema 'kvgate router --endpoints' reads, docs/CONFIGURATION.md); edits are picked up within a second")
	fs.StringVar(&f.ConfigFile, "config", "", "YAML file with listener, router, router_tls and options (docs/CONFIGURATION.md); flags given on the command line win")
	fs.StringVar(&f.model.Options.RequestBody, "request-body", "", "request body mode towards the router: buffered (default) or full-duplex")
	fs.StringVar(&f.model.Options.ResponseBody, "response-body", "", "response body mode towards the router: streamed (default) or full-duplex")
	fs.BoolVar(&f.model.Options.FailureModeAllow, "failure-mode-allow", false, "let requests through when the router is unreachable")
	fs.DurationVar(&f.messageTimeout, "message-timeout", 5*time.Second, "how long Envoy waits for each router reply")
	fs.DurationVar(&f.streamIdleTimeout, "stream-idle-timeout", 5*time.Minute, "close client streams silent this long")
	fs.BoolVar(&f.DryRun, "dry-run", false, "print the resources Envoy would get from the first discovery report, then exit")
	fs.DurationVar(&f.Debounce, "debounce", 100*time.Millisecond, "coalesce discovery changes arriving within this window")
	f.TLS.AddServerFlags(fs, "", "xDS")
	fs.StringVar(&f.RouterTLS.CA, "router-tls-ca", "", "CA Envoy verifies the router's certificate with; enables TLS to the router (path on Envoy's host)")
	fs.StringVar(&f.RouterTLS.Cert, "router-tls-cert", "", "Envoy's client certificate towards the router, for mTLS (path on Envoy's host)")
	fs.StringVar(&f.RouterTLS.Key, "router-tls-key", "", "key of --router-tls-cert (path on Envoy's host)")
	fs.StringVar(&f.RouterTLS.ServerName, "router-tls-server-name", "", "name Envoy sends (SNI) and verifies the router's certificate for (default: the router's host)")
	fs.StringVar(&f.RouterTLS.ServerName, "router-tls-sni", "", "old name of --router-tls-server-name")
	_ = fs.MarkDeprecated("router-tls-sni", "use --router-tls-server-name")
}

const defaultEnvoyListen = DefaultEnvoyListen

// changed reports whether any of the named flags was given on the command line.
func (f *Flags) changed(names ...string) bool {
	for _, n := range names {
		if f.fs != nil && f.fs.Changed(n) {
			return true
		}
	}
	return false
}

// Model returns the configuration template: the --config file's (if any) with every flag
// given on the command line put over it, and the file's deprecation warnings.
func (f *Flags) Model() (Model, []string, error) {
	var (
		m        Model
		warnings []string
	)
	if f.ConfigFile != "" {
		data, err := os.ReadFile(f.ConfigFile)
		if err != nil {
			return Model{}, nil, err
		}
		if m, warnings, err = ParseModel(data); err != nil {
			return Model{}, nil, fmt.Errorf("%s: %w", f.ConfigFile, err)
		}
		if len(m.Pools) > 0 {
			return Model{}, nil, fmt.Errorf("%s: pools come from discovery; list engines with --endpoints instead", f.ConfigFile)
		}
	}
	if f.changed("router") || len(m.Router) == 0 {
		m.Router = f.model.Router
	}
	if f.changed("envoy-listen") || m.Listener == "" {
		m.Listener = f.model.Listener
	}
	if f.changed("request-body") {
		m.Options.RequestBody = f.model.Options.RequestBody
	}
	if f.changed("response-body") {
		m.Options.ResponseBody = f.model.Options.ResponseBody
	}
	if f.changed("failure-mode-allow") {
		m.Options.FailureModeAllow = f.model.Options.FailureModeAllow
	}
	if f.changed("message-timeout") {
		m.Options.MessageTimeout = Duration(f.messageTimeout)
	}
	if f.changed("stream-idle-timeout") {
		m.Options.StreamIdleTimeout = Duration(f.streamIdleTimeout)
	}
	tlsFlags := []struct {
		names []string
		dst   func(*tlsconfig.Files) *string
		val   string
	}{
		{[]string{"router-tls-ca"}, func(t *tlsconfig.Files) *string { return &t.CA }, f.RouterTLS.CA},
		{[]string{"router-tls-cert"}, func(t *tlsconfig.Files) *string { return &t.Cert }, f.RouterTLS.Cert},
		{[]string{"router-tls-key"}, func(t *tlsconfig.Files) *string { return &t.Key }, f.RouterTLS.Key},
		{[]string{"router-tls-server-name", "router-tls-sni"}, func(t *tlsconfig.Files) *string { return &t.ServerName }, f.RouterTLS.ServerName},
	}
	for _, tf := range tlsFlags {
		if !f.changed(tf.names...) {
			continue
		}
		if m.RouterTLS == nil {
			m.RouterTLS = &tlsconfig.Files{}
		} else {
			c := *m.RouterTLS
			m.RouterTLS = &c
		}
		*tf.dst(m.RouterTLS) = tf.val
	}
	if m.RouterTLS != nil && !m.RouterTLS.Enabled() {
		return Model{}, nil, errors.New("router TLS: a server name alone does not enable TLS; give --router-tls-ca (or router_tls.ca)")
	}
	if len(m.Router) == 0 {
		return Model{}, nil, errors.New("--router is required (the ext_proc address of 'kvgate router', e.g. 10.0.0.5:9002), or router in --config")
	}
	return m, warnings, nil
}

// Source returns the discovery source the flags name: Consul or an endpoints file.
func (f *Flags) Source(log *slog.Logger) (discovery.Source, error) {
	switch {
	case f.Consul != "" && f.Endpoints != "":
		return nil, errors.New("--consul and --endpoints are exclusive")
	case f.Consul != "":
		return discovery.NewConsul(discovery.ConsulConfig{Address: f.Consul, Service: f.ConsulService}, log)
	case f.Endpoints != "":
		return discovery.NewFile(f.Endpoints, 0, log)
	}
	return nil, errors.New("say where engines are: --consul ADDR or --endpoints FILE")
}

// Config builds the server's configuration from the flags, logging deprecation warnings of
// the --config file once.
func (f *Flags) Config(log *slog.Logger, reg prometheus.Registerer) (Config, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	m, warnings, err := f.Model()
	if err != nil {
		return Config{}, err
	}
	for _, w := range warnings {
		log.Warn("xds config uses a deprecated key", "path", f.ConfigFile, "warning", w)
	}
	src, err := f.Source(log)
	if err != nil {
		return Config{}, err
	}
	return Config{Listen: f.Listen, TLS: f.TLS, Model: m, Source: src, Debounce: f.Debounce, Log: log, Registerer: reg}, nil
}

// PrintOnce translates the first report of cfg.Source (waiting at most 30s) and writes the
// resources to w as YAML, and non-fatal problems to problems.
func PrintOnce(ctx context.Context, cfg Config, w, problems io.Writer) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var eps []discovery.Endpoint
	select {
	case eps = <-cfg.Source.Watch(ctx):
	case <-ctx.Done():
		return fmt.Errorf("no discovery report within 30s: %w", ctx.Err())
	}
	m := cfg.Model
	m.Pools = Pools(eps)
	res, err := Translate(m)
	if res == nil {
		return err
	}
	if err != nil {
		fmt.Fprintln(problems, "problems:", err)
	}
	out, err := res.YAML()
	if err != nil {
		return err
	}
	_, err = w.Write(out)
	return err
}
