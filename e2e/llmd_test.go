package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kvgate/kvgate/engine"
	"github.com/kvgate/kvgate/kubetest"
	"github.com/kvgate/kvgate/kubetest/apiserver"
	"github.com/kvgate/kvgate/polltest"
	"github.com/kvgate/kvgate/porttest"
	"github.com/kvgate/kvgate/tokenizer"
)

// llm-d's EPP in the test fleet. It discovers engines only through the Kubernetes API (the
// Pods an InferencePool selects), so the engines are `kvgate sim` processes on distinct
// loopback addresses (127.0.0.2, 127.0.0.3, ...) sharing one port, each a Pod in a real
// kube-apiserver (kubetest/apiserver); the pool's target port is that port. One API server
// serves every fleet of a test, each fleet in a namespace of its own.

// The two llm-d scheduling profiles compared with kvgate's router.
const (
	llmdApprox  = "approximate" // GIE's prefix-cache-scorer (request-time guesses) + load
	llmdPrecise = "precise"     // llm-d's precise-prefix-cache-scorer (engines' KV events) + load
)

// llmd metric names read from its /metrics.
const (
	llmdIndexAdmissions = "kvcache_index_admissions_total"  // blocks its KV-event index took in
	llmdIndexHits       = "kvcache_index_lookup_hits_total" // prompt blocks found in that index
	llmdReadyPods       = "inference_pool_ready_pods"
	llmdSchedulerTime   = "inference_extension_scheduler_e2e_duration_seconds"
	llmdPool            = "kvgate"
)

// llmdNamespaces numbers the fleets' namespaces.
var llmdNamespaces atomic.Int32

// llmdConfig is the EndpointPickerConfig of a profile. Weights follow llm-d's well-lit paths
// (prefix 3, KV-cache utilization 2, queue 2).
func llmdConfig(profile, zmq, socket string) string {
	prefix := "prefix-cache-scorer"
	plugin := "- type: prefix-cache-scorer\n"
	if profile == llmdPrecise {
		prefix = "precise-prefix-cache-scorer"
		plugin = fmt.Sprintf(`- type: precise-prefix-cache-scorer
  parameters:
    tokenProcessorConfig:
      blockSizeTokens: %d
    kvEventsConfig:
      zmqEndpoint: %s
      topicFilter: "kv@"
      discoverPods: false
    indexerConfig:
      kvBlockIndexConfig:
        enableMetrics: true
      tokenizersPoolConfig:
        modelName: %s
        workersCount: 5
        uds:
          socketFile: %s
`, tokenizer.DefaultBlockSize, zmq, tokenizer.DefaultModel, socket)
	}
	return `apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
` + plugin + `- type: kv-cache-utilization-scorer
- type: queue-scorer
- type: max-score-picker
- type: single-profile-handler
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: ` + prefix + `
    weight: 3
  - pluginRef: kv-cache-utilization-scorer
    weight: 2
  - pluginRef: queue-scorer
    weight: 2
  - pluginRef: max-score-picker
`
}

// llmdFleet is n sims behind an InferencePool, and what llm-d's EPP needs to see them.
type llmdFleet struct {
	sims       []simProc
	port       int    // every sim's HTTP port (the pool's target port)
	zmq        string // the EPP's KV-event socket the sims dial (dial mode)
	kubeconfig string
	kube       *apiserver.Server // the API server, to add or change Pods
	namespace  string            // the pool's and its Pods'
	socket     string            // the tokenization service's Unix socket
	tokenizer  *proc             // kvgate tokenserver
}

// startPoolSims starts n sims on 127.0.0.2, 127.0.0.3, ... sharing one HTTP port. With dial,
// their KV events go to one socket that llm-d's precise EPP binds, with the topic llm-d reads
// the endpoint from ("kv@ip:port@model"); without, each binds its own publisher on its
// address (one port for all) for `kvgate router` to subscribe to.
func startPoolSims(t *testing.T, n int, dial bool, extra ...string) *llmdFleet {
	t.Helper()
	f := &llmdFleet{port: porttest.Free(t), zmq: fmt.Sprintf("tcp://127.0.0.1:%d", porttest.Free(t))}
	kvPort := porttest.Free(t)
	for i := range n {
		host := fmt.Sprintf("127.0.0.%d", i+2)
		s := simProc{addr: fmt.Sprintf("%s:%d", host, f.port), kv: fmt.Sprintf("tcp://%s:%d", host, kvPort)}
		args := []string{"sim", "--host", host, "--port", fmt.Sprint(f.port), "--event-shape", "array", "--kv-events-replay", ""}
		if dial {
			s.kv = f.zmq
			args = append(args, "--kv-events", f.zmq, "--kv-events-dial", "--kv-events-topic", "kv@"+s.addr+"@"+tokenizer.DefaultModel)
		} else {
			args = append(args, "--kv-events", s.kv)
		}
		s.p = startProc(t, kvgateBin, append(args, extra...)...)
		f.sims = append(f.sims, s)
	}
	for _, s := range f.sims {
		waitHTTP(t, s.p, "http://"+s.addr+"/health", 60*time.Second)
	}
	return f
}

// startLLMDFleet starts n dialling sims, writes them into kube as the Pods of one
// InferencePool in a fresh namespace, and starts `kvgate tokenserver`.
func startLLMDFleet(t *testing.T, kube *apiserver.Server, n int, extra ...string) *llmdFleet {
	t.Helper()
	f := startPoolSims(t, n, true, extra...)
	dir := t.TempDir()
	f.socket = filepath.Join(dir, "tok.sock")
	f.kube, f.namespace = kube, fmt.Sprintf("llmd-%d", llmdNamespaces.Add(1))
	f.kubeconfig = kube.Kubeconfig(t, kube.AdminToken)
	for i, s := range f.sims {
		host, _, _ := strings.Cut(s.addr, ":")
		kube.SetPod(t, kubetest.Pod{Namespace: f.namespace, Name: fmt.Sprintf("sim-%d", i), IP: host, Labels: map[string]string{"app": "kvgate-sim"}})
	}
	kube.SetInferencePool(t, kubetest.InferencePool{Namespace: f.namespace, Name: llmdPool, Selector: map[string]string{"app": "kvgate-sim"},
		TargetPorts: []int{f.port}, EPPName: "llm-d-epp", EPPPort: 9002})
	f.tokenizer = startProc(t, kvgateBin, "tokenserver", "--listen", "unix://"+f.socket)
	waitUntil(t, "the tokenization socket", func() bool {
		if processExited(f.tokenizer) {
			t.Fatalf("kvgate tokenserver exited:\n%s", f.tokenizer.output())
		}
		_, err := os.Stat(f.socket)
		return err == nil
	})
	return f
}

// llmdEPP is a running llm-d EPP.
type llmdEPP struct {
	p       *proc
	grpc    string // ext_proc address
	health  string // its gRPC health address (a port of its own)
	metrics string // base URL of its /metrics
}

// startLLMDEPP starts llm-d's EPP with profile over f and waits until it has every Pod ready.
// Its three listeners bind every interface (it has no flag for the host); the ports are free
// ones, and plain gRPC (--secure-serving=false) as kvgate router is run here.
func startLLMDEPP(t *testing.T, f *llmdFleet, profile string) llmdEPP {
	t.Helper()
	bin := peer(t, "llm-d-epp")
	cfg := filepath.Join(t.TempDir(), "epp.yaml")
	if err := os.WriteFile(cfg, []byte(llmdConfig(profile, f.zmq, f.socket)), 0o600); err != nil {
		t.Fatal(err)
	}
	grpcPort, healthPort, metricsPort := porttest.FreeEverywhere(t), porttest.FreeEverywhere(t), porttest.FreeEverywhere(t)
	e := llmdEPP{grpc: fmt.Sprintf("127.0.0.1:%d", grpcPort), health: fmt.Sprintf("127.0.0.1:%d", healthPort), metrics: fmt.Sprintf("http://127.0.0.1:%d", metricsPort)}
	e.p = startProcEnv(t, []string{"KUBECONFIG=" + f.kubeconfig}, bin,
		"--pool-name", llmdPool, "--pool-namespace", f.namespace, "--config-file", cfg,
		"--grpc-port", fmt.Sprint(grpcPort), "--grpc-health-port", fmt.Sprint(healthPort), "--metrics-port", fmt.Sprint(metricsPort),
		"--secure-serving=false", "--metrics-endpoint-auth=false", "--tracing=false", "--enable-pprof=false")
	waitHTTP(t, e.p, e.metrics+"/metrics", 60*time.Second)
	if !polltest.Wait(60*time.Second, func() bool {
		select {
		case <-e.p.done:
			return true
		default:
		}
		return metric(t, e.metrics, llmdReadyPods) == float64(len(f.sims))
	}) || processExited(e.p) {
		t.Fatalf("llm-d's EPP does not count %d ready pods (%v):\n%s", len(f.sims), metric(t, e.metrics, llmdReadyPods), tail(e.p.output(), 6000))
	}
	return e
}

func processExited(p *proc) bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// startEPPGateway starts `kvgate gateway --epp` in front of the sims and returns its base URL.
func startEPPGateway(t *testing.T, epp string, sims []simProc, extra ...string) string {
	t.Helper()
	addr := fmt.Sprintf("127.0.0.1:%d", porttest.Free(t))
	args := []string{"gateway", "--epp", epp, "--http", addr, "--served-model", tokenizer.DefaultModel}
	for _, s := range sims {
		args = append(args, "--endpoint", "http://"+s.addr)
	}
	p := startProc(t, kvgateBin, append(args, extra...)...)
	waitHTTP(t, p, "http://"+addr+"/health", 30*time.Second)
	return "http://" + addr
}

// TestLLMDEPP routes through llm-d's Endpoint Picker, unmodified, with kvgate's own data
// plane (`kvgate gateway --epp`) over kvgate sims it finds through a real kube-apiserver: with its
// approximate profile, and with its precise profile fed by the sims' KV events (array batches
// with the data-parallel rank) and by `kvgate tokenserver` for token ids. A long prompt
// repeated goes back to the engine that holds it and reuses its cache; with the precise
// profile only after the EPP's own index took the blocks in from the events.
func TestLLMDEPP(t *testing.T) {
	kube := apiserver.Start(t)
	for _, profile := range []string{llmdApprox, llmdPrecise} {
		t.Run(profile, func(t *testing.T) {
			f := startLLMDFleet(t, kube, 3, "--speed", "50")
			e := startLLMDEPP(t, f, profile)
			base := startEPPGateway(t, e.grpc, f.sims)
			if profile == llmdPrecise {
				primeLLMDEvents(t, base, f.sims, e.metrics)
			}
			prompt := strings.Repeat(fmt.Sprintf("llm-d's picker (%s) sees this long shared prefix again. ", profile), 40)
			admitted := metric(t, e.metrics, llmdIndexAdmissions)
			first := llmdChat(t, base, f.sims, prompt)
			if profile == llmdPrecise {
				// 40 sentences are well over 20 blocks of 16 tokens.
				waitUntil(t, "llm-d's index to take in the first answer's blocks", func() bool {
					return metric(t, e.metrics, llmdIndexAdmissions) >= admitted+20
				})
			}
			second := llmdChat(t, base, f.sims, prompt)
			if second.endpoint != first.endpoint {
				t.Errorf("the repeated prompt went to %s, the first to %s", second.endpoint, first.endpoint)
			}
			if second.cached == 0 {
				t.Errorf("the repeat reused no cached tokens (%+v)", second)
			}
			// The precise scorer found the prompt's blocks: the ids kvgate tokenserver gave it
			// are the ones the engine's events carry.
			if profile == llmdPrecise && metric(t, e.metrics, llmdIndexHits) == 0 {
				t.Errorf("llm-d's index found none of the repeated prompt's blocks (%s = 0)", llmdIndexHits)
			}
			// Different prompts spread: not every one lands on one engine.
			seen := map[string]bool{}
			for i := range 9 {
				seen[llmdChat(t, base, f.sims, longPrompt(fmt.Sprint(profile, i), 300)).endpoint] = true
			}
			if len(seen) < 2 {
				t.Errorf("9 different prompts all went to %v", seen)
			}
			if metric(t, e.metrics, llmdSchedulerTime+"_count") == 0 {
				t.Errorf("llm-d's EPP counts no scheduling decisions")
			}
		})
	}
}

type llmdAnswer struct {
	endpoint string
	cached   int
}

// llmdChat sends a chat through the gateway and returns which sim served it and the cached
// tokens it reports. A foreign EPP adds no header naming the engine, so the served engine is
// the one sim whose finished-request count went up.
func llmdChat(t *testing.T, base string, sims []simProc, content string) llmdAnswer {
	t.Helper()
	before := simsServed(t, sims)
	body, _ := json.Marshal(map[string]any{"model": tokenizer.DefaultModel, "max_tokens": 4, "messages": []map[string]string{{"role": "user", "content": content}}})
	resp, err := http.Post(base+"/v1/chat/completions", "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
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
	after := simsServed(t, sims)
	var served []string
	for i, s := range sims {
		if after[i] > before[i] {
			served = append(served, s.addr)
		}
	}
	if len(served) != 1 {
		t.Fatalf("one request, served by %v (finished before %v, after %v)", served, before, after)
	}
	return llmdAnswer{served[0], out.Usage.PromptTokensDetails.CachedTokens}
}

// simsServed returns each sim's count of finished requests.
func simsServed(t *testing.T, sims []simProc) []float64 {
	t.Helper()
	out := make([]float64, len(sims))
	for i, s := range sims {
		out[i] = metric(t, "http://"+s.addr, engine.VLLMRequestSuccess)
	}
	return out
}

// primeLLMDEvents sends distinct prompts until each sim's KV events have reached llm-d's index
// at least once. A sim dials the EPP's socket and ZMQ drops what it publishes before the
// subscription is through, so the first batches of a sim may be lost; a batch lost under a
// repeated prompt would leave its later blocks without their parents in llm-d's index.
func primeLLMDEvents(t *testing.T, base string, sims []simProc, metrics string) {
	t.Helper()
	primed := map[string]bool{}
	deadline := time.Now().Add(90 * time.Second)
	for i := 0; len(primed) < len(sims); i++ {
		if time.Now().After(deadline) {
			t.Fatalf("the KV events of only %v reached llm-d's index after 90s", primed)
		}
		before := metric(t, metrics, llmdIndexAdmissions)
		a := llmdChat(t, base, sims, longPrompt(fmt.Sprint("prime", i), 60))
		if polltest.Wait(3*time.Second, func() bool { return metric(t, metrics, llmdIndexAdmissions) > before }) {
			primed[a.endpoint] = true
		}
	}
}
