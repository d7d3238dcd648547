package sim

import (
	"encoding/json"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kvgate/kvgate/engine"
	"github.com/kvgate/kvgate/openai"
)

// MetricLoRAInfo is vLLM's adapter gauge: labels max_lora, running_lora_adapters and
// waiting_lora_adapters (comma-separated names), value the time it was last set.
const MetricLoRAInfo = engine.VLLMLoRARequestsInfo

// loraRegistry is the adapters the server serves, as vLLM's OpenAIServingModels keeps them:
// the --lora-modules ones, then those loaded at run time, each with an integer id counting
// from 1 in the order they were added.
type loraRegistry struct {
	mu   sync.Mutex
	ids  map[string]int
	next int
}

func newLoRARegistry(names []string) *loraRegistry {
	r := &loraRegistry{ids: map[string]int{}}
	for _, n := range names {
		r.add(n)
	}
	return r
}

func (r *loraRegistry) add(name string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.ids[name]; ok {
		return false
	}
	r.next++
	r.ids[name] = r.next
	return true
}

func (r *loraRegistry) remove(name string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	_, ok := r.ids[name]
	delete(r.ids, name)
	return ok
}

func (r *loraRegistry) id(name string) (int, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	id, ok := r.ids[name]
	return id, ok
}

// names returns the adapters in the order they were added.
func (r *loraRegistry) names() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]string, 0, len(r.ids))
	for n := range r.ids {
		out = append(out, n)
	}
	slices.SortFunc(out, func(a, b string) int { return r.ids[a] - r.ids[b] })
	return out
}

// loraRequest is the body of vLLM's /v1/load_lora_adapter and /v1/unload_lora_adapter.
type loraRequest struct {
	LoRAName string `json:"lora_name"`
	LoRAPath string `json:"lora_path"`
}

func (s *Server) readLoRARequest(w http.ResponseWriter, r *http.Request) (loraRequest, bool) {
	var req loraRequest
	body, err := openai.ReadBody(r.Body, s.cfg.MaxBodyBytes)
	if err == nil {
		if e := json.Unmarshal(body, &req); e != nil {
			err = openai.BadRequest("", "Invalid JSON body: %v", e)
		}
	}
	if err != nil {
		openai.WriteError(w, err)
		return req, false
	}
	return req, true
}

// handleLoadLoRA registers an adapter, after reading its weights (LoRALoad), as vLLM's
// runtime API does with VLLM_ALLOW_RUNTIME_LORA_UPDATING.
func (s *Server) handleLoadLoRA(w http.ResponseWriter, r *http.Request) {
	req, ok := s.readLoRARequest(w, r)
	if !ok {
		return
	}
	if req.LoRAName == "" || req.LoRAPath == "" {
		openai.WriteError(w, openai.BadRequest("", "Both 'lora_name' and 'lora_path' must be provided."))
		return
	}
	if _, loaded := s.loras.id(req.LoRAName); loaded {
		openai.WriteError(w, openai.BadRequest("", "The lora adapter '%s' has already been loaded.", req.LoRAName))
		return
	}
	select {
	case <-time.After(time.Duration(float64(s.cfg.Engine.LoRALoad) / s.cfg.Engine.Timing.Speed)):
	case <-r.Context().Done():
		return
	}
	if !s.loras.add(req.LoRAName) {
		openai.WriteError(w, openai.BadRequest("", "The lora adapter '%s' has already been loaded.", req.LoRAName))
		return
	}
	s.loraLoads.Add(1)
	s.log.Info("loaded LoRA adapter", "name", req.LoRAName, "path", req.LoRAPath)
	writeText(w, http.StatusOK, "Success: LoRA adapter '"+req.LoRAName+"' added successfully.")
}

func (s *Server) handleUnloadLoRA(w http.ResponseWriter, r *http.Request) {
	req, ok := s.readLoRARequest(w, r)
	if !ok {
		return
	}
	if req.LoRAName == "" {
		openai.WriteError(w, openai.BadRequest("", "'lora_name' needs to be provided to unload a LoRA adapter."))
		return
	}
	if !s.loras.remove(req.LoRAName) {
		openai.WriteError(w, openai.Errorf(http.StatusNotFound, openai.TypeNotFound, "", "The lora adapter '%s' cannot be found.", req.LoRAName))
		return
	}
	s.log.Info("unloaded LoRA adapter", "name", req.LoRAName)
	writeText(w, http.StatusOK, "Success: LoRA adapter '"+req.LoRAName+"' removed successfully.")
}

// LoRALoads is how many adapters were loaded through /v1/load_lora_adapter.
func (s *Server) LoRALoads() int64 { return s.loraLoads.Load() }

func writeText(w http.ResponseWriter, status int, text string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Content-Length", strconv.Itoa(len(text)))
	w.WriteHeader(status)
	_, _ = w.Write([]byte(text))
}

// loraInfo is vLLM's vllm:lora_requests_info: one series, relabelled as the adapters of the
// running and waiting requests change, whose value is the time it was set (a scraper takes
// the newest series).
type loraInfo struct {
	g   *prometheus.GaugeVec
	max string
	mu  sync.Mutex
	run string
	wai string
}

func newLoRAInfo(reg prometheus.Registerer, maxLoRAs int) (*loraInfo, error) {
	l := &loraInfo{max: strconv.Itoa(maxLoRAs), g: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: MetricLoRAInfo,
		Help: "Running stats on lora requests."}, []string{"max_lora", "waiting_lora_adapters", "running_lora_adapters"})}
	if err := reg.Register(l.g); err != nil {
		return nil, err
	}
	l.g.WithLabelValues(l.max, "", "").SetToCurrentTime()
	return l, nil
}

func (l *loraInfo) observe(st Stats) {
	if l == nil {
		return
	}
	run, wai := strings.Join(st.RunningLoRAs, ","), strings.Join(st.WaitingLoRAs, ",")
	l.mu.Lock()
	defer l.mu.Unlock()
	if run == l.run && wai == l.wai {
		return
	}
	l.run, l.wai = run, wai
	l.g.Reset()
	l.g.WithLabelValues(l.max, wai, run).SetToCurrentTime()
}
