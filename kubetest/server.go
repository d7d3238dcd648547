// Package kubetest is a minimal, read-only Kubernetes API server for tests: discovery, and get,
// list and watch of Pods and inference.networking.k8s.io/v1 InferencePools held in memory, good
// enough for client-go informers (resource versions, watch from a version, watch-list with its
// initial-events bookmark). It lets a program that discovers engines only through Kubernetes
// (llm-d's Endpoint Picker, kvgate's own router with --kubernetes) run against local engines
// without a cluster.
package kubetest

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/kvgate/kvgate/tlsconfig"
)

// Server holds the objects and serves them. Its methods are safe for concurrent use.
type Server struct {
	mu      sync.Mutex
	rv      uint64             // the last resource version handed out
	objects map[string]*object // by key(kind, namespace, name)
	log     []event            // every change, oldest first
	changed chan struct{}      // closed and replaced on every change
	denied  map[string]bool    // resources answered 403, by REST name

	tls  tlsconfig.Files
	http *http.Server
	lis  net.Listener
	url  string
	done chan struct{}
}

// event is one change, as a watch reports it.
type event struct {
	typ string // ADDED, MODIFIED, DELETED
	obj *object
}

// New returns an empty server; Start serves it.
func New() *Server {
	return &Server{objects: map[string]*object{}, changed: make(chan struct{})}
}

// Start serves on a free loopback port until ctx ends or Close; with tls set, HTTPS (and a
// client certificate is required when tls.CA is set).
func (s *Server) Start(ctx context.Context, tls tlsconfig.Files) error {
	tc, err := tls.Server()
	if err != nil {
		return err
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	s.tls, s.lis, s.done = tls, lis, make(chan struct{})
	s.http = &http.Server{Handler: s, TLSConfig: tc, ReadHeaderTimeout: 10 * time.Second,
		BaseContext: func(net.Listener) context.Context { return ctx }}
	scheme := "http"
	if tc != nil {
		scheme = "https"
	}
	s.url = scheme + "://" + lis.Addr().String()
	go func() {
		defer close(s.done)
		if tc != nil {
			_ = s.http.ServeTLS(lis, "", "")
		} else {
			_ = s.http.Serve(lis)
		}
	}()
	context.AfterFunc(ctx, func() { _ = s.Close() })
	return nil
}

// Close stops serving and ends every watch.
func (s *Server) Close() error {
	if s.http == nil {
		return nil
	}
	err := s.http.Close()
	<-s.done
	return err
}

// URL is the server's base URL.
func (s *Server) URL() string { return s.url }

// WriteKubeconfig writes a kubeconfig for the server into dir and returns its path; with TLS,
// it names the CA and, when the server requires one, the client certificate in client.
func (s *Server) WriteKubeconfig(dir string, client tlsconfig.Files) (string, error) {
	cluster := map[string]any{"server": s.url}
	user := map[string]any{}
	if s.tls.Enabled() {
		cluster["certificate-authority"] = client.CA
		if client.Cert != "" {
			user["client-certificate"] = client.Cert
			user["client-key"] = client.Key
		}
	}
	cfg := map[string]any{
		"apiVersion":      "v1",
		"kind":            "Config",
		"clusters":        []any{map[string]any{"name": "kubetest", "cluster": cluster}},
		"users":           []any{map[string]any{"name": "kubetest", "user": user}},
		"contexts":        []any{map[string]any{"name": "kubetest", "context": map[string]any{"cluster": "kubetest", "user": "kubetest", "namespace": "default"}}},
		"current-context": "kubetest",
	}
	b, err := json.MarshalIndent(cfg, "", "  ") // JSON is YAML
	if err != nil {
		return "", err
	}
	path := filepath.Join(dir, "kubeconfig")
	return path, os.WriteFile(path, b, 0o600)
}

// SetPod adds or replaces a Pod.
func (s *Server) SetPod(p Pod) { s.put(podObject(p)) }

// DeletePod removes a Pod; it says whether there was one.
func (s *Server) DeletePod(namespace, name string) bool { return s.remove(podKind, namespace, name) }

// SetInferencePool adds or replaces an InferencePool.
func (s *Server) SetInferencePool(p InferencePool) { s.put(poolObject(p)) }

// DeleteInferencePool removes an InferencePool; it says whether there was one.
func (s *Server) DeleteInferencePool(namespace, name string) bool {
	return s.remove(poolKind, namespace, name)
}

// Forbid answers every request for resource ("pods" or "inferencepools") with 403 Forbidden,
// as the API server does for a service account whose RBAC lacks the verb, until Allow.
func (s *Server) Forbid(resource string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.denied == nil {
		s.denied = map[string]bool{}
	}
	s.denied[resource] = true
}

// Allow lifts Forbid.
func (s *Server) Allow(resource string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.denied, resource)
}

func key(k kind, namespace, name string) string { return k.resource + "/" + namespace + "/" + name }

func (s *Server) put(o *object) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.rv++
	o.rv = s.rv
	k := key(o.kind, o.namespace, o.name)
	typ := "ADDED"
	if old, ok := s.objects[k]; ok {
		typ, o.uid = "MODIFIED", old.uid
	} else {
		o.uid = fmt.Sprintf("00000000-0000-4000-8000-%012d", s.rv)
	}
	s.objects[k] = o
	s.record(event{typ, o})
}

func (s *Server) remove(k kind, namespace, name string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	o, ok := s.objects[key(k, namespace, name)]
	if !ok {
		return false
	}
	delete(s.objects, key(k, namespace, name))
	s.rv++
	gone := *o
	gone.rv = s.rv
	s.record(event{"DELETED", &gone})
	return true
}

// record appends e and wakes the watches; s.mu is held.
func (s *Server) record(e event) {
	s.log = append(s.log, e)
	close(s.changed)
	s.changed = make(chan struct{})
}

// ServeHTTP answers the API: discovery documents, then /api/v1/... and /apis/GROUP/VERSION/...
// reads. Everything else is 404, and every write 405, as Status objects.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet {
		writeStatus(w, http.StatusMethodNotAllowed, "MethodNotAllowed", "this API server is read-only")
		return
	}
	path := strings.TrimSuffix(r.URL.Path, "/")
	if doc, ok := discovery(path, r.Host); ok {
		writeJSON(w, http.StatusOK, doc)
		return
	}
	k, namespace, name, ok := route(path)
	if !ok {
		writeStatus(w, http.StatusNotFound, "NotFound", fmt.Sprintf("the server could not find the requested resource (get %s)", path))
		return
	}
	s.mu.Lock()
	denied := s.denied[k.resource]
	s.mu.Unlock()
	if denied {
		verb := "list"
		if name != "" {
			verb = "get"
		} else if w1 := r.URL.Query().Get("watch"); w1 == "true" || w1 == "1" {
			verb = "watch"
		}
		full := k.resource
		if k.group != "" {
			full += "." + k.group
		}
		writeStatus(w, http.StatusForbidden, "Forbidden", fmt.Sprintf(
			"%s is forbidden: User \"system:anonymous\" cannot %s resource %q in API group %q in the namespace %q",
			full, verb, k.resource, k.group, namespace))
		return
	}
	q := r.URL.Query()
	labels, err := parseLabelSelector(q.Get("labelSelector"))
	if err == nil {
		var fields map[string]string
		if fields, err = parseFieldSelector(q.Get("fieldSelector")); err == nil {
			if name != "" {
				s.get(w, k, namespace, name)
			} else if w1 := q.Get("watch"); w1 == "true" || w1 == "1" {
				s.watch(r.Context(), w, k, namespace, labels, fields, q)
			} else {
				s.list(w, k, namespace, labels, fields)
			}
			return
		}
	}
	writeStatus(w, http.StatusBadRequest, "BadRequest", err.Error())
}

// route splits a resource path: /api/v1[/namespaces/NS]/pods[/NAME] or the same under
// /apis/GROUP/VERSION.
func route(path string) (k kind, namespace, name string, ok bool) {
	var rest string
	switch {
	case strings.HasPrefix(path, "/api/v1/"):
		k, rest = podKind, strings.TrimPrefix(path, "/api/v1/")
	case strings.HasPrefix(path, "/apis/"+poolGroup+"/"+poolVersion+"/"):
		k, rest = poolKind, strings.TrimPrefix(path, "/apis/"+poolGroup+"/"+poolVersion+"/")
	default:
		return kind{}, "", "", false
	}
	parts := strings.Split(rest, "/")
	if len(parts) >= 2 && parts[0] == "namespaces" {
		namespace, parts = parts[1], parts[2:]
	}
	if len(parts) == 0 || parts[0] != k.resource || len(parts) > 2 {
		return kind{}, "", "", false
	}
	if len(parts) == 2 {
		if namespace == "" {
			return kind{}, "", "", false
		}
		name = parts[1]
	}
	return k, namespace, name, true
}

func (s *Server) get(w http.ResponseWriter, k kind, namespace, name string) {
	s.mu.Lock()
	o, ok := s.objects[key(k, namespace, name)]
	s.mu.Unlock()
	if !ok {
		writeStatus(w, http.StatusNotFound, "NotFound", fmt.Sprintf("%s %q not found", k.resource, name))
		return
	}
	writeJSON(w, http.StatusOK, o)
}

// selected returns the objects of k in namespace ("" for all) that pass the selectors, in key
// order, and the current resource version; s.mu is held.
func (s *Server) selected(k kind, namespace string, labels []requirement, fields map[string]string) []*object {
	var out []*object
	for _, key := range sortedKeys(s.objects) {
		o := s.objects[key]
		if o.kind == k && (namespace == "" || o.namespace == namespace) && o.matches(labels, fields) {
			out = append(out, o)
		}
	}
	return out
}

func (s *Server) list(w http.ResponseWriter, k kind, namespace string, labels []requirement, fields map[string]string) {
	s.mu.Lock()
	items, rv := s.selected(k, namespace, labels, fields), s.rv
	s.mu.Unlock()
	if items == nil {
		items = []*object{}
	}
	writeJSON(w, http.StatusOK, map[string]any{
		"apiVersion": k.apiVersion(),
		"kind":       k.listKind,
		"metadata":   map[string]string{"resourceVersion": strconv.FormatUint(rv, 10)},
		"items":      items,
	})
}

// watch streams the changes after ?resourceVersion= (or, with sendInitialEvents=true, every
// current object as ADDED and then a bookmark) until the client leaves, the server closes, or
// ?timeoutSeconds= passes.
func (s *Server) watch(ctx context.Context, w http.ResponseWriter, k kind, namespace string, labels []requirement, fields map[string]string, q map[string][]string) {
	get := func(name string) string {
		if v := q[name]; len(v) > 0 {
			return v[0]
		}
		return ""
	}
	from := uint64(0)
	if v := get("resourceVersion"); v != "" && v != "0" {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			writeStatus(w, http.StatusBadRequest, "BadRequest", fmt.Sprintf("resourceVersion %q is not a number", v))
			return
		}
		from = n
	}
	if t := get("timeoutSeconds"); t != "" {
		n, err := strconv.Atoi(t)
		if err != nil || n < 0 {
			writeStatus(w, http.StatusBadRequest, "BadRequest", fmt.Sprintf("timeoutSeconds %q is not a count of seconds", t))
			return
		}
		if n > 0 {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, time.Duration(n)*time.Second)
			defer cancel()
		}
	}
	s.mu.Lock()
	if from > s.rv {
		s.mu.Unlock()
		writeStatus(w, http.StatusGatewayTimeout, "Timeout", fmt.Sprintf("Too large resource version: %d, current: %d", from, s.rv))
		return
	}
	var initial []*object
	if get("sendInitialEvents") == "true" {
		initial, from = s.selected(k, namespace, labels, fields), s.rv
	}
	s.mu.Unlock()

	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	flusher, _ := w.(http.Flusher)
	if flusher != nil {
		flusher.Flush() // the client waits for the headers before it reads events
	}
	enc := json.NewEncoder(w)
	send := func(typ string, obj any) bool {
		if err := enc.Encode(map[string]any{"type": typ, "object": obj}); err != nil {
			return false
		}
		if flusher != nil {
			flusher.Flush()
		}
		return true
	}
	if get("sendInitialEvents") == "true" {
		for _, o := range initial {
			if !send("ADDED", o) {
				return
			}
		}
		bookmark := map[string]any{"apiVersion": k.apiVersion(), "kind": k.kind, "metadata": objectMeta{
			ResourceVersion: strconv.FormatUint(from, 10), Annotations: map[string]string{annotationInitialEventsEnd: "true"}}}
		if !send("BOOKMARK", bookmark) {
			return
		}
	}
	for {
		s.mu.Lock()
		var pending []event
		for _, e := range s.log {
			if e.obj.rv > from && e.obj.kind == k && (namespace == "" || e.obj.namespace == namespace) && e.obj.matches(labels, fields) {
				pending = append(pending, e)
			}
		}
		if len(s.log) > 0 {
			from = max(from, s.log[len(s.log)-1].obj.rv)
		}
		changed := s.changed
		s.mu.Unlock()
		for _, e := range pending {
			if !send(e.typ, e.obj) {
				return
			}
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return
		}
	}
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		writeStatus(w, http.StatusInternalServerError, "InternalError", err.Error())
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_, _ = w.Write(b)
}

// writeStatus answers a failure as a metav1.Status, as the API server does.
func writeStatus(w http.ResponseWriter, code int, reason, msg string) {
	b, _ := json.Marshal(map[string]any{
		"apiVersion": "v1", "kind": "Status", "metadata": map[string]any{},
		"status": "Failure", "message": msg, "reason": reason, "code": code,
	})
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_, _ = w.Write(b)
}
