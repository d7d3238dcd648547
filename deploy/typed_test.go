package deploy_test

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	sigsjson "sigs.k8s.io/json"

	"github.com/kvgate/kvgate/deploy"
)

// typedKinds are the Go types of k8s.io/api (v0.37.2, the Kubernetes version of the schemas)
// for the built-in kinds the manifests use.
var typedKinds = map[string]func() any{
	"v1/Namespace":                             func() any { return &corev1.Namespace{} },
	"v1/Service":                               func() any { return &corev1.Service{} },
	"v1/ServiceAccount":                        func() any { return &corev1.ServiceAccount{} },
	"v1/ConfigMap":                             func() any { return &corev1.ConfigMap{} },
	"apps/v1/Deployment":                       func() any { return &appsv1.Deployment{} },
	"apps/v1/DaemonSet":                        func() any { return &appsv1.DaemonSet{} },
	"rbac.authorization.k8s.io/v1/Role":        func() any { return &rbacv1.Role{} },
	"rbac.authorization.k8s.io/v1/RoleBinding": func() any { return &rbacv1.RoleBinding{} },
	"policy/v1/PodDisruptionBudget":            func() any { return &policyv1.PodDisruptionBudget{} },
}

// decodeTyped decodes an object strictly into its k8s.io/api type with the API server's own
// JSON decoder (sigs.k8s.io/json, case-sensitive): an unknown or duplicate field, or a value
// of the wrong type (a quantity or int-or-string that does not parse included), is an error.
func decodeTyped(o deploy.Object) error {
	newObj, ok := typedKinds[o.GVK()]
	if !ok {
		return nil
	}
	b, err := json.Marshal(o.Body)
	if err != nil {
		return err
	}
	strictErrs, err := sigsjson.UnmarshalStrict(b, newObj(), sigsjson.DisallowUnknownFields)
	return errors.Join(append([]error{err}, strictErrs...)...)
}

// The second check of the built-in kinds: every one decodes strictly into the API's Go types.
func TestManifestsDecodeIntoAPITypes(t *testing.T) {
	n := 0
	for _, o := range manifests(t) {
		if _, ok := typedKinds[o.GVK()]; !ok {
			continue
		}
		n++
		if err := decodeTyped(o); err != nil {
			t.Errorf("%s: %v", o, err)
		}
	}
	if n < 10 {
		t.Fatalf("only %d built-in objects decoded", n)
	}
}

func TestDecodeIntoAPITypesRejects(t *testing.T) {
	base := "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\nspec:\n  replicas: 2\n  template:\n    spec:\n      containers: [{name: c, resources: {limits: {memory: 4Gi}}}]\n"
	for _, tc := range []struct{ name, old, new, want string }{
		{"misspelt", "replicas: 2", "replica: 2", `unknown field "spec.replica"`},
		{"wrong type", "replicas: 2", "replicas: two", "replicas"},
		{"bad quantity", "memory: 4Gi", "memory: 4Gb", "quantities must match"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			objs, err := deploy.Decode("x.yaml", []byte(strings.Replace(base, tc.old, tc.new, 1)))
			if err != nil {
				t.Fatal(err)
			}
			err = decodeTyped(objs[0])
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want %q", err, tc.want)
			}
		})
	}
}
