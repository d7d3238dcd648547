package kube_test

import (
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kvgate/kvgate/discovery"
	"github.com/kvgate/kvgate/discovery/kube"
	"github.com/kvgate/kvgate/kubetest"
	"github.com/kvgate/kvgate/kubetest/apiserver"
	"github.com/kvgate/kvgate/polltest"
)

var _ cluster = (*apiserver.Server)(nil)

// TestKubeAPIServer runs the suite against a real kube-apiserver (and etcd) built from pinned
// versions by scripts/peers.sh: the InferencePool CRD of the Inference Extension, Pods whose
// status the test writes as a kubelet would, watch-list and RBAC as a cluster serves them.
func TestKubeAPIServer(t *testing.T) {
	s := apiserver.Start(t)

	t.Run("discovery", func(t *testing.T) {
		testDiscovery(t, s, s.Kubeconfig(t, s.AdminToken))
	})

	// The v1alpha2 group's CRD is not installed: the API answers 404 and the log says which
	// CRD or flag to fix; the source stays unsynced.
	t.Run("a pool group the API does not serve", func(t *testing.T) {
		log := &syncBuffer{}
		w := watch(t, kube.Config{Kubeconfig: s.Kubeconfig(t, s.AdminToken), PoolName: "pool", PoolNamespace: "llm",
			PoolGroup: kube.AlphaPoolGroup, Models: []string{"m"}}, slog.New(slog.NewTextHandler(log, nil)))
		want := "the API server does not serve inferencepools." + kube.AlphaPoolGroup + " (is the InferencePool CRD installed, and --pool-group right?)"
		if !polltest.Wait(20*time.Second, func() bool { return strings.Contains(log.String(), want) }) {
			t.Fatalf("no %q logged:\n%s", want, log)
		}
		select {
		case <-w.src.Synced():
			t.Fatal("synced without the pool's resource")
		default:
		}
	})

	// The router's service account with nothing granted cannot list, logs what it needs and
	// stays unsynced; with deploy/kubernetes/epp's Role and RoleBinding applied it syncs and
	// follows the pool.
	t.Run("RBAC of deploy/kubernetes/epp", func(t *testing.T) {
		const ns = "rbac"
		token := s.ServiceAccountToken(t, ns, "kvgate-epp")
		s.SetPod(t, kubetest.Pod{Namespace: ns, Name: "e", IP: "127.0.0.21", Labels: map[string]string{"app": "engine"}})
		s.SetInferencePool(t, kubetest.InferencePool{Namespace: ns, Name: "pool", Selector: map[string]string{"app": "engine"},
			TargetPorts: []int{8000}, EPPName: "epp", EPPPort: 9002})
		log := &syncBuffer{}
		w := watch(t, kube.Config{Kubeconfig: s.Kubeconfig(t, token), PoolName: "pool", PoolNamespace: ns, Models: []string{"m"}},
			slog.New(slog.NewTextHandler(log, nil)))
		for _, r := range []string{"pods", "inferencepools.inference.networking.k8s.io"} {
			want := "forbidden by RBAC: the router's service account needs get, list and watch on " + r + " in namespace " + ns
			if !polltest.Wait(20*time.Second, func() bool { return strings.Contains(log.String(), want) }) {
				t.Fatalf("no %q logged:\n%s", want, log)
			}
		}
		if l := log.String(); !strings.Contains(l, `User \"system:serviceaccount:rbac:kvgate-epp\" cannot `) {
			t.Fatalf("the log does not carry the API server's own reason:\n%s", l)
		}
		select {
		case <-w.src.Synced():
			t.Fatal("synced although nothing may be listed")
		default:
		}

		s.Apply(t, ns, filepath.Join("..", "..", "deploy", "kubernetes", "epp", "rbac.yaml"))
		select {
		case <-w.src.Synced():
		case <-time.After(60 * time.Second):
			t.Fatalf("never synced once the Role was bound:\n%s", log)
		}
		w.until(t, "e", func(eps []discovery.Endpoint) bool { return healthy(eps) == "127.0.0.21:8000" })

		// The Role must allow watching, not only listing: without watch an informer still
		// follows changes, by listing again after each refused watch (logged). Two changes
		// followed in turn need a list between them, and the refusal of the watch after it,
		// so no refusal logged from here on proves the changes came by watch.
		mark := len(log.String())
		s.SetPod(t, kubetest.Pod{Namespace: ns, Name: "e", IP: "127.0.0.21", Labels: map[string]string{"app": "engine"}, NotReady: true})
		w.until(t, "e unready", func(eps []discovery.Endpoint) bool { return len(eps) == 1 && healthy(eps) == "" })
		s.SetPod(t, kubetest.Pod{Namespace: ns, Name: "f", IP: "127.0.0.22", Labels: map[string]string{"app": "engine"}})
		w.until(t, "f", func(eps []discovery.Endpoint) bool { return healthy(eps) == "127.0.0.22:8000" })
		if l := log.String()[mark:]; strings.Contains(l, "forbidden") {
			t.Fatalf("still forbidden with the Role bound:\n%s", l)
		}
	})
}
