package e2e

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/openai/openai-go/v3/option"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/kvgate/kvgate/extproc/extproctest"
	"github.com/kvgate/kvgate/kubetest"
	"github.com/kvgate/kvgate/porttest"
	"github.com/kvgate/kvgate/router"
	"github.com/kvgate/kvgate/tlsconfig/tlsconfigtest"
	"github.com/kvgate/kvgate/tokenizer"
)

// TestKubernetesDiscovery runs `kvgate router --kubernetes` as a drop-in Endpoint Picker: two
// `kvgate sim` engines on 127.0.0.2 and 127.0.0.3 are the Pods of an InferencePool in a
// kubetest API server (over mTLS), and the router follows them with informers.
//
//  1. While the API refuses the Pods (RBAC), the router is live but not ready; once allowed,
//     its informers sync and readiness turns SERVING.
//  2. Both Pods take traffic, and a repeated prompt hits the cache that the KV events (found
//     through --kv-events-port on each Pod IP) told the router about.
//  3. A Pod that goes unready stops taking traffic; a Pod deleted likewise.
//  4. A selector change moves the pool to other Pods.
func TestKubernetesDiscovery(t *testing.T) {
	f := startPoolSims(t, 2, false)
	ca := tlsconfigtest.New(t)
	kube := kubetest.New()
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	if err := kube.Start(ctx, ca.Server); err != nil {
		t.Fatal(err)
	}
	kc, err := kube.WriteKubeconfig(t.TempDir(), ca.Client)
	if err != nil {
		t.Fatal(err)
	}
	const ns, pool = "llm", "qwen"
	hostOf := func(s simProc) string { h, _, _ := strings.Cut(s.addr, ":"); return h }
	pods := map[string]kubetest.Pod{}
	for i, s := range f.sims {
		p := kubetest.Pod{Namespace: ns, Name: fmt.Sprintf("sim-%d", i), IP: hostOf(s),
			Labels: map[string]string{"app": "engine", "shard": fmt.Sprint(i)}}
		pods[p.Name] = p
		kube.SetPod(p)
	}
	kube.SetInferencePool(kubetest.InferencePool{Namespace: ns, Name: pool, Selector: map[string]string{"app": "engine"},
		TargetPorts: []int{f.port}, EPPName: "kvgate", EPPPort: 9002})
	kube.Forbid("pods")

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
	waitUntil(t, "the router to log the RBAC refusal", func() bool { return strings.Contains(rt.output(), "forbidden by RBAC") })
	if got := health("readiness"); got != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Fatalf("readiness before the informers synced: %v, want NOT_SERVING", got)
	}
	if got := health("liveness"); got != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("liveness: %v, want SERVING", got)
	}
	kube.Allow("pods")
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
	kube.SetPod(unready)
	waitUntil(t, "the router to drop the unready Pod", func() bool { return metric(t, base, router.MetricHealthy) == 1 })
	onlyOn("unready", f.sims[1].addr)
	kube.SetPod(pods["sim-0"])
	waitUntil(t, "the Pod ready again", func() bool { return metric(t, base, router.MetricHealthy) == 2 })
	kube.DeletePod(ns, "sim-0")
	waitUntil(t, "the router to drop the deleted Pod", func() bool { return metric(t, base, router.MetricHealthy) == 1 })
	onlyOn("deleted", f.sims[1].addr)
	kube.SetPod(pods["sim-0"])
	waitUntil(t, "the Pod back", func() bool { return metric(t, base, router.MetricHealthy) == 2 })

	// 4. The pool's selector now picks shard 0 only.
	kube.SetInferencePool(kubetest.InferencePool{Namespace: ns, Name: pool, Selector: map[string]string{"app": "engine", "shard": "0"},
		TargetPorts: []int{f.port}, EPPName: "kvgate", EPPPort: 9002})
	waitUntil(t, "the router to follow the selector", func() bool { return metric(t, base, router.MetricHealthy) == 1 })
	onlyOn("selector", f.sims[0].addr)
}
