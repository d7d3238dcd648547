package kube

import (
	"encoding/json"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

func object(t testing.TB, js string) *unstructured.Unstructured {
	t.Helper()
	u := &unstructured.Unstructured{}
	if err := u.UnmarshalJSON([]byte(js)); err != nil {
		t.Fatal(err)
	}
	return u
}

const (
	v1Pool = `{"apiVersion":"inference.networking.k8s.io/v1","kind":"InferencePool","metadata":{"name":"p","namespace":"n"},
		"spec":{"selector":{"matchLabels":{"app":"e"}},"targetPorts":[{"number":8000}]}}`
	alphaPool = `{"apiVersion":"inference.networking.x-k8s.io/v1alpha2","kind":"InferencePool","metadata":{"name":"p","namespace":"n"},
		"spec":{"selector":{"app":"e"},"targetPortNumber":8000}}`
)

func pod(labels, annotations string) string {
	return `{"apiVersion":"v1","kind":"Pod","metadata":{"name":"a","namespace":"n","labels":` + labels + `,"annotations":` + annotations + `},
		"status":{"podIP":"10.0.0.1","conditions":[{"type":"Ready","status":"True"}]}}`
}

func TestParsePool(t *testing.T) {
	for _, tc := range []struct {
		name, js, version, want string
	}{
		{"v1", v1Pool, "v1", ""},
		{"v1alpha2", alphaPool, "v1alpha2", ""},
		{"no selector", `{"kind":"InferencePool","metadata":{"name":"p"},"spec":{"targetPorts":[{"number":8000}]}}`, "v1", "selects nothing"},
		{"no ports", `{"kind":"InferencePool","metadata":{"name":"p"},"spec":{"selector":{"matchLabels":{"a":"b"}}}}`, "v1", "no target ports"},
		{"port out of range", strings.Replace(v1Pool, "8000", "70000", 1), "v1", "out of range"},
		{"port of the wrong type", strings.Replace(v1Pool, "8000", `"x"`, 1), "v1", "targetPorts[0].number"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, err := parsePool(object(t, tc.js), tc.version)
			if tc.want == "" {
				if err != nil || len(p.ports) != 1 || p.ports[0] != 8000 || p.selector.String() != "app=e" {
					t.Fatalf("%+v %v", p, err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
		})
	}
}

// TestPodsLeftOut: a Pod the router cannot route to is left out with a reason, once.
func TestPodsLeftOut(t *testing.T) {
	p, err := parsePool(object(t, v1Pool), "v1")
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{RoleLabel: DefaultRoleLabel, ModelLabel: DefaultModelLabel, Models: []string{"m"}}
	for _, tc := range []struct {
		name, labels, annotations, want string
	}{
		{"an encoder", `{"app":"e","llm-d.ai/role":"encode"}`, `{}`, "no role"},
		{"a bad events port", `{"app":"e"}`, `{"kvgate.io/kv-events-port":"x"}`, "kv-events-port"},
		{"a bad block size", `{"app":"e"}`, `{"kvgate.io/block-size":"0"}`, "block-size"},
		{"a bad workerd", `{"app":"e"}`, `{"kvgate.io/workerd":"nohost"}`, "workerd"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var reasons []string
			eps := endpoints(cfg, p, []any{object(t, pod(tc.labels, tc.annotations))}, func(_, _ string, args ...any) {
				reasons = append(reasons, args[len(args)-1].(error).Error())
			})
			if len(eps) != 0 || len(reasons) != 1 || !strings.Contains(reasons[0], tc.want) {
				t.Fatalf("endpoints %v, reasons %q; want none and one mentioning %q", eps, reasons, tc.want)
			}
		})
	}
	t.Run("no model anywhere", func(t *testing.T) {
		var reasons []string
		cfg := cfg
		cfg.Models = nil
		endpoints(cfg, p, []any{object(t, pod(`{"app":"e"}`, `{}`))}, func(_, _ string, args ...any) {
			reasons = append(reasons, args[len(args)-1].(error).Error())
		})
		if len(reasons) != 1 || !strings.Contains(reasons[0], "--model") {
			t.Fatalf("reasons %q", reasons)
		}
	})
	t.Run("the model label", func(t *testing.T) {
		eps := endpoints(cfg, p, []any{object(t, pod(`{"app":"e","llm-d.ai/model":"qwen3-8b"}`, `{}`))}, nil)
		if len(eps) != 1 || eps[0].Models[0] != "qwen3-8b" || !eps[0].Healthy {
			t.Fatalf("%+v", eps)
		}
	})
}

// FuzzEndpoints: any pool and Pod the API server sends become endpoints or an error, never a
// panic.
func FuzzEndpoints(f *testing.F) {
	f.Add(v1Pool, pod(`{"app":"e"}`, `{"kvgate.io/models":"a,b","kvgate.io/kv-events-port":"5557"}`), false)
	f.Add(alphaPool, pod(`{"app":"e","llm-d.ai/role":"decode"}`, `{"kvgate.io/workerd":"7000"}`), true)
	f.Add(`{"spec":{"targetPorts":[1,{"number":-1}]}}`, `{"status":{"conditions":[1,{"type":"Ready"}]}}`, false)
	cfg := Config{RoleLabel: DefaultRoleLabel, ModelLabel: DefaultModelLabel, Models: []string{"m"}, KVEventsPort: 5557}
	f.Fuzz(func(t *testing.T, poolJSON, podJSON string, alpha bool) {
		var pm, om map[string]any
		if json.Unmarshal([]byte(poolJSON), &pm) != nil || json.Unmarshal([]byte(podJSON), &om) != nil {
			return
		}
		version := "v1"
		if alpha {
			version = "v1alpha2"
		}
		p, err := parsePool(&unstructured.Unstructured{Object: pm}, version)
		if err != nil {
			return
		}
		for _, e := range endpoints(cfg, p, []any{&unstructured.Unstructured{Object: om}, "not an object"}, func(string, string, ...any) {}) {
			if e.Name == "" || e.Address == "" || len(e.Models) == 0 {
				t.Fatalf("incomplete endpoint %+v", e)
			}
		}
	})
}
