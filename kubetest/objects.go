package kubetest

import (
	"encoding/json"
	"maps"
	"slices"
	"strconv"
)

// The API groups and versions served.
const (
	poolGroup   = "inference.networking.k8s.io"
	poolVersion = "v1"

	// annotationInitialEventsEnd marks the bookmark that ends a watch's initial events.
	annotationInitialEventsEnd = "k8s.io/initial-events-end"
)

// Pod is a model-server Pod: what an Endpoint Picker reads of one.
type Pod struct {
	Namespace   string
	Name        string
	Labels      map[string]string
	Annotations map[string]string
	IP          string // status.podIP
	NotReady    bool   // the Ready condition is False (Ready by default)
	Deleting    bool   // metadata.deletionTimestamp is set (the Pod is terminating)
}

// InferencePool is an inference.networking.k8s.io/v1 InferencePool: the Pods its selector
// picks serve on TargetPorts, and its Endpoint Picker is the Service EPPName on EPPPort.
type InferencePool struct {
	Namespace   string
	Name        string
	Selector    map[string]string // spec.selector.matchLabels
	TargetPorts []int
	EPPName     string // spec.endpointPickerRef.name
	EPPPort     int
	FailureMode string // FailOpen or FailClose ("" is FailClose, as the API defaults it)
	AppProtocol string // spec.appProtocol: "" (omitted), http or kubernetes.io/h2c
}

// kind is one resource type served: its REST name and how its objects render.
type kind struct {
	group, version string // "" group: the core API
	resource       string // plural, as in URLs
	kind           string
	listKind       string
}

var (
	podKind  = kind{version: "v1", resource: "pods", kind: "Pod", listKind: "PodList"}
	poolKind = kind{group: poolGroup, version: poolVersion, resource: "inferencepools", kind: "InferencePool", listKind: "InferencePoolList"}
)

func (k kind) apiVersion() string {
	if k.group == "" {
		return k.version
	}
	return k.group + "/" + k.version
}

// object is a stored object: its identity, labels (for selectors) and body without metadata.
type object struct {
	kind      kind
	namespace string
	name      string
	uid       string
	labels    map[string]string
	annots    map[string]string
	deleting  bool
	rv        uint64
	spec      any
	status    any
}

type objectMeta struct {
	Name              string            `json:"name"`
	Namespace         string            `json:"namespace,omitempty"`
	UID               string            `json:"uid,omitempty"`
	ResourceVersion   string            `json:"resourceVersion"`
	Generation        int64             `json:"generation,omitempty"`
	CreationTimestamp string            `json:"creationTimestamp,omitempty"`
	DeletionTimestamp string            `json:"deletionTimestamp,omitempty"`
	Labels            map[string]string `json:"labels,omitempty"`
	Annotations       map[string]string `json:"annotations,omitempty"`
}

// created is every object's creation time: fixed, so answers are reproducible.
const created = "2026-01-01T00:00:00Z"

func (o *object) MarshalJSON() ([]byte, error) {
	deleted := ""
	if o.deleting {
		deleted = created
	}
	return json.Marshal(struct {
		APIVersion string     `json:"apiVersion"`
		Kind       string     `json:"kind"`
		Metadata   objectMeta `json:"metadata"`
		Spec       any        `json:"spec,omitempty"`
		Status     any        `json:"status,omitempty"`
	}{o.kind.apiVersion(), o.kind.kind, objectMeta{
		Name: o.name, Namespace: o.namespace, UID: o.uid, ResourceVersion: strconv.FormatUint(o.rv, 10),
		Generation: 1, CreationTimestamp: created, DeletionTimestamp: deleted, Labels: o.labels, Annotations: o.annots,
	}, o.spec, o.status})
}

func podObject(p Pod) *object {
	ready := "True"
	if p.NotReady {
		ready = "False"
	}
	type ip struct {
		IP string `json:"ip"`
	}
	type condition struct {
		Type   string `json:"type"`
		Status string `json:"status"`
	}
	type container struct {
		Name  string `json:"name"`
		Image string `json:"image"`
	}
	return &object{
		kind: podKind, namespace: p.Namespace, name: p.Name, labels: maps.Clone(p.Labels),
		annots: maps.Clone(p.Annotations), deleting: p.Deleting,
		spec: struct {
			Containers []container `json:"containers"`
		}{[]container{{Name: "engine", Image: "kvgate"}}},
		status: struct {
			Phase      string      `json:"phase"`
			PodIP      string      `json:"podIP,omitempty"`
			PodIPs     []ip        `json:"podIPs,omitempty"`
			Conditions []condition `json:"conditions"`
		}{"Running", p.IP, []ip{{p.IP}}, []condition{{"Ready", ready}, {"ContainersReady", ready}}},
	}
}

func poolObject(p InferencePool) *object {
	type port struct {
		Number int `json:"number"`
	}
	ports := make([]port, 0, len(p.TargetPorts))
	for _, n := range p.TargetPorts {
		ports = append(ports, port{n})
	}
	mode := p.FailureMode
	if mode == "" {
		mode = "FailClose"
	}
	type selector struct {
		MatchLabels map[string]string `json:"matchLabels"`
	}
	type eppRef struct {
		Group       string `json:"group"`
		Kind        string `json:"kind"`
		Name        string `json:"name"`
		Port        port   `json:"port"`
		FailureMode string `json:"failureMode"`
	}
	return &object{
		kind: poolKind, namespace: p.Namespace, name: p.Name,
		spec: struct {
			Selector          selector `json:"selector"`
			TargetPorts       []port   `json:"targetPorts"`
			AppProtocol       string   `json:"appProtocol,omitempty"`
			EndpointPickerRef eppRef   `json:"endpointPickerRef"`
		}{selector{maps.Clone(p.Selector)}, ports, p.AppProtocol, eppRef{"", "Service", p.EPPName, port{p.EPPPort}, mode}},
	}
}

// matches says whether o passes a label selector and field selector, both parsed.
func (o *object) matches(labels []requirement, fields map[string]string) bool {
	for _, r := range labels {
		if !r.holds(o.labels) {
			return false
		}
	}
	for k, v := range fields {
		switch k {
		case "metadata.name":
			if o.name != v {
				return false
			}
		case "metadata.namespace":
			if o.namespace != v {
				return false
			}
		}
	}
	return true
}

// sortedKeys returns m's keys in order.
func sortedKeys[V any](m map[string]V) []string { return slices.Sorted(maps.Keys(m)) }
