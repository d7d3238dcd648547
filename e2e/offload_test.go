package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"testing"
	"time"

	"github.com/kvgate/kvgate/porttest"
)

// Metric and header names the offloading tests read.
const (
	simTTFTSum         = "vllm:time_to_first_token_seconds_sum"
	simP2PPulledBytes  = "kvgate_sim_kv_p2p_pulled_bytes_total"
	simP2PServedBytes  = "kvgate_sim_kv_p2p_served_bytes_total"
	simP2PServedBlocks = "kvgate_sim_kv_p2p_served_blocks_total"
	simP2PFailures     = "kvgate_sim_kv_p2p_failures_total"
	hdrKVCacheSource   = "x-kv-cache-source-host-port"
	hdrCachedBlocks    = "x-kvgate-cached-blocks"
	blockBytesQwen3    = 2.25 * (1 << 20) // one 16-token block of the default Qwen3-8B shape
	offloadWords       = 200              // about 2,400 tokens: 150 blocks
)

// chatRaw posts one chat completion to base and returns the response headers and usage.
func chatRaw(t *testing.T, base string, h http.Header, content string) (http.Header, int, int) {
	t.Helper()
	b, _ := json.Marshal(map[string]any{"model": model, "max_tokens": 4,
		"messages": []map[string]string{{"role": "user", "content": content}}})
	req, err := http.NewRequest(http.MethodPost, base+"/v1/chat/completions", bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	for k, vs := range h {
		req.Header[k] = vs
	}
	req.Header.Set("Content-Type", "application/json")
	c := &http.Client{Timeout: 60 * time.Second}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d (%v): %s", resp.StatusCode, err, out)
	}
	var r struct {
		Usage struct {
			PromptTokens int `json:"prompt_tokens"`
			Details      struct {
				Cached int `json:"cached_tokens"`
			} `json:"prompt_tokens_details"`
		} `json:"usage"`
	}
	if err := json.Unmarshal(out, &r); err != nil {
		t.Fatal(err)
	}
	return resp.Header, r.Usage.PromptTokens, r.Usage.Details.Cached
}

// TestUpCPUTierServesEvictedPrompt: `kvgate up --cpu-cache-blocks` with a GPU cache of 256
// blocks. A 150-block prompt is pushed out of the GPU by three others; the router's index
// then holds more blocks for the engine than its GPU can (the engine's BlockStored CPU
// events), and the prompt again is served from the host tier on the same engine: the router
// counts its blocks cached there, the engine reports them as cached tokens, and its first
// token comes much sooner than the cold one (the sim's own TTFT, whose onboarding time is
// modelled, not slept by the test).
func TestUpCPUTierServesEvictedPrompt(t *testing.T) {
	base, p := up(t, "--engines", "1", "--sim-kv-blocks", "256", "--cpu-cache-blocks", "4096", "--sim-speed", "0.5", "--pending-ttl=-1s")
	engine := upEngines(t, p, 1)["sim-0"]
	ttft := func() float64 { return metric(t, "http://"+engine, simTTFTSum) }

	first := longPrompt("offload-a", offloadWords)
	before := ttft()
	_, promptTokens, cached := chatRaw(t, base, nil, first)
	cold := ttft() - before
	if cached != 0 || promptTokens < 2000 {
		t.Fatalf("cold prompt: %d tokens, %d cached", promptTokens, cached)
	}
	blocks := (promptTokens - 1) / 16
	total := blocks
	for _, seed := range []string{"offload-b", "offload-c", "offload-d"} {
		_, n, _ := chatRaw(t, base, nil, longPrompt(seed, offloadWords))
		total += (n - 1) / 16
	}
	// Only the host tier's BlockStored CPU events let the index hold more than 256 blocks.
	waitIndexed(t, base, engine, float64(total-8))

	before = ttft()
	h, _, cached := chatRaw(t, base, nil, first)
	warm := ttft() - before
	if cached != blocks*16 {
		t.Errorf("the repeat reports %d cached tokens, want %d (onboarded from the host tier)", cached, blocks*16)
	}
	if got, _ := strconv.Atoi(h.Get(hdrCachedBlocks)); got < blocks-1 {
		t.Errorf("the router saw %d blocks of the repeat cached on the engine, want %d", got, blocks)
	}
	if warm > cold/2 {
		t.Errorf("TTFT from the host tier %.1f ms, cold %.1f ms: want under half", warm*1e3, cold*1e3)
	}
	t.Logf("%d-token prompt: cold TTFT %.1f ms, from the host tier %.1f ms", promptTokens, cold*1e3, warm*1e3)
}

// TestP2PPullBetweenSimProcesses: two `kvgate sim` processes. Engine A computes a prompt
// and evicts it to its host tier; engine B, told by llm-d's header that A holds it, pulls the
// blocks over A's transfer port and reports them cached; both count the same bytes, and A
// read them from its CPU tier. A source that is gone leaves B computing the prompt itself.
func TestP2PPullBetweenSimProcesses(t *testing.T) {
	startSimProc := func(extra ...string) string {
		port := porttest.Free(t)
		args := append([]string{"sim", "--port", strconv.Itoa(port), "--kv-events", "", "--kv-events-replay", ""}, extra...)
		p := startProc(t, kvgateBin, args...)
		addr := fmt.Sprintf("127.0.0.1:%d", port)
		waitHTTP(t, p, "http://"+addr+"/health", 60*time.Second)
		return addr
	}
	a := startSimProc("--num-blocks", "256", "--cpu-cache-blocks", "4096", "--speed", "20")
	b := startSimProc("--speed", "20")

	prompt := longPrompt("p2p", offloadWords)
	_, promptTokens, _ := chatRaw(t, "http://"+a, nil, prompt)
	for _, seed := range []string{"p2p-b", "p2p-c", "p2p-d"} {
		chatRaw(t, "http://"+a, nil, longPrompt(seed, offloadWords))
	}
	blocks := (promptTokens - 1) / 16

	h := http.Header{}
	h.Set(hdrKVCacheSource, a)
	_, _, cached := chatRaw(t, "http://"+b, h, prompt)
	if cached != blocks*16 {
		t.Fatalf("engine B reports %d cached tokens after the pull, want %d", cached, blocks*16)
	}
	pulled, served := metric(t, "http://"+b, simP2PPulledBytes), metric(t, "http://"+a, simP2PServedBytes)
	if want := float64(blocks) * blockBytesQwen3; pulled != want || served != want {
		t.Errorf("B pulled %.0f bytes, A served %.0f, want %.0f each", pulled, served, want)
	}
	if got := metric(t, "http://"+a, simP2PServedBlocks, `medium="CPU"`); got != float64(blocks) {
		t.Errorf("A served %v blocks from its CPU tier, want %d (the prompt was evicted from its GPU)", got, blocks)
	}

	// A source nobody listens on: B recomputes, counts the failure, and answers.
	h.Set(hdrKVCacheSource, fmt.Sprintf("127.0.0.1:%d", porttest.Free(t)))
	if _, _, cached := chatRaw(t, "http://"+b, h, longPrompt("p2p-e", offloadWords)); cached != 0 {
		t.Errorf("%d cached tokens with the source gone", cached)
	}
	if got := metric(t, "http://"+b, simP2PFailures, `reason="resolve"`); got != 1 {
		t.Errorf("%s{resolve} = %v, want 1", simP2PFailures, got)
	}
}

// TestUpP2PThroughTheGateway: `kvgate up --engines 2 --p2p`. A long prompt lands on one
// engine; then four requests extending it arrive at once, so that engine is busy prefilling
// their new parts. The router sends some of them to the idle engine, told by the gateway (the
// x-kv-cache-source-host-port header) to pull the shared prefix from the busy one: the idle
// engine pulls real bytes from the other and reports the prefix as cached tokens.
func TestUpP2PThroughTheGateway(t *testing.T) {
	base, p := up(t, "--engines", "2", "--p2p", "--sim-speed", "0.2", "--pending-ttl=-1s")
	engines := upEngines(t, p, 2)
	shared := longPrompt("p2p-up", offloadWords)
	h, promptTokens, _ := chatRaw(t, base, nil, shared)
	holder := h.Get("x-kvgate-endpoint")
	other := engines["sim-0"]
	if other == holder {
		other = engines["sim-1"]
	}
	blocks := (promptTokens - 1) / 16
	waitIndexed(t, base, holder, float64(blocks))

	type result struct {
		endpoint string
		cached   int
	}
	results := make(chan result, 4)
	for i := range 4 {
		go func() {
			// The same first message, then a long new one: a shared prefix of about the
			// first prompt's blocks and 2,000 new tokens to prefill.
			b, _ := json.Marshal(map[string]any{"model": model, "max_tokens": 2, "messages": []map[string]string{
				{"role": "user", "content": shared}, {"role": "assistant", "content": "ok"},
				{"role": "user", "content": longPrompt(fmt.Sprint("p2p-up-turn-", i), offloadWords)}}})
			resp, err := http.Post(base+"/v1/chat/completions", "application/json", bytes.NewReader(b))
			if err != nil {
				results <- result{}
				return
			}
			defer resp.Body.Close()
			var r struct {
				Usage struct {
					Details struct {
						Cached int `json:"cached_tokens"`
					} `json:"prompt_tokens_details"`
				} `json:"usage"`
			}
			_ = json.NewDecoder(resp.Body).Decode(&r)
			results <- result{resp.Header.Get("x-kvgate-endpoint"), r.Usage.Details.Cached}
		}()
	}
	pulledOn := 0
	for range 4 {
		r := <-results
		if r.endpoint == "" {
			t.Fatal("a request failed")
		}
		if r.endpoint == other && r.cached >= (blocks-2)*16 {
			pulledOn++
		}
	}
	pulled, served := metric(t, "http://"+other, simP2PPulledBytes), metric(t, "http://"+holder, simP2PServedBytes)
	if pulledOn == 0 || pulled == 0 || pulled != served {
		t.Fatalf("%d requests served with the prefix pulled by %s; it pulled %.0f bytes, %s served %.0f; router pulls %v",
			pulledOn, other, pulled, holder, served, metric(t, base, "kvgate_router_pulls_total"))
	}
	t.Logf("%d of 4 requests pulled the %d-block prefix (%.0f bytes)", pulledOn, blocks, pulled)
}
