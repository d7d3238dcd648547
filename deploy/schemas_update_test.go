package deploy

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

var updateSchemas = flag.Bool("update-schemas", false, "rewrite schemas/*.json from the published sources (downloads Go modules)")

// The sources of schemas/*.json: Go modules served by the module proxy, pinned.
const (
	kubernetesModule = "k8s.io/kubernetes@v1.37.2"
	gieModule        = "sigs.k8s.io/gateway-api-inference-extension@v1.4.0"
	gatewayAPIModule = "sigs.k8s.io/gateway-api@v1.4.1"
	kedaModule       = "github.com/kedacore/keda/v2@v2.18.0"
)

// coreKinds are the built-in kinds the manifests use, by OpenAPI v3 file of k8s.io/kubernetes.
var coreKinds = map[string][]string{
	"api/openapi-spec/v3/api__v1_openapi.json":                             {"v1/Namespace", "v1/Service", "v1/ServiceAccount", "v1/ConfigMap", "v1/Secret"},
	"api/openapi-spec/v3/apis__apps__v1_openapi.json":                      {"apps/v1/Deployment", "apps/v1/DaemonSet"},
	"api/openapi-spec/v3/apis__rbac.authorization.k8s.io__v1_openapi.json": {"rbac.authorization.k8s.io/v1/Role", "rbac.authorization.k8s.io/v1/RoleBinding"},
	"api/openapi-spec/v3/apis__policy__v1_openapi.json":                    {"policy/v1/PodDisruptionBudget"},
}

// crds are the custom resources the manifests use: module, CRD file, served version.
var crds = []struct{ module, file, version, out string }{
	{gieModule, "config/crd/bases/inference.networking.k8s.io_inferencepools.yaml", "v1", "inferencepool.json"},
	{gatewayAPIModule, "config/crd/standard/gateway.networking.k8s.io_httproutes.yaml", "v1", "httproute.json"},
	{kedaModule, "config/crd/bases/keda.sh_scaledobjects.yaml", "v1alpha1", "scaledobject.json"},
}

// TestUpdateSchemas derives schemas/*.json from the published sources (the core kinds'
// definitions and everything they reference from the Kubernetes OpenAPI v3 spec, and the
// openAPIV3Schema of each CRD version, descriptions dropped) and fails when a vendored file
// differs from them; with -update-schemas it rewrites the files instead.
func TestUpdateSchemas(t *testing.T) {
	dir := moduleDir(t, kubernetesModule)
	out := SchemaFile{Source: kubernetesModule + " api/openapi-spec/v3 (" + strings.Join(sortedKeys(coreKinds), ", ") + "), the definitions the kinds below reference; descriptions dropped", Kinds: map[string]string{}}
	out.Components.Schemas = map[string]any{}
	for file, kinds := range coreKinds {
		var spec struct {
			Components struct {
				Schemas map[string]any `json:"schemas"`
			} `json:"components"`
		}
		readJSON(t, filepath.Join(dir, file), &spec)
		all := spec.Components.Schemas
		for _, k := range kinds {
			def := findKind(t, all, k)
			out.Kinds[k] = def
			closure(all, def, out.Components.Schemas)
		}
	}
	writeSchemaFile(t, "kubernetes.json", out)

	for _, c := range crds {
		var crd struct {
			Spec struct {
				Group string `json:"group"`
				Names struct {
					Kind string `json:"kind"`
				} `json:"names"`
				Versions []struct {
					Name   string `json:"name"`
					Schema struct {
						OpenAPIV3Schema map[string]any `json:"openAPIV3Schema"`
					} `json:"schema"`
				} `json:"versions"`
			} `json:"spec"`
		}
		b, err := os.ReadFile(filepath.Join(moduleDir(t, c.module), c.file))
		if err != nil {
			t.Fatal(err)
		}
		if err := yaml.Unmarshal(b, &crd); err != nil {
			t.Fatal(err)
		}
		f := SchemaFile{Source: c.module + " " + c.file + " (version " + c.version + "), descriptions dropped", Kinds: map[string]string{}}
		f.Components.Schemas = map[string]any{}
		for _, v := range crd.Spec.Versions {
			if v.Name != c.version {
				continue
			}
			def := crd.Spec.Group + "." + v.Name + "." + crd.Spec.Names.Kind
			f.Kinds[crd.Spec.Group+"/"+v.Name+"/"+crd.Spec.Names.Kind] = def
			f.Components.Schemas[def] = dropDescriptions(v.Schema.OpenAPIV3Schema)
		}
		if len(f.Kinds) == 0 {
			t.Fatalf("%s: no version %s", c.file, c.version)
		}
		writeSchemaFile(t, c.out, f)
	}
}

func moduleDir(t *testing.T, mod string) string {
	t.Helper()
	out, err := exec.Command("go", "mod", "download", "-json", mod).Output()
	if err != nil {
		t.Fatalf("go mod download %s: %v", mod, err)
	}
	var m struct{ Dir, Error string }
	if err := json.Unmarshal(out, &m); err != nil || m.Dir == "" {
		t.Fatalf("go mod download %s: %v %s", mod, err, m.Error)
	}
	return m.Dir
}

func readJSON(t *testing.T, file string, v any) {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("%s: %v", file, err)
	}
}

// findKind returns the definition whose x-kubernetes-group-version-kind is gvk.
func findKind(t *testing.T, all map[string]any, want string) string {
	t.Helper()
	for name, s := range all {
		m, _ := s.(map[string]any)
		l, _ := m["x-kubernetes-group-version-kind"].([]any)
		for _, e := range l {
			g, _ := e.(map[string]any)
			if gvk(str(g["group"]), str(g["version"]), str(g["kind"])) == want {
				return name
			}
		}
	}
	t.Fatalf("no definition of %s", want)
	return ""
}

func str(v any) string { s, _ := v.(string); return s }

// closure copies def and every definition it references (transitively) from all into out.
func closure(all map[string]any, def string, out map[string]any) {
	if _, done := out[def]; done {
		return
	}
	s := dropDescriptions(all[def])
	out[def] = s
	var refs func(v any)
	refs = func(v any) {
		switch v := v.(type) {
		case map[string]any:
			if r, ok := v["$ref"].(string); ok {
				closure(all, strings.TrimPrefix(r, "#/components/schemas/"), out)
			}
			for _, e := range v {
				refs(e)
			}
		case []any:
			for _, e := range v {
				refs(e)
			}
		}
	}
	refs(s)
}

// dropDescriptions removes the "description" keyword of every schema in v (not a property
// that happens to be called description).
func dropDescriptions(v any) any {
	switch v := v.(type) {
	case map[string]any:
		delete(v, "description")
		for k, e := range v {
			if k == "properties" {
				if props, ok := e.(map[string]any); ok {
					for p, ps := range props {
						props[p] = dropDescriptions(ps)
					}
				}
				continue
			}
			v[k] = dropDescriptions(e)
		}
	case []any:
		for i, e := range v {
			v[i] = dropDescriptions(e)
		}
	}
	return v
}

func writeSchemaFile(t *testing.T, name string, f SchemaFile) {
	t.Helper()
	b, err := json.MarshalIndent(f, "", " ")
	if err != nil {
		t.Fatal(err)
	}
	b = append(b, '\n')
	path := filepath.Join("schemas", name)
	if !*updateSchemas {
		have, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(have, b) {
			t.Errorf("%s differs from what its published source gives (%d bytes vs %d); run go test ./deploy -run TestUpdateSchemas -update-schemas", path, len(have), len(b))
		}
		return
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(os.Stderr, "wrote %s (%d bytes, %d definitions)\n", path, len(b), len(f.Components.Schemas))
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
