package apiserver_test

import (
	"maps"
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/kvgate/kvgate/kubetest"
	"github.com/kvgate/kvgate/kubetest/apiserver"
)

// TestObjects: what the helpers write is what the API stores, as a controller would read it.
func TestObjects(t *testing.T) {
	s := apiserver.Start(t)

	s.SetPod(t, kubetest.Pod{Namespace: "ns", Name: "p", IP: "10.1.2.3", Labels: map[string]string{"app": "e", "old": "x"}})
	s.SetPod(t, kubetest.Pod{Namespace: "ns", Name: "p", IP: "10.1.2.3", Labels: map[string]string{"app": "e"},
		Annotations: map[string]string{"a": "b"}, NotReady: true})
	p := s.Get(t, apiserver.Pods, "ns", "p")
	if p == nil {
		t.Fatal("pod not stored")
	}
	if got := p.GetLabels(); !maps.Equal(got, map[string]string{"app": "e"}) {
		t.Fatalf("labels %v: the label set before should be gone", got)
	}
	if ip, _, _ := unstructured.NestedString(p.Object, "status", "podIP"); ip != "10.1.2.3" {
		t.Fatalf("status.podIP %q", ip)
	}
	if got := condition(p, "Ready"); got != "False" {
		t.Fatalf("Ready %q, want False", got)
	}

	p2 := kubetest.Pod{Namespace: "ns", Name: "p", IP: "10.1.2.3", Labels: map[string]string{"app": "e"}, Deleting: true}
	s.SetPod(t, p2)
	p = s.Get(t, apiserver.Pods, "ns", "p")
	if p == nil || p.GetDeletionTimestamp() == nil {
		t.Fatalf("a Deleting pod should stay, terminating: %v", p)
	}
	if !s.DeletePod(t, "ns", "p") || s.Get(t, apiserver.Pods, "ns", "p") != nil {
		t.Fatal("DeletePod left the pod")
	}
	if s.DeletePod(t, "ns", "p") {
		t.Fatal("DeletePod of a missing pod reported it existed")
	}

	s.SetInferencePool(t, kubetest.InferencePool{Namespace: "ns", Name: "pool", Selector: map[string]string{"app": "e"},
		TargetPorts: []int{8000, 8001}, EPPName: "epp", EPPPort: 9002})
	pool := s.Get(t, apiserver.InferencePools, "ns", "pool")
	if pool == nil {
		t.Fatal("pool not stored")
	}
	// The CRD's defaults apply: the API server runs its schema.
	if proto, _, _ := unstructured.NestedString(pool.Object, "spec", "appProtocol"); proto != "http" {
		t.Fatalf("spec.appProtocol %q, want the CRD's default http", proto)
	}
	if !s.DeleteInferencePool(t, "ns", "pool") || s.DeleteInferencePool(t, "ns", "pool") {
		t.Fatal("DeleteInferencePool should report the pool once")
	}
}

func condition(p *unstructured.Unstructured, typ string) string {
	conds, _, _ := unstructured.NestedSlice(p.Object, "status", "conditions")
	for _, c := range conds {
		m, _ := c.(map[string]any)
		if m["type"] == typ {
			s, _ := m["status"].(string)
			return s
		}
	}
	return ""
}
