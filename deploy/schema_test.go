package deploy_test

import (
	"os"
	"path"
	"slices"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"

	"github.com/kvgate/kvgate/deploy"
)

func validator(t *testing.T) *deploy.Validator {
	t.Helper()
	v, err := deploy.NewValidator()
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func manifests(t *testing.T) []deploy.Object {
	t.Helper()
	objs, err := deploy.ReadObjects(os.DirFS("."), "kubernetes")
	if err != nil {
		t.Fatal(err)
	}
	return objs
}

// Every object under kubernetes/ is valid against the published schema of its kind (the
// API server's OpenAPI for built-in kinds, the CRD for the others), unknown fields included.
func TestManifestsMatchPublishedSchemas(t *testing.T) {
	v := validator(t)
	objs := manifests(t)
	seen := map[string]bool{}
	for _, o := range objs {
		if err := v.Validate(o); err != nil {
			t.Error(err)
		}
		seen[o.GVK()] = true
	}
	// What issue #17 asks deploy/kubernetes to hold.
	for _, k := range []string{"apps/v1/Deployment", "apps/v1/DaemonSet", "v1/Service", "v1/ServiceAccount",
		"rbac.authorization.k8s.io/v1/Role", "rbac.authorization.k8s.io/v1/RoleBinding", "v1/ConfigMap",
		"inference.networking.k8s.io/v1/InferencePool", "gateway.networking.k8s.io/v1/HTTPRoute",
		"keda.sh/v1alpha1/ScaledObject"} {
		if !seen[k] {
			t.Errorf("no %s under deploy/kubernetes", k)
		}
	}
	t.Logf("%d objects valid", len(objs))
}

// A valid object of each schema source, mutated the ways a hand edit goes wrong, fails with
// the field's path.
func TestValidatorRejectsMistakes(t *testing.T) {
	v := validator(t)
	deployment := `apiVersion: apps/v1
kind: Deployment
metadata: {name: x}
spec:
  replicas: 2
  selector: {matchLabels: {app: x}}
  template:
    metadata: {labels: {app: x}}
    spec:
      containers:
        - name: c
          image: kvgate
          args: [router]
          ports: [{containerPort: 9002}]
          readinessProbe: {grpc: {port: 9002, service: readiness}}
          resources: {requests: {cpu: "1", memory: 1Gi}, limits: {memory: 4Gi}}
`
	pool := `apiVersion: inference.networking.k8s.io/v1
kind: InferencePool
metadata: {name: p}
spec:
  selector: {matchLabels: {app: x}}
  targetPorts: [{number: 8000}]
  endpointPickerRef: {name: epp, port: {number: 9002}, failureMode: FailClose}
`
	route := `apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r}
spec:
  parentRefs: [{name: gw}]
  rules:
    - backendRefs: [{group: inference.networking.k8s.io, kind: InferencePool, name: p}]
`
	scaled := `apiVersion: keda.sh/v1alpha1
kind: ScaledObject
metadata: {name: s}
spec:
  scaleTargetRef: {name: engines}
  minReplicaCount: 1
  triggers: [{type: prometheus, metadata: {query: up, threshold: "1"}}]
`
	for _, tc := range []struct {
		name, doc, old, new, want string
	}{
		{"valid deployment", deployment, "", "", ""},
		{"misspelt field", deployment, "replicas: 2", "replica: 2", "'replica' not allowed"},
		{"wrong type", deployment, "replicas: 2", "replicas: two", "/spec/replicas"},
		{"misspelt nested field", deployment, "readinessProbe", "readynessProbe", "readynessProbe"},
		{"missing required field", deployment, "- name: c\n", "- \n", "missing property 'name'"},
		{"int or string port", deployment, "port: 9002, service", "port: [9002], service", "/readinessProbe/grpc/port"},
		{"quantity", deployment, "memory: 4Gi", "memory: {gi: 4}", "/limits/memory"},
		{"misspelt metadata field", deployment, "metadata: {name: x}", "metadata: {name: x, label: {a: b}}", "'label' not allowed"},
		{"valid pool", pool, "", "", ""},
		{"pool enum", pool, "FailClose", "FailSometimes", "/spec/endpointPickerRef/failureMode"},
		{"pool misspelt", pool, "targetPorts", "targetPort", "targetPort"},
		{"pool metadata", pool, "metadata: {name: p}", "metadata: {name: p, labels: [a]}", "/metadata/labels"},
		{"valid route", route, "", "", ""},
		{"route misspelt", route, "backendRefs", "backendRef", "'backendRef' not allowed"},
		{"valid scaledobject", scaled, "", "", ""},
		{"scaledobject type", scaled, "minReplicaCount: 1", "minReplicaCount: one", "/spec/minReplicaCount"},
		{"unknown kind", strings.Replace(pool, "InferencePool", "InferencePools", 1), "", "", "no schema for inference.networking.k8s.io/v1/InferencePools"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			doc := tc.doc
			if tc.old != "" {
				if !strings.Contains(doc, tc.old) {
					t.Fatalf("%q not in the document", tc.old)
				}
				doc = strings.Replace(doc, tc.old, tc.new, 1)
			}
			objs, err := deploy.Decode("case.yaml", []byte(doc))
			if err != nil || len(objs) != 1 {
				t.Fatalf("decode: %v (%d objects)", err, len(objs))
			}
			err = v.Validate(objs[0])
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("valid object rejected: %v", err)
			case tc.want != "" && err == nil:
				t.Fatalf("accepted; want an error with %q", tc.want)
			case tc.want != "" && !strings.Contains(err.Error(), tc.want):
				t.Fatalf("error %q does not name %q", err, tc.want)
			}
			if err != nil {
				t.Log(err)
			}
		})
	}
}

// An error names the line of the bad value in its file.
func TestValidatorNamesTheLine(t *testing.T) {
	doc := "# a comment\n---\napiVersion: v1\nkind: Service\nmetadata:\n  name: s\nspec:\n  ports:\n    - port: 80\n      protocl: TCP\n"
	objs, err := deploy.Decode("svc.yaml", []byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	err = validator(t).Validate(objs[0])
	if err == nil || !strings.HasPrefix(err.Error(), "svc.yaml:9: Service/s: /spec/ports/0:") {
		t.Fatalf("error %v, want one at svc.yaml:9 naming /spec/ports/0", err)
	}
}

func TestDecodeRejects(t *testing.T) {
	for _, tc := range []struct{ name, doc, want string }{
		{"not a mapping", "- a\n- b\n", "not a mapping"},
		{"no kind", "apiVersion: v1\nmetadata: {name: x}\n", "needs apiVersion, kind"},
		{"no name", "apiVersion: v1\nkind: Service\n", "metadata.name"},
		{"alias", "apiVersion: v1\nkind: Service\nmetadata: &m {name: x}\nspec: *m\n", "aliases"},
		{"bad yaml", "apiVersion: v1\nkind: [\n", "yaml"},
		{"non-string key", "apiVersion: v1\nkind: Service\nmetadata: {name: x}\nspec: {1: a}\n", "not a JSON value"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := deploy.Decode("x.yaml", []byte(tc.doc))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want %q", err, tc.want)
			}
		})
	}
}

func FuzzDecode(f *testing.F) {
	for _, name := range []string{"kubernetes/epp/inferencepool.yaml", "kubernetes/epp/serviceaccount.yaml"} {
		b, err := os.ReadFile(name)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte("apiVersion: v1\nkind: Service\nmetadata: {name: x}\n---\n"))
	v, err := deploy.NewValidator()
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		objs, _ := deploy.Decode("fuzz.yaml", b)
		for _, o := range objs {
			_ = v.Validate(o)
			_ = o.LineOf("/spec/template/spec/containers/0")
		}
	})
}

// Each kustomization.yaml lists exactly the manifests and folders beside it, so that
// `kubectl apply -k` deploys what the tests validated.
func TestKustomizationsListEveryFile(t *testing.T) {
	var dirs []string
	err := walkDirs("kubernetes", func(dir string) { dirs = append(dirs, dir) })
	if err != nil {
		t.Fatal(err)
	}
	for _, dir := range dirs {
		b, err := os.ReadFile(path.Join(dir, deploy.KustomizationFile))
		if err != nil {
			t.Errorf("%s: %v", dir, err)
			continue
		}
		var k struct {
			Resources []string `json:"resources"`
		}
		if err := yaml.Unmarshal(b, &k); err != nil {
			t.Errorf("%s/%s: %v", dir, deploy.KustomizationFile, err)
			continue
		}
		entries, err := os.ReadDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		var want []string
		for _, e := range entries {
			if e.IsDir() || (path.Ext(e.Name()) == ".yaml" && e.Name() != deploy.KustomizationFile) {
				want = append(want, e.Name())
			}
		}
		got := slices.Clone(k.Resources)
		slices.Sort(got)
		if dir == "kubernetes" { // the default set leaves the optional parts out
			for _, opt := range []string{"envoy", "keda", "workerd"} {
				if !slices.Contains(got, opt) {
					got = append(got, opt)
				}
			}
			slices.Sort(got)
		}
		if !slices.Equal(got, want) {
			t.Errorf("%s/%s lists %v; the folder holds %v", dir, deploy.KustomizationFile, k.Resources, want)
		}
	}
}

func walkDirs(dir string, f func(string)) error {
	f(dir)
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range entries {
		if e.IsDir() && e.Name() != "testdata" {
			if err := walkDirs(path.Join(dir, e.Name()), f); err != nil {
				return err
			}
		}
	}
	return nil
}
