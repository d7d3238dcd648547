package kube

import (
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/kvgate/kvgate/discovery"
)

// pool is what an InferencePool says about its endpoints.
type pool struct {
	name        string
	selector    labels.Selector
	ports       []int
	appProtocol string
}

// parsePool reads spec.selector.matchLabels, spec.targetPorts[].number and spec.appProtocol of
// a v1 pool (spec.selector as a map and spec.targetPortNumber in v1alpha2).
func parsePool(obj any, version string) (pool, error) {
	u, ok := obj.(*unstructured.Unstructured)
	if !ok {
		return pool{}, fmt.Errorf("unexpected object %T", obj)
	}
	p := pool{name: u.GetName()}
	var match map[string]string
	var err error
	if version == "v1alpha2" {
		match, _, err = unstructured.NestedStringMap(u.Object, "spec", "selector")
		if err != nil {
			return p, fmt.Errorf("spec.selector: %w", err)
		}
		n, _, err := unstructured.NestedInt64(u.Object, "spec", "targetPortNumber")
		if err != nil {
			return p, fmt.Errorf("spec.targetPortNumber: %w", err)
		}
		p.ports = []int{int(n)}
	} else {
		match, _, err = unstructured.NestedStringMap(u.Object, "spec", "selector", "matchLabels")
		if err != nil {
			return p, fmt.Errorf("spec.selector.matchLabels: %w", err)
		}
		ports, _, err := unstructured.NestedSlice(u.Object, "spec", "targetPorts")
		if err != nil {
			return p, fmt.Errorf("spec.targetPorts: %w", err)
		}
		for i, e := range ports {
			m, _ := e.(map[string]any)
			n, _, err := unstructured.NestedInt64(m, "number")
			if err != nil {
				return p, fmt.Errorf("spec.targetPorts[%d].number: %w", i, err)
			}
			p.ports = append(p.ports, int(n))
		}
		p.appProtocol, _, _ = unstructured.NestedString(u.Object, "spec", "appProtocol")
	}
	if len(match) == 0 {
		// An empty selector would pick every Pod of the namespace; the API forbids it, and
		// so does the router.
		return p, fmt.Errorf("spec.selector selects nothing (no matchLabels)")
	}
	for i, n := range p.ports {
		if n < 1 || n > 65535 {
			return p, fmt.Errorf("target port %d: %d out of range", i, n)
		}
	}
	if len(p.ports) == 0 {
		return p, fmt.Errorf("no target ports")
	}
	p.selector = labels.SelectorFromSet(match)
	return p, nil
}

// endpoints turns the Pods the pool selects into endpoints, sorted by name. warn reports a Pod
// left out, once per key.
func endpoints(cfg Config, p pool, pods []any, warn func(key, msg string, args ...any)) []discovery.Endpoint {
	var out []discovery.Endpoint
	for _, obj := range pods {
		u, ok := obj.(*unstructured.Unstructured)
		if !ok || !p.selector.Matches(labels.Set(u.GetLabels())) || u.GetDeletionTimestamp() != nil {
			continue
		}
		ip, _, _ := unstructured.NestedString(u.Object, "status", "podIP")
		if net.ParseIP(ip) == nil {
			continue // not scheduled or not started: nothing to route to yet
		}
		id := u.GetNamespace() + "/" + u.GetName()
		eps, err := podEndpoints(cfg, p, u, ip)
		if err != nil {
			warn(id+":"+err.Error(), "kubernetes: Pod left out", "pod", id, "err", err)
			continue
		}
		out = append(out, eps...)
	}
	slices.SortFunc(out, func(a, b discovery.Endpoint) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// podEndpoints is one endpoint per target port of a selected Pod with an IP.
func podEndpoints(cfg Config, p pool, u *unstructured.Unstructured, ip string) ([]discovery.Endpoint, error) {
	lbl, ann := u.GetLabels(), u.GetAnnotations()
	role := discovery.RoleAggregated
	switch v := lbl[cfg.RoleLabel]; v {
	case "", roleLabelBoth, roleLabelPrefillDecode:
	case roleLabelPrefill:
		role = discovery.RolePrefill
	case roleLabelDecode:
		role = discovery.RoleDecode
	default:
		return nil, fmt.Errorf("label %s=%q is no role the router routes text to (prefill, decode, both)", cfg.RoleLabel, v)
	}
	var models []string
	if v := ann[AnnotationModels]; v != "" {
		for m := range strings.SplitSeq(v, ",") {
			if m = strings.TrimSpace(m); m != "" {
				models = append(models, m)
			}
		}
	} else if v := lbl[cfg.ModelLabel]; v != "" {
		models = []string{v}
	} else {
		models = slices.Clone(cfg.Models)
	}
	if len(models) == 0 {
		return nil, fmt.Errorf("names no model: set --model, label %s or annotation %s", cfg.ModelLabel, AnnotationModels)
	}
	blockSize := cfg.BlockSize
	if v, ok := ann[AnnotationBlockSize]; ok {
		n, err := strconv.Atoi(v)
		if err != nil || n <= 0 {
			return nil, fmt.Errorf("annotation %s=%q: want a positive number of tokens", AnnotationBlockSize, v)
		}
		blockSize = n
	}
	kvPort, err := portAnnotation(ann, AnnotationKVEventsPort, cfg.KVEventsPort)
	if err != nil {
		return nil, err
	}
	replayPort, err := portAnnotation(ann, AnnotationKVReplayPort, 0)
	if err != nil {
		return nil, err
	}
	workerd := ann[AnnotationWorkerd]
	if workerd != "" {
		if n, err := strconv.Atoi(workerd); err == nil && n > 0 && n <= 65535 {
			workerd = net.JoinHostPort(ip, workerd)
		} else if _, _, err := net.SplitHostPort(workerd); err != nil {
			return nil, fmt.Errorf("annotation %s=%q: want host:port or a port", AnnotationWorkerd, workerd)
		}
	}
	ready := podReady(u)
	eps := make([]discovery.Endpoint, 0, len(p.ports))
	for i, port := range p.ports {
		name := u.GetNamespace() + "/" + u.GetName()
		if len(p.ports) > 1 {
			name += ":" + strconv.Itoa(port)
		}
		e := discovery.Endpoint{
			Name: name, Address: net.JoinHostPort(ip, strconv.Itoa(port)), Models: slices.Clone(models),
			Role: role, BlockSize: blockSize, Workerd: workerd, Healthy: ready,
			Meta: map[string]string{MetaNamespace: u.GetNamespace(), MetaPod: u.GetName(), MetaPool: p.name},
		}
		if kvPort > 0 {
			e.KVEvents = "tcp://" + net.JoinHostPort(ip, strconv.Itoa(kvPort+i))
		}
		if replayPort > 0 {
			e.KVReplay = "tcp://" + net.JoinHostPort(ip, strconv.Itoa(replayPort+i))
		}
		if p.appProtocol != "" {
			e.Meta[MetaAppProtocol] = p.appProtocol
		}
		eps = append(eps, e)
	}
	return eps, nil
}

// portAnnotation reads a port annotation, def when absent; "0" is none.
func portAnnotation(ann map[string]string, key string, def int) (int, error) {
	v, ok := ann[key]
	if !ok {
		return def, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 0 || n > 65535 {
		return 0, fmt.Errorf("annotation %s=%q: want a port number (0 = none)", key, v)
	}
	return n, nil
}

// podReady reports whether the Pod's Ready condition is True.
func podReady(u *unstructured.Unstructured) bool {
	conds, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
	for _, c := range conds {
		m, _ := c.(map[string]any)
		if m["type"] == "Ready" {
			return m["status"] == "True"
		}
	}
	return false
}
