package sim

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/kvgate/kvgate/openai"
	"github.com/kvgate/kvgate/polltest"
)

// TestRuntimeLoRAAPI checks vLLM's runtime adapter API: off unless allowed; load, serve,
// list with its parent, unload, and vLLM's answers to a double load and an unknown unload.
func TestRuntimeLoRAAPI(t *testing.T) {
	c := client(t)
	off := testServer(t, ServerConfig{})
	if code, _ := post(t, c, off, "/v1/load_lora_adapter", map[string]string{"lora_name": "a", "lora_path": "/x"}); code != http.StatusNotFound {
		t.Errorf("load without runtime updating allowed: %d, want 404", code)
	}

	s := testServer(t, ServerConfig{RuntimeLoRA: true, Engine: Config{LoRALoad: 20 * time.Millisecond}})
	req := map[string]any{"model": "sql", "prompt": "hello there", "max_tokens": 2}
	if code, body := post(t, c, s, "/v1/completions", req); code != http.StatusNotFound || !strings.Contains(string(body), "sql") {
		t.Errorf("request for an adapter not loaded: %d %s, want a 404 naming it", code, body)
	}
	if code, body := post(t, c, s, "/v1/load_lora_adapter", map[string]string{"lora_name": "sql"}); code != http.StatusBadRequest {
		t.Errorf("load without a path: %d %s", code, body)
	}
	t0 := time.Now()
	if code, body := post(t, c, s, "/v1/load_lora_adapter", map[string]string{"lora_name": "sql", "lora_path": "/adapters/sql"}); code != http.StatusOK || !strings.Contains(string(body), "added successfully") {
		t.Fatalf("load: %d %s", code, body)
	}
	if took := time.Since(t0); took < 20*time.Millisecond {
		t.Errorf("load took %v, want at least the load time", took)
	}
	if code, _ := post(t, c, s, "/v1/load_lora_adapter", map[string]string{"lora_name": "sql", "lora_path": "/adapters/sql"}); code != http.StatusBadRequest {
		t.Errorf("second load: %d, want 400", code)
	}
	if r := completion(t, c, s, req); r.Model != "sql" {
		t.Errorf("served as %q", r.Model)
	}
	resp, err := c.Get("http://" + s.Addr() + "/v1/models")
	if err != nil {
		t.Fatal(err)
	}
	var ml openai.ModelList
	_ = json.NewDecoder(resp.Body).Decode(&ml)
	resp.Body.Close()
	if len(ml.Data) != 2 || ml.Data[1].ID != "sql" || ml.Data[1].Parent == nil || *ml.Data[1].Parent != s.cfg.Model {
		t.Errorf("models %+v", ml.Data)
	}
	if code, body := post(t, c, s, "/v1/unload_lora_adapter", map[string]string{"lora_name": "sql"}); code != http.StatusOK || !strings.Contains(string(body), "removed successfully") {
		t.Errorf("unload: %d %s", code, body)
	}
	if code, _ := post(t, c, s, "/v1/completions", req); code != http.StatusNotFound {
		t.Errorf("request after unload: %d, want 404", code)
	}
	if code, _ := post(t, c, s, "/v1/unload_lora_adapter", map[string]string{"lora_name": "sql"}); code != http.StatusNotFound {
		t.Errorf("unknown unload: %d, want 404", code)
	}
	if s.LoRALoads() != 1 {
		t.Errorf("LoRALoads %d, want 1", s.LoRALoads())
	}
}

// TestMaxLoRAsAndMetric runs requests of two adapters on an engine with max_loras 1: the
// second adapter's request waits until the first's is done, vllm:lora_requests_info says so
// while it does, and each adapter's first request pays the load.
func TestMaxLoRAsAndMetric(t *testing.T) {
	s := testServer(t, ServerConfig{LoRAs: []string{"a", "b"}, Engine: Config{MaxLoRAs: 1}})
	c := client(t)
	var wg sync.WaitGroup
	ends := make(map[string]time.Time)
	var mu sync.Mutex
	for _, m := range []string{"a", "b"} {
		wg.Go(func() {
			completion(t, c, s, map[string]any{"model": m, "prompt": "adapters " + m, "max_tokens": 40, "ignore_eos": true})
			mu.Lock()
			ends[m] = time.Now()
			mu.Unlock()
		})
		if m == "a" {
			waitFor(t, "a running", func() bool { return strings.Join(s.Stats().RunningLoRAs, ",") == "a" })
		}
	}
	waitFor(t, "b waiting behind a", func() bool {
		st := s.Stats()
		return strings.Join(st.RunningLoRAs, ",") == "a" && strings.Join(st.WaitingLoRAs, ",") == "b"
	})
	run, wait, max := scrapeLoRAInfo(t, c, s)
	if run != "a" || wait != "b" || max != "1" {
		t.Errorf("lora_requests_info running=%q waiting=%q max_lora=%q, want a, b, 1", run, wait, max)
	}
	wg.Wait()
	if !ends["a"].Before(ends["b"]) {
		t.Errorf("b finished before a although it had to wait for a's slot")
	}
	if got := s.Stats().LoRALoads; got != 2 {
		t.Errorf("LoRALoads %d, want 2", got)
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	polltest.Until(t, 10*time.Second, what, cond)
}

// scrapeLoRAInfo reads vllm:lora_requests_info's newest series from /metrics.
func scrapeLoRAInfo(t *testing.T, c *http.Client, s *Server) (running, waiting, maxLoRA string) {
	t.Helper()
	resp, err := c.Get("http://" + s.Addr() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	f := fams[MetricLoRAInfo]
	if f == nil {
		t.Fatalf("no %s in /metrics", MetricLoRAInfo)
	}
	best := -1.0
	for _, m := range f.GetMetric() {
		if v := m.GetGauge().GetValue(); v > best {
			best = v
			for _, l := range m.GetLabel() {
				switch l.GetName() {
				case "running_lora_adapters":
					running = l.GetValue()
				case "waiting_lora_adapters":
					waiting = l.GetValue()
				case "max_lora":
					maxLoRA = l.GetValue()
				}
			}
		}
	}
	return running, waiting, maxLoRA
}
