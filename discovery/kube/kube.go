// Package kube discovers engines the way the Gateway API Inference Extension's Endpoint Picker
// does: the ready Pods that a named InferencePool selects, one endpoint per Pod and target port,
// followed with client-go informers.
package kube

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"slices"
	"strings"
	"sync"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/kvgate/kvgate/discovery"
)

// Config names the InferencePool to follow and how its Pods become endpoints.
type Config struct {
	// Kubeconfig is a kubeconfig file; "" uses the in-cluster service account, and outside a
	// cluster $KUBECONFIG or ~/.kube/config.
	Kubeconfig string
	// PoolName is the InferencePool's name (required).
	PoolName string
	// PoolNamespace is its namespace (and its Pods'); "" is the router's own namespace in a
	// cluster, else the kubeconfig context's, else "default".
	PoolNamespace string
	// PoolGroup is the pool's API group: DefaultPoolGroup (v1) when "", or AlphaPoolGroup
	// (v1alpha2).
	PoolGroup string
	// RoleLabel is the Pod label naming its role (prefill, decode, both); DefaultRoleLabel
	// when "". A Pod without it is aggregated.
	RoleLabel string
	// ModelLabel is the Pod label naming its model; DefaultModelLabel when "".
	ModelLabel string
	// Models are served by every Pod that names none (AnnotationModels, ModelLabel).
	Models []string
	// BlockSize is the engines' KV block size in tokens unless a Pod says (0: the router's
	// model default).
	BlockSize int
	// KVEventsPort is the port of every engine's ZMQ KV-event publisher on its Pod IP unless
	// a Pod says (AnnotationKVEventsPort); 0 = none.
	KVEventsPort int
}

// Source follows one InferencePool and the Pods it selects. It implements discovery.Source.
type Source struct {
	cfg    Config
	client dynamic.Interface
	poolR  schema.GroupVersionResource
	log    *slog.Logger

	syncOnce sync.Once
	synced   chan struct{}
}

var _ discovery.Source = (*Source)(nil)

// New checks cfg and builds the API client; nothing is contacted until Watch.
func New(cfg Config, log *slog.Logger) (*Source, error) {
	if cfg.PoolName == "" {
		return nil, errors.New("kubernetes: the InferencePool's name is required (--pool-name)")
	}
	if cfg.PoolGroup == "" {
		cfg.PoolGroup = DefaultPoolGroup
	}
	version := "v1"
	switch cfg.PoolGroup {
	case DefaultPoolGroup:
	case AlphaPoolGroup:
		version = "v1alpha2"
	default:
		return nil, fmt.Errorf("kubernetes: pool group %q: want %s (v1) or %s (v1alpha2)", cfg.PoolGroup, DefaultPoolGroup, AlphaPoolGroup)
	}
	if cfg.RoleLabel == "" {
		cfg.RoleLabel = DefaultRoleLabel
	}
	if cfg.ModelLabel == "" {
		cfg.ModelLabel = DefaultModelLabel
	}
	if cfg.KVEventsPort < 0 || cfg.KVEventsPort > 65535 {
		return nil, fmt.Errorf("kubernetes: KV-events port %d out of range", cfg.KVEventsPort)
	}
	rc, ns, err := restConfig(cfg.Kubeconfig)
	if err != nil {
		return nil, err
	}
	if cfg.PoolNamespace == "" {
		cfg.PoolNamespace = ns
	}
	rc.UserAgent = "kvgate-router"
	client, err := dynamic.NewForConfig(rc)
	if err != nil {
		return nil, fmt.Errorf("kubernetes: %w", err)
	}
	return &Source{
		cfg: cfg, client: client, log: log, synced: make(chan struct{}),
		poolR: schema.GroupVersionResource{Group: cfg.PoolGroup, Version: version, Resource: "inferencepools"},
	}, nil
}

// restConfig loads the client configuration and the namespace it implies.
func restConfig(kubeconfig string) (*rest.Config, string, error) {
	if kubeconfig == "" {
		if rc, err := rest.InClusterConfig(); err == nil {
			ns := "default"
			if b, err := os.ReadFile("/var/run/secrets/kubernetes.io/serviceaccount/namespace"); err == nil && len(b) > 0 {
				ns = strings.TrimSpace(string(b))
			}
			return rc, ns, nil
		} else if !errors.Is(err, rest.ErrNotInCluster) {
			return nil, "", fmt.Errorf("kubernetes: in-cluster config: %w", err)
		}
	}
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	rules.ExplicitPath = kubeconfig
	cc := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{})
	rc, err := cc.ClientConfig()
	if err != nil {
		return nil, "", fmt.Errorf("kubernetes: not in a cluster and no usable kubeconfig (--kubeconfig, $KUBECONFIG, ~/.kube/config): %w", err)
	}
	ns, _, err := cc.Namespace()
	if err != nil || ns == "" {
		ns = "default"
	}
	return rc, ns, nil
}

// Namespace is the namespace followed.
func (s *Source) Namespace() string { return s.cfg.PoolNamespace }

// Synced is closed once the first Watch has listed the pool and the Pods (the informers'
// initial sync): until then the router has not seen its endpoints and is not ready.
func (s *Source) Synced() <-chan struct{} { return s.synced }

// Watch starts informers on the pool and on the Pods of its namespace, sends the endpoint set
// once both have synced, then again on every change, until ctx ends. Pods the pool's
// selector does not pick, Pods being deleted and Pods without an IP are left out; selected
// Pods that are not Ready are sent with Healthy false. A missing pool is an empty set (and a
// warning) until it appears.
func (s *Source) Watch(ctx context.Context) <-chan []discovery.Endpoint {
	ctx, cancel := context.WithCancel(ctx)
	poolInf := s.informer(s.poolR, fields.OneTermEqualSelector("metadata.name", s.cfg.PoolName).String())
	podInf := s.informer(schema.GroupVersionResource{Version: "v1", Resource: "pods"}, "")

	dirty := make(chan struct{}, 1)
	mark := func() {
		select {
		case dirty <- struct{}{}:
		default:
		}
	}
	handler := cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { mark() },
		UpdateFunc: func(_, _ any) { mark() },
		DeleteFunc: func(any) { mark() },
	}
	var wg sync.WaitGroup
	for _, inf := range []struct {
		inf      cache.SharedIndexInformer
		resource string
	}{{poolInf, s.poolR.Resource + "." + s.poolR.Group}, {podInf, "pods"}} {
		if _, err := inf.inf.AddEventHandler(handler); err != nil {
			s.log.Error("kubernetes: informer handler", "resource", inf.resource, "err", err)
		}
		_ = inf.inf.SetWatchErrorHandlerWithContext(s.watchError(inf.resource))
		wg.Go(func() { inf.inf.RunWithContext(ctx) })
	}

	out := make(chan []discovery.Endpoint)
	go func() {
		defer close(out)
		defer wg.Wait()
		defer cancel()
		if !cache.WaitForCacheSync(ctx.Done(), poolInf.HasSynced, podInf.HasSynced) {
			return
		}
		s.log.Info("kubernetes: informers synced", "pool", s.cfg.PoolNamespace+"/"+s.cfg.PoolName, "group", s.poolR.Group)
		s.syncOnce.Do(func() { close(s.synced) })
		s.follow(ctx, poolInf.GetStore(), podInf.GetStore(), dirty, out)
	}()
	return out
}

// informer lists and watches one resource in the pool's namespace. (client-go's
// dynamicinformer does the same but drags in every typed informer of client-go.)
func (s *Source) informer(gvr schema.GroupVersionResource, fieldSelector string) cache.SharedIndexInformer {
	r := s.client.Resource(gvr).Namespace(s.cfg.PoolNamespace)
	tweak := func(o metav1.ListOptions) metav1.ListOptions {
		o.FieldSelector = fieldSelector
		return o
	}
	lw := &cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			return r.List(ctx, tweak(o))
		},
		WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			return r.Watch(ctx, tweak(o))
		},
	}
	return cache.NewSharedIndexInformerWithOptions(cache.ToListWatcherWithWatchListSemantics(lw, s.client),
		&unstructured.Unstructured{}, cache.SharedIndexInformerOptions{ObjectDescription: gvr.String()})
}

// follow recomputes the set whenever dirty fires and offers the newest one on out, until ctx
// ends: a slow reader skips sets, never the latest.
func (s *Source) follow(ctx context.Context, pools, pods cache.Store, dirty <-chan struct{}, out chan<- []discovery.Endpoint) {
	var (
		last     []discovery.Endpoint
		pending  []discovery.Endpoint
		have     bool // pending waits to be taken
		computed bool
		missing  bool
		warned   = map[string]bool{}
	)
	warn := func(key, msg string, args ...any) {
		if !warned[key] {
			warned[key] = true
			s.log.Warn(msg, args...)
		}
	}
	name := s.cfg.PoolNamespace + "/" + s.cfg.PoolName
	recompute := func() {
		var p *pool
		if objs := pools.List(); len(objs) > 0 {
			missing = false
			parsed, err := parsePool(objs[0], s.poolR.Version)
			if err != nil {
				warn("pool:"+err.Error(), "kubernetes: InferencePool unusable; no endpoints until it is fixed", "pool", name, "err", err)
			} else {
				p = &parsed
			}
		} else if !missing {
			missing = true
			s.log.Warn("kubernetes: InferencePool not found; no endpoints until it exists (watching)",
				"pool", name, "resource", s.poolR.Resource+"."+s.poolR.Group)
		}
		var eps []discovery.Endpoint
		if p != nil {
			eps = endpoints(s.cfg, *p, pods.List(), warn)
		}
		if computed && slices.EqualFunc(last, eps, discovery.Endpoint.Equal) {
			return
		}
		last, computed = eps, true
		pending, have = cloneSet(eps), true
	}
	recompute()
	for {
		var send chan<- []discovery.Endpoint
		if have {
			send = out
		}
		select {
		case <-ctx.Done():
			return
		case <-dirty:
			recompute()
		case send <- pending:
			pending, have = nil, false
		}
	}
}

func cloneSet(eps []discovery.Endpoint) []discovery.Endpoint {
	out := make([]discovery.Endpoint, len(eps))
	for i, e := range eps {
		e.Models = slices.Clone(e.Models)
		e.Meta = maps.Clone(e.Meta)
		out[i] = e
	}
	return out
}

// watchError logs a failed list or watch: a Forbidden says which verb on which resource the
// router's service account lacks. The informer retries with backoff either way.
func (s *Source) watchError(resource string) cache.WatchErrorHandlerWithContext {
	return func(ctx context.Context, _ *cache.Reflector, err error) {
		switch {
		case ctx.Err() != nil:
		case apierrors.IsForbidden(err):
			s.log.Error("kubernetes: forbidden by RBAC: the router's service account needs get, list and watch on "+resource+
				" in namespace "+s.cfg.PoolNamespace+" (retrying)", "resource", resource, "namespace", s.cfg.PoolNamespace, "err", err)
		case apierrors.IsNotFound(err):
			s.log.Error("kubernetes: the API server does not serve "+resource+" (is the InferencePool CRD installed, and --pool-group right?); retrying",
				"resource", resource, "err", err)
		default:
			s.log.Warn("kubernetes: list/watch failed; retrying", "resource", resource, "err", err)
		}
	}
}
