package xds_test

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	extproc "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	earlymutation "github.com/envoyproxy/go-control-plane/envoy/extensions/http/early_header_mutation/header_mutation/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"sigs.k8s.io/yaml"

	"github.com/kvgate/kvgate/discovery"
	"github.com/kvgate/kvgate/xds"
)

var update = flag.Bool("update", false, "rewrite the golden files under testdata/out")

// TestGolden translates every testdata/in/<case>.yaml and compares each resource type with
// testdata/out/<case>.<type>.yaml (and the non-fatal problems with <case>.problems.txt).
// With -update it rewrites them and removes files no case produces any more.
func TestGolden(t *testing.T) {
	inputs, err := filepath.Glob("testdata/in/*.yaml")
	if err != nil || len(inputs) == 0 {
		t.Fatalf("no inputs: %v", err)
	}
	want := map[string]bool{}
	for _, in := range inputs {
		name := strings.TrimSuffix(filepath.Base(in), ".yaml")
		t.Run(name, func(t *testing.T) {
			data, err := os.ReadFile(in)
			if err != nil {
				t.Fatal(err)
			}
			m, warnings, err := xds.ParseModel(data)
			if err != nil {
				t.Fatal(err)
			}
			if len(warnings) > 0 {
				t.Errorf("golden input uses deprecated keys: %q", warnings)
			}
			res, problems := xds.Translate(m)
			if res == nil {
				t.Fatalf("fatal: %v", problems)
			}
			files := map[string][]byte{
				name + ".listeners.yaml": renderList(t, res.Listeners),
				name + ".clusters.yaml":  renderList(t, res.Clusters),
				name + ".routes.yaml":    renderList(t, res.Routes),
				name + ".endpoints.yaml": renderList(t, res.Endpoints),
			}
			if problems != nil {
				files[name+".problems.txt"] = []byte(problems.Error() + "\n")
			}
			for f, got := range files {
				want[f] = true
				compareGolden(t, filepath.Join("testdata/out", f), got)
			}
		})
	}
	outs, _ := filepath.Glob("testdata/out/*")
	for _, f := range outs {
		if want[filepath.Base(f)] {
			continue
		}
		if *update {
			if err := os.Remove(f); err != nil {
				t.Error(err)
			}
			continue
		}
		t.Errorf("%s: no case produces it (run go test ./xds/... -update)", f)
	}
}

func renderList[T proto.Message](t *testing.T, items []T) []byte {
	t.Helper()
	var b bytes.Buffer
	b.WriteString("[")
	for i, it := range items {
		if i > 0 {
			b.WriteString(",")
		}
		js, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(it)
		if err != nil {
			t.Fatal(err)
		}
		b.Write(js)
	}
	b.WriteString("]")
	y, err := yaml.JSONToYAML(b.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	return y
}

func compareGolden(t *testing.T, path string, got []byte) {
	t.Helper()
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test ./xds/... -update)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs from the translation (run go test ./xds/... -update and review the diff):\n%s", path, firstDiff(string(want), string(got)))
	}
}

func firstDiff(want, got string) string {
	w, g := strings.Split(want, "\n"), strings.Split(got, "\n")
	for i := 0; i < len(w) || i < len(g); i++ {
		var wl, gl string
		if i < len(w) {
			wl = w[i]
		}
		if i < len(g) {
			gl = g[i]
		}
		if wl != gl {
			return "line " + strconv.Itoa(i+1) + ":\n  want: " + wl + "\n  got:  " + gl
		}
	}
	return "(same lines, different bytes)"
}

func TestTranslateFatal(t *testing.T) {
	tests := []struct {
		name string
		m    xds.Model
		want string
	}{
		{"no router", xds.Model{}, "no router"},
		{"bad listener", xds.Model{Router: []string{"127.0.0.1:9002"}, Listener: "nope"}, "listener"},
		{"listener port zero", xds.Model{Router: []string{"127.0.0.1:9002"}, Listener: "0.0.0.0:0"}, "port"},
		{"bad router", xds.Model{Router: []string{"127.0.0.1"}}, "router"},
		{"bad request body mode", xds.Model{Router: []string{"127.0.0.1:9002"}, Options: xds.Options{RequestBody: "streamed"}}, "request body"},
		{"bad response body mode", xds.Model{Router: []string{"127.0.0.1:9002"}, Options: xds.Options{ResponseBody: "buffered"}}, "response body"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res, err := xds.Translate(tt.m)
			if res != nil || err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Translate = %v, %v; want nil and an error about %q", res != nil, err, tt.want)
			}
		})
	}
}

// TestTranslateSemantics checks, beyond the golden bytes, the facts the router and the
// Endpoint Picker Protocol depend on.
func TestTranslateSemantics(t *testing.T) {
	tests := []struct {
		name        string
		opts        xds.Options
		reqBody     extproc.ProcessingMode_BodySendMode
		respBody    extproc.ProcessingMode_BodySendMode
		reqTrailer  extproc.ProcessingMode_HeaderSendMode
		respTrailer extproc.ProcessingMode_HeaderSendMode
		failOpen    bool
	}{
		{"defaults", xds.Options{}, extproc.ProcessingMode_BUFFERED, extproc.ProcessingMode_STREAMED, extproc.ProcessingMode_SKIP, extproc.ProcessingMode_SKIP, false},
		{"full duplex request", xds.Options{RequestBody: xds.BodyFullDuplex}, extproc.ProcessingMode_FULL_DUPLEX_STREAMED, extproc.ProcessingMode_STREAMED, extproc.ProcessingMode_SEND, extproc.ProcessingMode_SKIP, false},
		{"full duplex response, fail open", xds.Options{ResponseBody: xds.BodyFullDuplex, FailureModeAllow: true}, extproc.ProcessingMode_BUFFERED, extproc.ProcessingMode_FULL_DUPLEX_STREAMED, extproc.ProcessingMode_SKIP, extproc.ProcessingMode_SEND, true},
		{"full duplex both", xds.Options{RequestBody: xds.BodyFullDuplex, ResponseBody: xds.BodyFullDuplex}, extproc.ProcessingMode_FULL_DUPLEX_STREAMED, extproc.ProcessingMode_FULL_DUPLEX_STREAMED, extproc.ProcessingMode_SEND, extproc.ProcessingMode_SEND, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := xds.Model{
				Router: []string{"127.0.0.1:9002"},
				Pools: map[string][]xds.Endpoint{
					"a": {{Address: "10.0.0.1:8000", Healthy: true}},
					"b": {{Address: "10.0.0.2:8000", Healthy: true}, {Address: "10.0.0.3:8000", Role: discovery.RolePrefill}},
				},
				Options: tt.opts,
			}
			res, err := xds.Translate(m)
			if err != nil {
				t.Fatal(err)
			}
			var mgr hcm.HttpConnectionManager
			if err := res.Listeners[0].GetFilterChains()[0].GetFilters()[0].GetTypedConfig().UnmarshalTo(&mgr); err != nil {
				t.Fatal(err)
			}
			var strip earlymutation.HeaderMutation
			if ext := mgr.GetEarlyHeaderMutationExtensions(); len(ext) != 1 || ext[0].GetTypedConfig().UnmarshalTo(&strip) != nil ||
				len(strip.GetMutations()) != 2 || strip.GetMutations()[0].GetRemove() != xds.DestinationHeader {
				t.Errorf("client-sent picker headers are not stripped: %v", ext)
			}
			if got := mgr.GetHttpFilters()[len(mgr.GetHttpFilters())-1].GetName(); got != "envoy.filters.http.router" {
				t.Errorf("last HTTP filter = %s, want the router", got)
			}
			var ep extproc.ExternalProcessor
			if err := mgr.GetHttpFilters()[0].GetTypedConfig().UnmarshalTo(&ep); err != nil {
				t.Fatal(err)
			}
			pm := ep.GetProcessingMode()
			if pm.GetRequestHeaderMode() != extproc.ProcessingMode_SEND || pm.GetResponseHeaderMode() != extproc.ProcessingMode_SEND {
				t.Errorf("header modes = %v/%v, want SEND/SEND", pm.GetRequestHeaderMode(), pm.GetResponseHeaderMode())
			}
			if pm.GetRequestBodyMode() != tt.reqBody || pm.GetResponseBodyMode() != tt.respBody || pm.GetRequestTrailerMode() != tt.reqTrailer || pm.GetResponseTrailerMode() != tt.respTrailer {
				t.Errorf("processing mode = %v", pm)
			}
			if ep.GetFailureModeAllow() != tt.failOpen {
				t.Errorf("failure_mode_allow = %v, want %v", ep.GetFailureModeAllow(), tt.failOpen)
			}
			if ep.GetGrpcService().GetEnvoyGrpc().GetClusterName() != xds.RouterCluster || !ep.GetAllowModeOverride() {
				t.Errorf("ext_proc grpc service/mode override = %v", &ep)
			}
			if ns := ep.GetMetadataOptions().GetReceivingNamespaces().GetUntyped(); len(ns) != 1 || ns[0] != xds.DestinationMetadataNamespace {
				t.Errorf("receiving namespaces = %v, want [envoy.lb]", ns)
			}

			clusters := map[string]*cluster.Cluster{}
			for _, c := range res.Clusters {
				clusters[c.GetName()] = c
			}
			picked := clusters[xds.PickedCluster]
			if picked.GetType() != cluster.Cluster_ORIGINAL_DST || picked.GetLbPolicy() != cluster.Cluster_CLUSTER_PROVIDED {
				t.Errorf("picked cluster type/lb = %v/%v", picked.GetType(), picked.GetLbPolicy())
			}
			od := picked.GetOriginalDstLbConfig()
			if !od.GetUseHttpHeader() || od.GetHttpHeaderName() != xds.DestinationHeader ||
				od.GetMetadataKey().GetKey() != "envoy.lb" || od.GetMetadataKey().GetPath()[0].GetKey() != xds.DestinationHeader {
				t.Errorf("original_dst_lb_config = %v", od)
			}
			if len(clusters[xds.RouterCluster].GetHealthChecks()) != 1 || clusters[xds.RouterCluster].GetHealthChecks()[0].GetGrpcHealthCheck() == nil {
				t.Errorf("router cluster has no gRPC health check")
			}
			for _, name := range []string{xds.ModelCluster("a"), xds.ModelCluster("b"), xds.EnginesCluster} {
				if clusters[name].GetType() != cluster.Cluster_EDS {
					t.Errorf("%s: type %v, want EDS", name, clusters[name].GetType())
				}
			}
			// Prefill engines never take client requests.
			for _, a := range res.Endpoints {
				for _, lb := range a.GetEndpoints()[0].GetLbEndpoints() {
					if lb.GetEndpoint().GetAddress().GetSocketAddress().GetAddress() == "10.0.0.3" {
						t.Errorf("prefill engine in %s", a.GetClusterName())
					}
				}
			}
			// Inference paths reach the picked cluster unless the router named a pool.
			var toPicked, toPool int
			for _, r := range res.Routes[0].GetVirtualHosts()[0].GetRoutes() {
				if a, ok := r.GetAction().(*route.Route_Route); ok {
					switch a.Route.GetCluster() {
					case xds.PickedCluster:
						toPicked++
					case xds.ModelCluster("a"), xds.ModelCluster("b"):
						toPool++
					}
				}
			}
			// Five exact inference paths and the /v1/ passthrough prefix; five paths per pool.
			if toPicked != 6 || toPool != 10 {
				t.Errorf("routes: %d to the picked cluster, %d to pools; want 6 and 10", toPicked, toPool)
			}
		})
	}
}

// TestTranslateDeterministic: the same model, however its maps iterate, yields the same
// bytes and the same version; a change in one engine changes the endpoints version only.
func TestTranslateDeterministic(t *testing.T) {
	m := xds.Model{Router: []string{"127.0.0.1:9002"}, Pools: map[string][]xds.Endpoint{}}
	for _, model := range []string{"m1", "m2", "m3", "m4", "m5"} {
		m.Pools[model] = []xds.Endpoint{{Address: "10.0.0.2:8000", Healthy: true, BlockSize: 16, Workerd: "w"}, {Address: "10.0.0.1:8000", Healthy: true}}
	}
	first, err := xds.Translate(m)
	if err != nil {
		t.Fatal(err)
	}
	v1, _ := first.Version()
	s1, err := first.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	for range 20 {
		again, _ := xds.Translate(m)
		if v, _ := again.Version(); v != v1 {
			t.Fatalf("version changed without a change: %s != %s", v, v1)
		}
	}
	m.Pools["m3"] = []xds.Endpoint{{Address: "10.0.0.9:8000", Healthy: true}}
	changed, _ := xds.Translate(m)
	s2, _ := changed.Snapshot()
	for _, typ := range []string{"type.googleapis.com/envoy.config.listener.v3.Listener", "type.googleapis.com/envoy.config.cluster.v3.Cluster", "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"} {
		if s1.GetVersion(typ) != s2.GetVersion(typ) {
			t.Errorf("%s version changed on an endpoint change", typ)
		}
	}
	if typ := "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"; s1.GetVersion(typ) == s2.GetVersion(typ) {
		t.Errorf("endpoints version did not change")
	}
}

func TestParseModel(t *testing.T) {
	tests := []struct {
		name, in, err string
	}{
		{"ok", "router: [\"1.2.3.4:9002\"]\noptions: {message_timeout: 1s}\n", ""},
		{"unknown field", "router: []\n\nrouters: [\"1.2.3.4:9002\"]\n", `line 3: unknown field "routers"`},
		{"unknown option", "options:\n  message_timeout: 1s\n  mesage_timeout: 1s\n", `line 3: options: unknown field "mesage_timeout"`},
		{"bad duration", "options: {message_timeout: 5}\n", "line 1: options.message_timeout: duration"},
		{"negative duration", "options: {message_timeout: -1s}\n", "negative"},
		{"both spellings", "options: {message_timeout: 1s, messageTimeout: 2s}\n", "given twice"},
		{"not yaml", "{{{", "xds model"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := xds.ParseModel([]byte(tt.in))
			if (tt.err == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tt.err)) {
				t.Fatalf("ParseModel error = %v, want %q", err, tt.err)
			}
		})
	}
}

// FuzzTranslate: no model, however odd, makes parsing or translation panic, and whatever
// translates passes Check.
func FuzzTranslate(f *testing.F) {
	ins, _ := filepath.Glob("testdata/in/*.yaml")
	for _, in := range ins {
		b, _ := os.ReadFile(in)
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		m, _, err := xds.ParseModel(data)
		if err != nil {
			return
		}
		res, err := xds.Translate(m)
		if res == nil {
			if err == nil {
				t.Fatal("nil resources without an error")
			}
			return
		}
		if err := xds.Check(res); err != nil {
			t.Fatalf("translated resources fail Check: %v", err)
		}
	})
}

// TestResourcesYAML: the dry-run rendering holds every resource and reads back as YAML.
func TestResourcesYAML(t *testing.T) {
	res, err := xds.Translate(xds.Model{Router: []string{"127.0.0.1:9002"}, Pools: map[string][]xds.Endpoint{"m": {{Address: "10.0.0.1:8000", Healthy: true}}}})
	if err != nil {
		t.Fatal(err)
	}
	y, err := res.YAML()
	if err != nil {
		t.Fatal(err)
	}
	var doc map[string][]map[string]any
	if err := yaml.Unmarshal(y, &doc); err != nil {
		t.Fatal(err)
	}
	want := map[string]int{"listeners": 1, "clusters": 4, "routes": 1, "endpoints": 2}
	for k, n := range want {
		if len(doc[k]) != n {
			t.Errorf("%s: %d entries, want %d", k, len(doc[k]), n)
		}
	}
}
