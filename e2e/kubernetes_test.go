package e2e

import (
	"context"
	"fmt"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/openai/openai-go/v3/option"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/kvgate/kvgate/extproc/extproctest"
	"github.com/kvgate/kvgate/kubetest"
	"github.com/kvgate/kvgate/kubetest/apiserver"
	"github.com/kvgate/kvgate/porttest"
	"github.com/kvgate/kvgate/router"
	"github.com/kvgate/kvgate/tokenizer"
)

// TestKubernetesDiscovery runs `kvgate router --kubernetes` as a drop-in Endpoint Picker: two
// `kvgate sim` engines on 127.0.0.2 and 127.0.0.3 are the Pods of an InferencePool in a real
// kube-apiserver (kubetest/apiserver), and the router follows them with informers, as the
// service account of deploy/kubernetes/epp with a token the API server issued.
//
//  1. While RBAC refuses the account (no Role bound), the router is live but not ready; once
//     deploy/kubernetes/epp/rbac.yaml is applied, its informers sync and readiness turns
//     SERVING.
//  2. Both Pods take traffic, and a repeated prompt hits the cache that the KV events (found
//     through --kv-events-port on each Pod IP) told the router about.
//  3. A Pod that goes unready stops taking traffic; a Pod deleted likewise.
//  4. A selector change moves the pool to other Pods.
func TestKubernetesDiscovery(t *testing.T) {
	f := startPoolSims(t, 2, false)
	kube := apiserver.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	const ns, pool = "llm", "qwen"
	kc := kube.Kubeconfig(t, kube.ServiceAccountToken(t, ns, "kvgate-epp"))
	hostOf := func(s simProc) string { h, _, _ := strings.Cut(s.addr, ":"); return h }
	pods := map[string]kubetest.Pod{}
	for i, s := range f.sims {
		p := kubetest.Pod{Namespace: ns, Name: fmt.Sprintf("sim-%d", i), IP: hostOf(s),
			Labels: map[string]string{"app": "engine", "shard": fmt.Sprint(i)}}
		pods[p.Name] = p
		kube.SetPod(t, p)
	}
	kube.SetInferencePool(t, kubetest.InferencePool{Namespace: ns, Name: pool, Selector: map[string]string{"app": "engine"},
		TargetPorts: []int{f.port}, EPPName: "kvgate", EPPPort: 9002})

	_, kvPort, _ := strings.Cut(strings.TrimPrefix(f.sims[0].kv, "tcp://"), ":")
	grpcAddr := fmt.Sprintf("127.0.0.1:%d", porttest.Free(t))
	httpAddr := fmt.Sprintf("127.0.0.1:%d", porttest.Free(t))
	rt := startProc(t, kvgateBin, "router", "--kubernetes", "--kubeconfig", kc, "--pool-name", pool, "--pool-namespace", ns,
		"--kv-events-port", kvPort, "--model", tokenizer.DefaultModel, "--grpc", grpcAddr, "--http", httpAddr, "--pending-ttl=-1s")
	base := "http://" + httpAddr
	waitHTTP(t, rt, base+"/health", 30*time.Second)

	// 1. Readiness follows the informers' sync.
	hc, err := extproctest.Dial(grpcAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer hc.Close()
	health := func(svc string) healthpb.HealthCheckResponse_ServingStatus {
		r, err := healthpb.NewHealthClient(hc.Conn()).Check(ctx, &healthpb.HealthCheckRequest{Service: svc})
		if err != nil {
			return healthpb.HealthCheckResponse_UNKNOWN
		}
		return r.GetStatus()
	}
	for _, r := range []string{"pods", "inferencepools.inference.networking.k8s.io"} {
		want := "forbidden by RBAC: the router's service account needs get, list and watch on " + r + " in namespace " + ns
		waitUntil(t, "the router to log the RBAC refusal of "+r, func() bool { return strings.Contains(rt.output(), want) })
	}
	if got := health("readiness"); got != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Fatalf("readiness before the informers synced: %v, want NOT_SERVING", got)
	}
	if got := health("liveness"); got != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("liveness: %v, want SERVING", got)
	}
	kube.Apply(t, ns, filepath.Join("..", "deploy", "kubernetes", "epp", "rbac.yaml"))
	waitUntil(t, "readiness once the informers synced", func() bool {
		return health("readiness") == healthpb.HealthCheckResponse_SERVING &&
			health("envoy.service.ext_proc.v3.ExternalProcessor") == healthpb.HealthCheckResponse_SERVING
	})
	waitUntil(t, "the router to route to both Pods", func() bool { return metric(t, base, router.MetricHealthy) == 2 })

	// 2. Traffic reaches both Pods, and the KV events of each reach the router.
	c := client(base)
	served := map[string]bool{}
	for i := 0; len(served) < 2; i++ {
		if i == 30 {
			t.Fatalf("30 fresh prompts all went to %v", served)
		}
		served[chatOnce(ctx, t, c, longPrompt(fmt.Sprint("kube-", i), 200)).endpoint] = true
	}
	for addr := range served {
		if addr != f.sims[0].addr && addr != f.sims[1].addr {
			t.Fatalf("served by %s, not a Pod of the pool", addr)
		}
	}
	prompt := longPrompt("kube-repeat", 200)
	first := chatOnce(ctx, t, c, prompt)
	name := ns + "/sim-0" // endpoints are named namespace/pod
	if first.endpoint == f.sims[1].addr {
		name = ns + "/sim-1"
	}
	waitUntil(t, "the KV events of "+name+" to reach the router", func() bool { return cachedBlocks(t, base, name) > 0 })
	if again := chatOnce(ctx, t, c, prompt); again.endpoint != first.endpoint || again.cachedBlocks == 0 {
		t.Fatalf("repeat served by %s with %d cached blocks; want %s with a hit", again.endpoint, again.cachedBlocks, first.endpoint)
	}

	// onlyOn sends fresh prompts and fails unless every one is served by want.
	onlyOn := func(step, want string) {
		t.Helper()
		for i := range 6 {
			var resp *http.Response
			_, err := c.Chat.Completions.New(ctx, userChat(longPrompt(fmt.Sprint(step, i), 50), 2), option.WithResponseInto(&resp))
			if err != nil {
				t.Fatalf("%s: %v", step, err)
			}
			if got := resp.Header.Get(router.HeaderEndpoint); got != want {
				t.Fatalf("%s: request %d served by %s, want only %s", step, i, got, want)
			}
		}
	}

	// 3. An unready Pod leaves the rotation; a deleted one too.
	unready := pods["sim-0"]
	unready.NotReady = true
	kube.SetPod(t, unready)
	waitUntil(t, "the router to drop the unready Pod", func() bool { return metric(t, base, router.MetricHealthy) == 1 })
	onlyOn("unready", f.sims[1].addr)
	kube.SetPod(t, pods["sim-0"])
	waitUntil(t, "the Pod ready again", func() bool { return metric(t, base, router.MetricHealthy) == 2 })
	if !kube.DeletePod(t, ns, "sim-0") {
		t.Fatal("sim-0 was not in the API")
	}
	waitUntil(t, "the router to drop the deleted Pod", func() bool { return metric(t, base, router.MetricHealthy) == 1 })
	onlyOn("deleted", f.sims[1].addr)
	kube.SetPod(t, pods["sim-0"])
	waitUntil(t, "the Pod back", func() bool { return metric(t, base, router.MetricHealthy) == 2 })

	// 4. The pool's selector now picks shard 0 only.
	kube.SetInferencePool(t, kubetest.InferencePool{Namespace: ns, Name: pool, Selector: map[string]string{"app": "engine", "shard": "0"},
		TargetPorts: []int{f.port}, EPPName: "kvgate", EPPPort: 9002})
	waitUntil(t, "the router to follow the selector", func() bool { return metric(t, base, router.MetricHealthy) == 1 })
	onlyOn("selector", f.sims[0].addr)
}
