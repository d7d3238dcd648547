package apiserver

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/dynamic"

	"github.com/kvgate/kvgate/kubetest"
	"github.com/kvgate/kvgate/polltest"
)

// The InferencePool CRD installed: the Gateway API Inference Extension's own, from its module.
const (
	crdModule = "sigs.k8s.io/gateway-api-inference-extension@v1.4.0"
	crdFile   = "config/crd/bases/inference.networking.k8s.io_inferencepools.yaml"
)

// fieldManager owns every field the tests write (server-side apply).
const fieldManager = "kvgate-test"

// holdFinalizer keeps a Pod that SetPod marks Deleting from going away.
const holdFinalizer = "kvgate.io/test-hold"

// Resources the helpers write, for Get.
var (
	Pods           = schema.GroupVersionResource{Version: "v1", Resource: "pods"}
	InferencePools = schema.GroupVersionResource{Group: "inference.networking.k8s.io", Version: "v1", Resource: "inferencepools"}
)

var (
	nsR = schema.GroupVersionResource{Version: "v1", Resource: "namespaces"}
	saR = schema.GroupVersionResource{Version: "v1", Resource: "serviceaccounts"}
)

// installCRD creates the InferencePool CRD and waits until its resource is served.
func (s *Server) installCRD(t testing.TB) {
	t.Helper()
	out, err := exec.Command("go", "mod", "download", "-json", crdModule).Output()
	if err != nil {
		t.Fatalf("apiserver: go mod download %s: %v", crdModule, err)
	}
	var m struct{ Dir, Error string }
	if err := json.Unmarshal(out, &m); err != nil || m.Dir == "" {
		t.Fatalf("apiserver: go mod download %s: %v %s", crdModule, err, m.Error)
	}
	b, err := os.ReadFile(filepath.Join(m.Dir, crdFile))
	if err != nil {
		t.Fatalf("apiserver: the InferencePool CRD: %v", err)
	}
	if err := s.applyYAML("", b); err != nil {
		t.Fatalf("apiserver: installing the InferencePool CRD: %v", err)
	}
	var lastErr error
	if !polltest.Wait(30*time.Second, func() bool {
		c, cancel := callCtx()
		defer cancel()
		_, lastErr = s.client.Resource(InferencePools).List(c, metav1.ListOptions{Limit: 1})
		return lastErr == nil
	}) {
		t.Fatalf("apiserver: InferencePools not served after installing the CRD: %v", lastErr)
	}
}

// Apply creates or updates (server-side apply) every object of a YAML file of one or more
// documents; objects of namespaced kinds land in namespace, which is created if missing.
func (s *Server) Apply(t testing.TB, namespace, file string) {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	s.ensureNamespace(t, namespace)
	if err := s.applyYAML(namespace, b); err != nil {
		t.Fatalf("apiserver: apply %s: %v", file, err)
	}
}

// clusterScoped are the kinds without a namespace that applyYAML may meet; every other kind
// is namespaced.
var clusterScoped = map[schema.GroupKind]bool{
	{Kind: "Namespace"}: true,
	{Group: "apiextensions.k8s.io", Kind: "CustomResourceDefinition"}: true,
	{Group: "rbac.authorization.k8s.io", Kind: "ClusterRole"}:         true,
	{Group: "rbac.authorization.k8s.io", Kind: "ClusterRoleBinding"}:  true,
}

func (s *Server) applyYAML(namespace string, data []byte) error {
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(data), 4096)
	for {
		var obj unstructured.Unstructured
		if err := dec.Decode(&obj.Object); errors.Is(err, io.EOF) {
			return nil
		} else if err != nil {
			return err
		}
		if len(obj.Object) == 0 {
			continue // an empty document
		}
		gvk := obj.GroupVersionKind()
		// The plural of every kind applied is its lower-case name plus s (or ies); no
		// discovery needed.
		gvr, _ := meta.UnsafeGuessKindToResource(gvk)
		var r dynamic.ResourceInterface = s.client.Resource(gvr)
		if !clusterScoped[gvk.GroupKind()] {
			obj.SetNamespace(namespace)
			r = s.client.Resource(gvr).Namespace(namespace)
		}
		c, cancel := callCtx()
		_, err := r.Apply(c, obj.GetName(), &obj, metav1.ApplyOptions{FieldManager: fieldManager, Force: true})
		cancel()
		if err != nil {
			return fmt.Errorf("%s %s: %w", gvk.Kind, obj.GetName(), err)
		}
	}
}

// ensureNamespace creates namespace and its "default" service account, as the controller
// manager (which does not run) would: Pods cannot be created without it.
func (s *Server) ensureNamespace(t testing.TB, namespace string) {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.namespaces[namespace] {
		return
	}
	ns := &unstructured.Unstructured{Object: map[string]any{"apiVersion": "v1", "kind": "Namespace",
		"metadata": map[string]any{"name": namespace}}}
	sa := &unstructured.Unstructured{Object: map[string]any{"apiVersion": "v1", "kind": "ServiceAccount",
		"metadata": map[string]any{"name": "default", "namespace": namespace}}}
	c, cancel := callCtx()
	defer cancel()
	opts := metav1.ApplyOptions{FieldManager: fieldManager, Force: true}
	if _, err := s.client.Resource(nsR).Apply(c, namespace, ns, opts); err != nil {
		t.Fatalf("apiserver: namespace %s: %v", namespace, err)
	}
	if _, err := s.client.Resource(saR).Namespace(namespace).Apply(c, "default", sa, opts); err != nil {
		t.Fatalf("apiserver: service account %s/default: %v", namespace, err)
	}
	s.namespaces[namespace] = true
}

// ServiceAccountToken creates the service account namespace/name if missing and returns a
// token the API server issues for it (TokenRequest, one hour): the credentials a Pod running
// as that account would have.
func (s *Server) ServiceAccountToken(t testing.TB, namespace, name string) string {
	t.Helper()
	s.ensureNamespace(t, namespace)
	c, cancel := callCtx()
	defer cancel()
	sa := &unstructured.Unstructured{Object: map[string]any{"apiVersion": "v1", "kind": "ServiceAccount",
		"metadata": map[string]any{"name": name, "namespace": namespace}}}
	if _, err := s.client.Resource(saR).Namespace(namespace).Apply(c, name, sa, metav1.ApplyOptions{FieldManager: fieldManager, Force: true}); err != nil {
		t.Fatalf("apiserver: service account %s/%s: %v", namespace, name, err)
	}
	req := &unstructured.Unstructured{Object: map[string]any{"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
		"metadata": map[string]any{"name": name}, // the dynamic client's URL takes the account's name from here
		"spec":     map[string]any{"expirationSeconds": int64(3600)}}}
	got, err := s.client.Resource(saR).Namespace(namespace).Create(c, req, metav1.CreateOptions{}, "token")
	if err != nil {
		t.Fatalf("apiserver: token for %s/%s: %v", namespace, name, err)
	}
	token, _, _ := unstructured.NestedString(got.Object, "status", "token")
	if token == "" {
		t.Fatalf("apiserver: token request for %s/%s answered no token: %v", namespace, name, got.Object)
	}
	return token
}

// SetPod creates or replaces a Pod: labels and annotations as given (others the test set
// before are removed), then, through the status subresource as a kubelet would, phase
// Running, the IP and the Ready condition. A Pod marked Deleting gets a finalizer and is
// deleted, so it stays, terminating, until DeletePod.
func (s *Server) SetPod(t testing.TB, p kubetest.Pod) {
	t.Helper()
	s.ensureNamespace(t, p.Namespace)
	md := map[string]any{"name": p.Name, "namespace": p.Namespace}
	if len(p.Labels) > 0 {
		md["labels"] = stringMap(p.Labels)
	}
	if len(p.Annotations) > 0 {
		md["annotations"] = stringMap(p.Annotations)
	}
	if p.Deleting {
		md["finalizers"] = []any{holdFinalizer}
	}
	obj := &unstructured.Unstructured{Object: map[string]any{"apiVersion": "v1", "kind": "Pod", "metadata": md,
		"spec": map[string]any{
			"containers":                   []any{map[string]any{"name": "engine", "image": "kvgate"}},
			"automountServiceAccountToken": false,
		}}}
	ready := "True"
	if p.NotReady {
		ready = "False"
	}
	status := map[string]any{"phase": "Running", "conditions": []any{
		map[string]any{"type": "Ready", "status": ready},
		map[string]any{"type": "ContainersReady", "status": ready},
	}}
	if p.IP != "" {
		status["podIP"] = p.IP
		status["podIPs"] = []any{map[string]any{"ip": p.IP}}
	}
	st := &unstructured.Unstructured{Object: map[string]any{"apiVersion": "v1", "kind": "Pod",
		"metadata": map[string]any{"name": p.Name, "namespace": p.Namespace}, "status": status}}

	r := s.client.Resource(Pods).Namespace(p.Namespace)
	c, cancel := callCtx()
	defer cancel()
	opts := metav1.ApplyOptions{FieldManager: fieldManager, Force: true}
	cur, err := r.Apply(c, p.Name, obj, opts)
	if err != nil {
		t.Fatalf("apiserver: pod %s/%s: %v", p.Namespace, p.Name, err)
	}
	if cur.GetDeletionTimestamp() != nil && !p.Deleting {
		t.Fatalf("apiserver: pod %s/%s is being deleted; a real API cannot take that back", p.Namespace, p.Name)
	}
	if _, err := r.ApplyStatus(c, p.Name, st, opts); err != nil {
		t.Fatalf("apiserver: status of pod %s/%s: %v", p.Namespace, p.Name, err)
	}
	if p.Deleting && cur.GetDeletionTimestamp() == nil {
		if err := r.Delete(c, p.Name, metav1.DeleteOptions{}); err != nil {
			t.Fatalf("apiserver: pod %s/%s: delete: %v", p.Namespace, p.Name, err)
		}
	}
}

// DeletePod deletes a Pod at once (and its finalizer, if SetPod held it), reporting whether
// it existed.
func (s *Server) DeletePod(t testing.TB, namespace, name string) bool {
	t.Helper()
	r := s.client.Resource(Pods).Namespace(namespace)
	c, cancel := callCtx()
	defer cancel()
	cur, err := r.Get(c, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return false
	} else if err != nil {
		t.Fatalf("apiserver: pod %s/%s: %v", namespace, name, err)
	}
	if len(cur.GetFinalizers()) > 0 {
		_, err := r.Patch(c, name, types.MergePatchType, []byte(`{"metadata":{"finalizers":null}}`), metav1.PatchOptions{})
		if err != nil && !apierrors.IsNotFound(err) {
			t.Fatalf("apiserver: pod %s/%s: dropping finalizers: %v", namespace, name, err)
		}
	}
	zero := int64(0)
	if err := r.Delete(c, name, metav1.DeleteOptions{GracePeriodSeconds: &zero}); err != nil && !apierrors.IsNotFound(err) {
		t.Fatalf("apiserver: pod %s/%s: delete: %v", namespace, name, err)
	}
	return true
}

// SetInferencePool creates or replaces an inference.networking.k8s.io/v1 InferencePool; the
// API server checks it against the CRD's schema and validation rules.
func (s *Server) SetInferencePool(t testing.TB, p kubetest.InferencePool) {
	t.Helper()
	s.ensureNamespace(t, p.Namespace)
	ports := make([]any, 0, len(p.TargetPorts))
	for _, n := range p.TargetPorts {
		ports = append(ports, map[string]any{"number": int64(n)})
	}
	ref := map[string]any{"kind": "Service", "name": p.EPPName, "port": map[string]any{"number": int64(p.EPPPort)}}
	if p.FailureMode != "" {
		ref["failureMode"] = p.FailureMode
	}
	spec := map[string]any{
		"selector":          map[string]any{"matchLabels": stringMap(p.Selector)},
		"targetPorts":       ports,
		"endpointPickerRef": ref,
	}
	if p.AppProtocol != "" {
		spec["appProtocol"] = p.AppProtocol
	}
	obj := &unstructured.Unstructured{Object: map[string]any{"apiVersion": InferencePools.GroupVersion().String(), "kind": "InferencePool",
		"metadata": map[string]any{"name": p.Name, "namespace": p.Namespace}, "spec": spec}}
	c, cancel := callCtx()
	defer cancel()
	if _, err := s.client.Resource(InferencePools).Namespace(p.Namespace).Apply(c, p.Name, obj,
		metav1.ApplyOptions{FieldManager: fieldManager, Force: true}); err != nil {
		t.Fatalf("apiserver: InferencePool %s/%s: %v", p.Namespace, p.Name, err)
	}
}

// DeleteInferencePool deletes a pool, reporting whether it existed.
func (s *Server) DeleteInferencePool(t testing.TB, namespace, name string) bool {
	t.Helper()
	c, cancel := callCtx()
	defer cancel()
	err := s.client.Resource(InferencePools).Namespace(namespace).Delete(c, name, metav1.DeleteOptions{})
	if apierrors.IsNotFound(err) {
		return false
	} else if err != nil {
		t.Fatalf("apiserver: InferencePool %s/%s: delete: %v", namespace, name, err)
	}
	return true
}

// Get returns an object as the admin reads it (for tests of this package and checks of what
// the API stored); nil when absent.
func (s *Server) Get(t testing.TB, gvr schema.GroupVersionResource, namespace, name string) *unstructured.Unstructured {
	t.Helper()
	c, cancel := callCtx()
	defer cancel()
	obj, err := s.client.Resource(gvr).Namespace(namespace).Get(c, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil
	} else if err != nil {
		t.Fatalf("apiserver: %s %s/%s: %v", gvr.Resource, namespace, name, err)
	}
	return obj
}

func stringMap(m map[string]string) map[string]any {
	out := make(map[string]any, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}
