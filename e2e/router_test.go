package e2e

import (
	"context"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/openai/openai-go/v3/option"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/kvgate/kvgate/extproc/extproctest"
	"github.com/kvgate/kvgate/porttest"
)

// TestRouterCommand runs the production pair: `kvgate sim` engines as their own processes and
// `kvgate router` in front of them with ext_proc, the embedded gateway and metrics.
func TestRouterCommand(t *testing.T) {
	var args []string
	var engines []string
	for range 2 {
		port, kv := porttest.Free(t), porttest.Free(t)
		sim := startProc(t, kvgateBin, "sim", "--host", "127.0.0.1", "--port", fmt.Sprint(port),
			"--kv-events", fmt.Sprintf("tcp://127.0.0.1:%d", kv), "--kv-events-replay", "", "--speed", "20")
		addr := fmt.Sprintf("127.0.0.1:%d", port)
		waitHTTP(t, sim, "http://"+addr+"/health", 30*time.Second)
		engines = append(engines, addr)
		args = append(args, "--endpoint", "http://"+addr, "--kv-events", fmt.Sprintf("tcp://127.0.0.1:%d", kv))
	}
	grpcAddr := fmt.Sprintf("127.0.0.1:%d", porttest.Free(t))
	httpAddr := fmt.Sprintf("127.0.0.1:%d", porttest.Free(t))
	metricsAddr := fmt.Sprintf("127.0.0.1:%d", porttest.Free(t))
	// No in-flight credit: only the engines' KV events can send the repeat back.
	rt := startProc(t, kvgateBin, append([]string{"router", "--grpc", grpcAddr, "--http", httpAddr, "--metrics-addr", metricsAddr, "--pending-ttl=-1s"}, args...)...)
	base := "http://" + httpAddr
	waitHTTP(t, rt, base+"/health", 30*time.Second)
	waitHTTP(t, rt, "http://"+metricsAddr+"/metrics", 10*time.Second)

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c, err := extproctest.Dial(grpcAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for _, svc := range []string{"liveness", "readiness", "envoy.service.ext_proc.v3.ExternalProcessor"} {
		r, err := healthpb.NewHealthClient(c.Conn()).Check(ctx, &healthpb.HealthCheckRequest{Service: svc})
		if err != nil || r.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			t.Errorf("health %s: %v %v", svc, r.GetStatus(), err)
		}
	}

	prompt := longPrompt("router", 200)
	var served []string
	oc := client(base)
	for range 2 {
		var resp *http.Response
		cc, err := oc.Chat.Completions.New(ctx, userChat(prompt, 4), option.WithResponseInto(&resp))
		if err != nil {
			t.Fatal(err)
		}
		served = append(served, resp.Header.Get("x-kvgate-endpoint"))
		if len(cc.Choices) == 0 {
			t.Error("no choices")
		}
		waitIndexed(t, "http://"+metricsAddr, served[len(served)-1], float64(cc.Usage.PromptTokens/16-1))
	}
	if served[0] != served[1] || (served[0] != engines[0] && served[0] != engines[1]) {
		t.Errorf("served by %v; engines %v", served, engines)
	}
	if got := metric(t, "http://"+metricsAddr, "kvgate_router_requests_total"); got < 2 {
		t.Errorf("router requests metric %v on --metrics-addr", got)
	}
}
