package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/kvgate/kvgate/porttest"
	"github.com/kvgate/kvgate/router"
	"github.com/kvgate/kvgate/tokenizer"
)

// TestGatewayRemoteEPP runs `kvgate gateway --epp` (both processing modes) in front of
// `kvgate sim` engines with `kvgate router` as its EPP, all as processes: a long prompt
// repeated returns to the engine that holds it (its KV events in the router's index, the
// in-flight credit off) with cached tokens, the router's response header comes through the
// EPP, and the router is left with no load.
func TestGatewayRemoteEPP(t *testing.T) {
	sims := startSims(t, 2, "--speed", "50")
	r := startRouter(t, sims, nil, "--pending-ttl", "-1s")
	prompt := strings.Repeat("The remote endpoint picker sees this long shared prefix again. ", 40)
	for i, mode := range []string{"FULL_DUPLEX_STREAMED", "BUFFERED"} {
		t.Run(mode, func(t *testing.T) {
			addr := fmt.Sprintf("127.0.0.1:%d", porttest.Free(t))
			args := []string{"gateway", "--epp", r.grpc, "--epp-mode", mode, "--http", addr, "--served-model", tokenizer.DefaultModel}
			for _, s := range sims {
				args = append(args, "--endpoint", "http://"+s.addr)
			}
			p := startProc(t, kvgateBin, args...)
			base := "http://" + addr
			waitHTTP(t, p, base+"/health", 30*time.Second)
			content := fmt.Sprintf("%d %s", i, prompt)
			first, _ := eppChat(t, base, content)
			waitIndexed(t, r.base, first, 10)
			second, cached := eppChat(t, base, content)
			if second != first {
				t.Errorf("the repeated prompt went to %s, first to %s", second, first)
			}
			if cached == 0 {
				t.Error("the repeat reports no cached tokens")
			}
			if l := waitNoLoad(t, r.base); l != 0 {
				t.Errorf("the router still counts load %v", l)
			}
		})
	}
}

// eppChat sends one chat and returns the engine the router named and the cached tokens.
func eppChat(t *testing.T, base, content string) (string, int) {
	t.Helper()
	body, _ := json.Marshal(map[string]any{"model": tokenizer.DefaultModel, "max_tokens": 4, "messages": []map[string]string{{"role": "user", "content": content}}})
	resp, err := http.Post(base+"/v1/chat/completions", "application/json", strings.NewReader(string(body)))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		t.Fatalf("status %d: %s", resp.StatusCode, b)
	}
	var out struct {
		Usage struct {
			PromptTokensDetails struct {
				CachedTokens int `json:"cached_tokens"`
			} `json:"prompt_tokens_details"`
		} `json:"usage"`
	}
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatalf("%v: %s", err, b)
	}
	ep := resp.Header.Get(router.HeaderEndpoint)
	if ep == "" {
		t.Fatalf("no %s header: the router's response mutation did not come through", router.HeaderEndpoint)
	}
	return ep, out.Usage.PromptTokensDetails.CachedTokens
}

// TestUpRemoteEPP runs `kvgate up` with its gateway asking its own router's ext_proc server
// over gRPC (--ext-proc X --epp X): requests are served, and the gateway counts them as
// picked by the EPP.
func TestUpRemoteEPP(t *testing.T) {
	grpcAddr := fmt.Sprintf("127.0.0.1:%d", porttest.Free(t))
	base, _ := up(t, "--engines", "2", "--sim-speed", "50", "--ext-proc", grpcAddr, "--epp", grpcAddr)
	for i := range 3 {
		if ep, _ := eppChat(t, base, fmt.Sprintf("up through the remote EPP %d", i)); ep == "" {
			t.Fatal("no serving endpoint named")
		}
	}
	if n := metric(t, base, "kvgate_gateway_epp_requests_total", `outcome="picked"`); n != 3 {
		t.Errorf("kvgate_gateway_epp_requests_total{outcome=\"picked\"} = %v, want 3", n)
	}
}
