package sim

import (
	"bytes"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/kvgate/kvgate/engine"
)

// labelled reads one labelled counter from s's /metrics.
func labelled(t *testing.T, c *http.Client, s *Server, name, label, value string) float64 {
	t.Helper()
	resp, err := c.Get(s.URL() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	f := fams[strings.TrimSuffix(name, "_total")]
	if f == nil {
		f = fams[name]
	}
	if f == nil {
		t.Fatalf("no metric %s", name)
	}
	for _, m := range f.Metric {
		for _, l := range m.Label {
			if l.GetName() == label && l.GetValue() == value {
				return m.GetCounter().GetValue()
			}
		}
	}
	t.Fatalf("no %s{%s=%q}", name, label, value)
	return 0
}

// completionWith posts a completion with extra headers.
func completionWith(t *testing.T, c *http.Client, s *Server, h http.Header, body map[string]any) (int, []byte) {
	t.Helper()
	b, _ := json.Marshal(body)
	req, err := http.NewRequest(http.MethodPost, s.URL()+"/v1/completions", bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	req.Header = h
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, out
}

// cachedTokens runs a completion and returns its usage's cached tokens, failing the test on
// anything but a 200.
func cachedTokens(t *testing.T, c *http.Client, s *Server, h http.Header, body map[string]any) int {
	t.Helper()
	code, out := completionWith(t, c, s, h, body)
	if code != http.StatusOK {
		t.Fatalf("status %d: %s", code, out)
	}
	var r struct {
		Usage struct {
			PromptTokens int `json:"prompt_tokens"`
			Details      *struct {
				Cached int `json:"cached_tokens"`
			} `json:"prompt_tokens_details"`
		} `json:"usage"`
	}
	if err := json.Unmarshal(out, &r); err != nil {
		t.Fatal(err)
	}
	if r.Usage.Details == nil {
		return 0
	}
	return r.Usage.Details.Cached
}

// TestP2PPullFromPeerCPUTier: engine A computes a prompt and pushes it out of its small GPU
// cache into its host tier. Engine B, told by llm-d's header (or by
// kv_transfer_params.remote_kv_source) that A holds the prefix, pulls the blocks from A's
// host tier over A's transfer port: B reports them as cached tokens, publishes them as
// BlockStored GPU, and both sides count the same bytes. Without a source B recomputes.
func TestP2PPullFromPeerCPUTier(t *testing.T) {
	const bb = 8192
	a := testServer(t, ServerConfig{Engine: Config{NumBlocks: 40, CPUBlocks: 400}, BlockBytes: bb})
	b := testServer(t, ServerConfig{BlockBytes: bb})
	c := client(t)
	prompt := func(i int) map[string]any {
		return map[string]any{"prompt": longText(100+i, 150), "max_tokens": 2, "ignore_eos": true}
	}
	first := completion(t, c, a, prompt(0))
	for i := 1; i <= 5; i++ {
		completion(t, c, a, prompt(i))
	}
	full := (first.Usage.PromptTokens - 1) / 16
	hs, _ := a.drv.holds(b.tok.Encode(longText(100, 150)), "", "")
	if h := a.drv.holdsHashes(hs); h.GPU != 0 || h.CPU != full {
		t.Fatalf("engine A holds the first prompt as %+v, want all %d blocks on the CPU only", h, full)
	}

	// No source named: B recomputes.
	if got := cachedTokens(t, c, b, http.Header{}, prompt(1)); got != 0 {
		t.Fatalf("B reports %d cached tokens with no source", got)
	}

	h := http.Header{}
	h.Set(HeaderKVCacheSource, a.Addr())
	if got := cachedTokens(t, c, b, h, prompt(0)); got != full*16 {
		t.Fatalf("B reports %d cached tokens after the pull, want %d", got, full*16)
	}
	if got := counter(t, c, b, MetricP2PPulledBytes); got != float64(full*bb) {
		t.Fatalf("B pulled %v bytes, want %d", got, full*bb)
	}
	if got := counter(t, c, a, MetricP2PServedBytes); got != float64(full*bb) {
		t.Fatalf("A served %v bytes, want %d", got, full*bb)
	}
	if got := labelled(t, c, a, MetricP2PServedBlocks, "medium", "CPU"); got != float64(full) {
		t.Fatalf("A served %v blocks from its CPU tier, want %d", got, full)
	}
	stored := 0
	for _, ev := range events(replay(t, b)) {
		if ev.Kind == engine.BlockStored && ev.Medium == engine.MediumGPU {
			stored += len(ev.BlockHashes)
		}
	}
	if stored < full {
		t.Fatalf("B published %d stored blocks, pulled %d", stored, full)
	}

	// The body's remote_kv_source (A's transfer port), for a second prompt A still holds.
	kv := map[string]any{"remote_kv_source": map[string]any{"kv_request_id": "x", "remote_host": "127.0.0.1", "remote_port": a.TransferPort()}}
	p2 := prompt(2)
	p2["kv_transfer_params"] = kv
	want := (completion(t, c, a, prompt(2)).Usage.PromptTokens - 1) / 16 * 16
	if got := cachedTokens(t, c, b, http.Header{}, p2); got != want {
		t.Fatalf("B reports %d cached tokens after a remote_kv_source pull, want %d", got, want)
	}
	if got := labelled(t, c, b, MetricP2PFailures, "reason", p2pMiss); got != 0 {
		t.Fatalf("%v misses", got)
	}
}

// TestP2PPullFailuresRecompute: every way a pull can fail leaves a normal answer, computed
// locally, and counts the failure by reason.
func TestP2PPullFailuresRecompute(t *testing.T) {
	a := testServer(t, ServerConfig{})
	b := testServer(t, ServerConfig{})
	c := client(t)
	dead, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadAddr := dead.Addr().String()
	dead.Close()
	_, deadPort, _ := net.SplitHostPort(deadAddr)
	port, _ := strconv.Atoi(deadPort)

	cases := []struct {
		name   string
		header string
		kv     map[string]any
		reason string
	}{
		{"header is not host:port", "http://x/y", nil, p2pBadSource},
		{"header names nothing listening", deadAddr, nil, p2pResolve},
		{"transfer port closed", "", map[string]any{"remote_kv_source": map[string]any{"remote_host": "127.0.0.1", "remote_port": port}}, p2pConnect},
		{"source holds none of it", a.Addr(), nil, p2pMiss},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			body := map[string]any{"prompt": longText(300+i, 120), "max_tokens": 2}
			if tc.kv != nil {
				body["kv_transfer_params"] = tc.kv
			}
			h := http.Header{}
			if tc.header != "" {
				h.Set(HeaderKVCacheSource, tc.header)
			}
			if got := cachedTokens(t, c, b, h, body); got != 0 {
				t.Fatalf("%d cached tokens", got)
			}
			if got := labelled(t, c, b, MetricP2PFailures, "reason", tc.reason); got != 1 {
				t.Fatalf("failures{reason=%q} = %v, want 1", tc.reason, got)
			}
		})
	}
	// A malformed remote_kv_source is the client's error, as other bad kv_transfer_params.
	code, out := completionWith(t, c, b, http.Header{}, map[string]any{"prompt": "hi", "max_tokens": 1,
		"kv_transfer_params": map[string]any{"remote_kv_source": map[string]any{"remote_host": "", "remote_port": 0}}})
	if code != http.StatusBadRequest || !strings.Contains(string(out), "remote_kv_source") {
		t.Fatalf("status %d: %s", code, out)
	}
}

func FuzzPullRequest(f *testing.F) {
	f.Add([]byte(`{"request_id":"a","block_ids":[1,2]}`))
	f.Add([]byte(`{"block_hashes":["` + strings.Repeat("ab", 32) + `"],"block_size":16}`))
	f.Add([]byte(`{"block_hashes":["zz"]}`))
	f.Fuzz(func(t *testing.T, line []byte) {
		req, err := parsePullRequest(line)
		if err != nil {
			return
		}
		if len(req.BlockIDs) == 0 && len(req.hashes) == 0 {
			t.Fatalf("accepted a request for no blocks: %q", line)
		}
		if len(req.hashes) != len(req.BlockHashes) {
			t.Fatalf("%d hashes decoded from %d", len(req.hashes), len(req.BlockHashes))
		}
	})
}

// TestRemoteBlocksOnboardLocalTierFirst: a request whose prefix arrives from another engine
// (RemoteBlocks) while this engine holds the first part of it on its host tier loads that
// part from the host tier, with its host-to-device time, and installs only the rest as
// received: a P2P pull skips the blocks the puller holds itself.
func TestRemoteBlocksOnboardLocalTierFirst(t *testing.T) {
	r := newTierRun(t, Config{NumBlocks: 200, CPUBlocks: 1000})
	a, _, _ := r.evictA()
	// A's blocks went to the host tier; a request extending A receives its prefix plus two
	// more blocks: the ones on the host tier load from there, the two are installed.
	ext := append(append([]uint32(nil), a...), prompt(9, 64)...)
	local := r.has(MediumCPU, hashesOf(r.e, ext))
	if local < 124 {
		t.Fatalf("%d of the prompt's blocks on the host tier", local)
	}
	if err := r.e.Add(Request{ID: "pulled", Prompt: ext, MaxTokens: 1, RemoteBlocks: local + 2}); err != nil {
		t.Fatal(err)
	}
	res := r.e.Step(r.now)
	if res.Onboarded != local || res.Onboard <= 0 {
		t.Fatalf("onboarded %d blocks from the host tier in %v, want %d (the ones this engine holds)", res.Onboarded, res.Onboard, local)
	}
	for r.e.Busy() {
		res = r.e.Step(res.End)
	}
	if len(res.Outputs) != 1 || res.Outputs[0].CachedTokens != (local+2)*16 {
		t.Fatalf("outputs %+v: want %d cached tokens (onboarded and received)", res.Outputs, (local+2)*16)
	}
}
