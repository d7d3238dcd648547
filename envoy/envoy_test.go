package envoy_test

import (
	"flag"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	extproc "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/anypb"
	"sigs.k8s.io/yaml"

	"github.com/kvgate/kvgate/envoy"
)

// update is accepted so that `go test ./xds/... ./bootstrap/... ./envoy/... -update` (make
// testdata) runs here too; envoy/bootstrap-xds.yaml is rewritten by the bootstrap package.
var _ = flag.Bool("update", false, "no effect here (see go test ./bootstrap/... -update)")

// configs lists every Envoy configuration under envoy/: all YAML files except the
// docker-compose file and testdata.
func configs(t *testing.T) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(".", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && d.Name() == "testdata" {
			return filepath.SkipDir
		}
		name := d.Name()
		if !d.IsDir() && (strings.HasSuffix(name, ".yaml") || strings.HasSuffix(name, ".yml")) && !strings.HasPrefix(name, "docker-compose") {
			out = append(out, p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func load(t *testing.T, path string) *bootstrapv3.Bootstrap {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var b bootstrapv3.Bootstrap
	if err := envoy.FromYAML(data, &b); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return &b
}

// TestConfigs parses every Envoy config in this folder into Envoy's bootstrap proto, strictly,
// with typed configs resolved, and validates it, typed configs included.
func TestConfigs(t *testing.T) {
	files := configs(t)
	for _, want := range []string{"static.yaml", "bootstrap-xds.yaml"} {
		found := false
		for _, f := range files {
			found = found || f == want
		}
		if !found {
			t.Errorf("%s is missing from envoy/", want)
		}
	}
	for _, f := range files {
		t.Run(f, func(t *testing.T) {
			if err := envoy.Validate(load(t, f)); err != nil {
				t.Fatalf("%s is invalid: %v", f, err)
			}
		})
	}
}

// TestStaticEndpointPicker checks in static.yaml what the router relies on: the ext_proc
// filter before the router, the modes it supports, metadata envoy.lb accepted, and the
// ORIGINAL_DST cluster reading the picked endpoint from metadata and header.
func TestStaticEndpointPicker(t *testing.T) {
	b := load(t, "static.yaml")
	var mgr hcm.HttpConnectionManager
	if err := b.GetStaticResources().GetListeners()[0].GetFilterChains()[0].GetFilters()[0].GetTypedConfig().UnmarshalTo(&mgr); err != nil {
		t.Fatal(err)
	}
	if len(mgr.GetEarlyHeaderMutationExtensions()) != 1 {
		t.Errorf("client-sent x-gateway-destination-endpoint is not stripped")
	}
	filters := mgr.GetHttpFilters()
	if len(filters) != 2 || filters[0].GetName() != "envoy.filters.http.ext_proc" || filters[1].GetName() != "envoy.filters.http.router" {
		t.Fatalf("http filters = %v, want ext_proc then router", filters)
	}
	var ep extproc.ExternalProcessor
	if err := filters[0].GetTypedConfig().UnmarshalTo(&ep); err != nil {
		t.Fatal(err)
	}
	pm := ep.GetProcessingMode()
	if pm.GetRequestBodyMode() != extproc.ProcessingMode_BUFFERED || pm.GetResponseBodyMode() != extproc.ProcessingMode_STREAMED ||
		pm.GetRequestHeaderMode() != extproc.ProcessingMode_SEND || pm.GetResponseHeaderMode() != extproc.ProcessingMode_SEND {
		t.Errorf("processing mode = %v", pm)
	}
	if ns := ep.GetMetadataOptions().GetReceivingNamespaces().GetUntyped(); len(ns) != 1 || ns[0] != "envoy.lb" {
		t.Errorf("receiving namespaces = %v", ns)
	}
	// The router's mode_override (skipped response bodies, streams kept open to the request's
	// end) needs it; an allow-list would have to name the router's override.
	if !ep.GetAllowModeOverride() || len(ep.GetAllowedOverrideModes()) != 0 {
		t.Errorf("allow_mode_override = %v, allowed_override_modes = %v: want on, no list", ep.GetAllowModeOverride(), ep.GetAllowedOverrideModes())
	}
	clusters := map[string]*cluster.Cluster{}
	for _, c := range b.GetStaticResources().GetClusters() {
		clusters[c.GetName()] = c
	}
	if c := clusters[ep.GetGrpcService().GetEnvoyGrpc().GetClusterName()]; c == nil || len(c.GetTypedExtensionProtocolOptions()) == 0 || c.GetHealthChecks()[0].GetGrpcHealthCheck() == nil {
		t.Errorf("ext_proc cluster missing, or without HTTP/2 and gRPC health checks: %v", c)
	}
	picked := clusters["kvgate_picked"]
	od := picked.GetOriginalDstLbConfig()
	if picked.GetType() != cluster.Cluster_ORIGINAL_DST || picked.GetLbPolicy() != cluster.Cluster_CLUSTER_PROVIDED ||
		!od.GetUseHttpHeader() || od.GetHttpHeaderName() != "x-gateway-destination-endpoint" ||
		od.GetMetadataKey().GetKey() != "envoy.lb" || od.GetMetadataKey().GetPath()[0].GetKey() != "x-gateway-destination-endpoint" {
		t.Errorf("kvgate_picked = %v", picked)
	}
	for _, vh := range mgr.GetRouteConfig().GetVirtualHosts() {
		for _, r := range vh.GetRoutes() {
			if name := r.GetRoute().GetCluster(); name != "" && clusters[name] == nil {
				t.Errorf("route %s names missing cluster %s", r.GetName(), name)
			}
		}
	}
}

// TestInvalid: each broken config in testdata/invalid is refused, at the stage expected:
// parsing (unknown fields and types) or validation (field rules, typed configs included).
func TestInvalid(t *testing.T) {
	stage := map[string]string{
		"unknown-field.yaml":        "parse",
		"unregistered-type.yaml":    "parse",
		"bad-typed-config.yaml":     "validate",
		"cluster-without-name.yaml": "validate",
	}
	files, _ := filepath.Glob("testdata/invalid/*.yaml")
	if len(files) != len(stage) {
		t.Fatalf("testdata/invalid holds %d files, the table %d", len(files), len(stage))
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			data, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			var b bootstrapv3.Bootstrap
			perr := envoy.FromYAML(data, &b)
			switch want := stage[filepath.Base(f)]; {
			case want == "parse" && perr == nil:
				t.Fatal("parsed")
			case want == "validate" && perr != nil:
				t.Fatalf("does not parse: %v", perr)
			case want == "validate" && envoy.Validate(&b) == nil:
				t.Fatal("validated")
			}
		})
	}
}

// TestRoundTrip: ToYAML's output parses back into an equal message.
func TestRoundTrip(t *testing.T) {
	b := load(t, "static.yaml")
	y, err := envoy.ToYAML(b)
	if err != nil {
		t.Fatal(err)
	}
	var back bootstrapv3.Bootstrap
	if err := envoy.FromYAML(y, &back); err != nil {
		t.Fatal(err)
	}
	y2, _ := envoy.ToYAML(&back)
	if string(y) != string(y2) {
		t.Error("YAML round trip is not stable")
	}
}

// FuzzFromYAML: no input makes parsing or validation panic.
func FuzzFromYAML(f *testing.F) {
	for _, p := range []string{"static.yaml", "bootstrap-xds.yaml", "testdata/invalid/bad-typed-config.yaml"} {
		if b, err := os.ReadFile(p); err == nil {
			f.Add(b)
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var b bootstrapv3.Bootstrap
		if envoy.FromYAML(data, &b) == nil {
			_ = envoy.Validate(&b)
		}
	})
}

// TestCompose checks that docker-compose.yaml wires what static.yaml expects: Envoy mounts
// static.yaml, the router answers at router:9002, the engines the router routes to are the
// ones workerd runs at its fixed address, and the image builds from envoy/Dockerfile.
func TestCompose(t *testing.T) {
	data, err := os.ReadFile("docker-compose.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var c struct {
		Services map[string]struct {
			Image    string                      `json:"image"`
			Command  []string                    `json:"command"`
			Volumes  []string                    `json:"volumes"`
			Build    struct{ Dockerfile string } `json:"build"`
			Networks any                         `json:"networks"`
		} `json:"services"`
		Configs map[string]struct {
			Content string `json:"content"`
		} `json:"configs"`
	}
	if err := yaml.Unmarshal(data, &c); err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"envoy", "router", "workerd"} {
		if _, ok := c.Services[s]; !ok {
			t.Fatalf("service %s missing", s)
		}
	}
	if !slices.Contains(c.Services["envoy"].Volumes, "./static.yaml:/etc/envoy/envoy.yaml:ro") {
		t.Errorf("envoy does not mount static.yaml: %v", c.Services["envoy"].Volumes)
	}
	if df := c.Services["router"].Build.Dockerfile; df != "envoy/Dockerfile" {
		t.Errorf("router builds from %q", df)
	}
	if _, err := os.Stat("Dockerfile"); err != nil {
		t.Error(err)
	}
	router := strings.Join(c.Services["router"].Command, " ")
	if !strings.Contains(router, "--grpc=:9002") {
		t.Errorf("router does not serve ext_proc on :9002: %s", router)
	}
	workerd := c.Configs["workerd"].Content
	for _, port := range []string{"8001", "8002"} {
		if !strings.Contains(router, "--endpoint=http://172.28.0.20:"+port) || !strings.Contains(workerd, "port: "+port) {
			t.Errorf("engine port %s is not both run by workerd and routed to by the router", port)
		}
	}
	b := load(t, "static.yaml")
	var hosts []string
	for _, cl := range b.GetStaticResources().GetClusters() {
		for _, l := range cl.GetLoadAssignment().GetEndpoints() {
			for _, e := range l.GetLbEndpoints() {
				sa := e.GetEndpoint().GetAddress().GetSocketAddress()
				hosts = append(hosts, sa.GetAddress()+":"+strconv.Itoa(int(sa.GetPortValue())))
			}
		}
	}
	for _, h := range []string{"router:9002", "workerd:8001", "workerd:8002"} {
		if !slices.Contains(hosts, h) {
			t.Errorf("static.yaml does not reach %s (has %v)", h, hosts)
		}
	}
}

// naiveValidate is the obvious design Validate avoids, kept as the benchmark's baseline:
// ValidateAll on every message at every level (each call already recurses, so the work
// grows with depth times size).
func naiveValidate(m protoreflect.Message) error {
	if v, ok := m.Interface().(interface{ ValidateAll() error }); ok {
		if err := v.ValidateAll(); err != nil {
			return err
		}
	}
	if a, ok := m.Interface().(*anypb.Any); ok {
		inner, err := a.UnmarshalNew()
		if err != nil {
			return err
		}
		return naiveValidate(inner.ProtoReflect())
	}
	var err error
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		switch {
		case fd.IsList() && fd.Kind() == protoreflect.MessageKind:
			for i := 0; i < v.List().Len() && err == nil; i++ {
				err = naiveValidate(v.List().Get(i).Message())
			}
		case fd.IsMap() && fd.MapValue().Kind() == protoreflect.MessageKind:
			v.Map().Range(func(_ protoreflect.MapKey, mv protoreflect.Value) bool {
				err = naiveValidate(mv.Message())
				return err == nil
			})
		case !fd.IsList() && !fd.IsMap() && fd.Kind() == protoreflect.MessageKind:
			err = naiveValidate(v.Message())
		}
		return err == nil
	})
	return err
}

// BenchmarkValidate validates static.yaml's bootstrap: Validate (ValidateAll once per root,
// a walk for Anys that skips types which cannot hold one; fresh, and with the type memory
// reused as xds.Check does) against the naive per-level baseline.
func BenchmarkValidate(b *testing.B) {
	data, err := os.ReadFile("static.yaml")
	if err != nil {
		b.Fatal(err)
	}
	var bs bootstrapv3.Bootstrap
	if err := envoy.FromYAML(data, &bs); err != nil {
		b.Fatal(err)
	}
	b.Run("Validate", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if err := envoy.Validate(&bs); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("Validator-reused", func(b *testing.B) {
		v := envoy.NewValidator()
		b.ReportAllocs()
		for b.Loop() {
			if err := v.Validate(&bs); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("naive-baseline", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if err := naiveValidate(bs.ProtoReflect()); err != nil {
				b.Fatal(err)
			}
		}
	})
}
