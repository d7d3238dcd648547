package e2e

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/openai/openai-go/v3/option"

	"github.com/kvgate/kvgate/porttest"
)

// Header and metric names the disaggregated path is checked by.
const (
	hdrPrefill         = "x-kvgate-prefill-endpoint"
	hdrFallback        = "x-kvgate-prefill-fallback"
	simPulledBytes     = "kvgate_sim_kv_transfer_bytes_total"
	simServedBytes     = "kvgate_sim_kv_transfer_served_bytes_total"
	routerPaths        = "kvgate_router_requests_by_path_total"
	routerAggReasons   = "kvgate_router_aggregated_reasons_total"
	sidecarRemote      = "kvgate_sidecar_remote_prefills_total"
	sidecarFallbacks   = "kvgate_sidecar_prefill_fallbacks_total"
	disaggPromptWords  = 400 // about 4,000 tokens: over the router's 2,048-token threshold
	disaggSimSpeedFlag = "20"
)

var upEngineLine = regexp.MustCompile(`engine (\S+)\s+http://(\S+)`)

// upEngines waits for kvgate up's banner and returns engine name -> address.
func upEngines(t *testing.T, p *proc, want int) map[string]string {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		out := map[string]string{}
		for _, m := range upEngineLine.FindAllStringSubmatch(p.output(), -1) {
			out[m[1]] = m[2]
		}
		if len(out) >= want {
			return out
		}
		if time.Now().After(deadline) {
			t.Fatalf("kvgate up printed %d engines, want %d:\n%s", len(out), want, tail(p.output(), 3000))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestUpDisaggregated: `kvgate up --prefill-engines 1 --decode-engines 1`. A long prompt is
// prefilled on the prefill engine and its KV blocks pulled over TCP by the decode engine
// (bytes counted on both sims, header on the response); a short prompt stays aggregated; the
// long prompt again stays aggregated because the router learned from the decode engine's KV
// events that it now holds the pulled blocks.
func TestUpDisaggregated(t *testing.T) {
	// No in-flight credit: only the decode engine's KV events can mark the repeat cached.
	base, p := up(t, "--prefill-engines", "1", "--decode-engines", "1", "--sim-speed", disaggSimSpeedFlag, "--pending-ttl=-1s")
	engines := upEngines(t, p, 2)
	pre, dec := engines["prefill-0"], engines["decode-0"]
	if pre == "" || dec == "" {
		t.Fatalf("engines %v", engines)
	}
	c := client(base)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	prompt := longPrompt("disagg", disaggPromptWords)
	var resp *http.Response
	cc, err := c.Chat.Completions.New(ctx, userChat(prompt, 8), option.WithResponseInto(&resp))
	if err != nil {
		t.Fatal(err)
	}
	if cc.Usage.PromptTokens < 2500 || len(cc.Choices) != 1 || cc.Choices[0].Message.Content == "" {
		t.Fatalf("long prompt: usage %+v, choices %+v", cc.Usage, cc.Choices)
	}
	if got := resp.Header.Get(hdrPrefill); got != pre {
		t.Errorf("long prompt: %s = %q, want the prefill engine %s", hdrPrefill, got, pre)
	}
	if cached := cc.Usage.PromptTokensDetails.CachedTokens; cached < cc.Usage.PromptTokens-16 {
		t.Errorf("decode engine computed %d of %d prompt tokens: the prefill engine's blocks should have arrived",
			cc.Usage.PromptTokens-cached, cc.Usage.PromptTokens)
	}
	pulled := metric(t, "http://"+dec, simPulledBytes)
	served := metric(t, "http://"+pre, simServedBytes)
	// 2.25 MiB per 16-token block for the default Qwen3-8B shape.
	if minBytes := float64(cc.Usage.PromptTokens/16-1) * 2.25 * (1 << 20); pulled < minBytes || pulled != served {
		t.Errorf("KV transfer: decode pulled %.0f bytes, prefill served %.0f; want equal and at least %.0f", pulled, served, minBytes)
	}

	// A client naming a prefill endpoint itself is not obeyed: only the router names them.
	var short *http.Response
	if _, err := c.Chat.Completions.New(ctx, userChat("Say hi.", 4), option.WithResponseInto(&short),
		option.WithHeader("x-prefiller-host-port", "127.0.0.1:1")); err != nil {
		t.Fatal(err)
	}
	if got := short.Header.Get(hdrPrefill) + short.Header.Get(hdrFallback); got != "" {
		t.Errorf("short prompt went through prefill (or tried): %q", got)
	}

	waitIndexed(t, base, dec, float64(cc.Usage.PromptTokens/16-2)) // the decode engine's BlockStored events
	var again *http.Response
	cc2, err := c.Chat.Completions.New(ctx, userChat(prompt, 8), option.WithResponseInto(&again))
	if err != nil {
		t.Fatal(err)
	}
	if got := again.Header.Get(hdrPrefill); got != "" {
		t.Errorf("repeated prompt prefilled remotely again (%s): the router should see it cached on the decode engine", got)
	}
	if blocks, _ := strconv.ParseInt(again.Header.Get("x-kvgate-cached-blocks"), 10, 64); blocks < cc2.Usage.PromptTokens/16-2 {
		t.Errorf("repeat: router saw %d cached blocks on the decode engine, want about %d", blocks, cc2.Usage.PromptTokens/16)
	}
	if got := metric(t, "http://"+dec, simPulledBytes); got != pulled {
		t.Errorf("repeat moved more KV: %.0f -> %.0f bytes", pulled, got)
	}

	if got := metric(t, base, routerPaths, `path="disaggregated"`); got != 1 {
		t.Errorf("%s{disaggregated} = %v, want 1", routerPaths, got)
	}
	if got := metric(t, base, routerAggReasons, `reason="short_uncached"`); got != 2 {
		t.Errorf("%s{short_uncached} = %v, want 2 (the short prompt and the cached repeat)", routerAggReasons, got)
	}
	if got := metric(t, base, sidecarRemote); got != 1 {
		t.Errorf("%s = %v, want 1", sidecarRemote, got)
	}
	if got := metric(t, base, sidecarFallbacks); got != 0 {
		t.Errorf("%s = %v, want 0", sidecarFallbacks, got)
	}
}

// TestDisaggSurvivesPrefillDeath runs the production shape as separate processes: a prefill
// `kvgate sim`, a decode `kvgate sim` behind `kvgate sidecar`, and `kvgate router` with both
// in its endpoints file. Long prompts go prefill -> decode; the prefill engine is killed while
// requests are in flight, and every request still completes.
func TestDisaggSurvivesPrefillDeath(t *testing.T) {
	sim := func() (string, string, *proc) {
		port, kv := porttest.Free(t), porttest.Free(t)
		p := startProc(t, kvgateBin, "sim", "--host", "127.0.0.1", "--port", fmt.Sprint(port),
			"--kv-events", fmt.Sprintf("tcp://127.0.0.1:%d", kv), "--kv-events-replay", "", "--speed", disaggSimSpeedFlag)
		addr := fmt.Sprintf("127.0.0.1:%d", port)
		waitHTTP(t, p, "http://"+addr+"/health", 30*time.Second)
		return addr, fmt.Sprintf("tcp://127.0.0.1:%d", kv), p
	}
	pre, preKV, preProc := sim()
	dec, decKV, _ := sim()
	side := fmt.Sprintf("127.0.0.1:%d", porttest.Free(t))
	sideMetrics := fmt.Sprintf("127.0.0.1:%d", porttest.Free(t))
	sc := startProc(t, kvgateBin, "sidecar", "--listen", side, "--engine", dec, "--prefill", pre, "--metrics-addr", sideMetrics, "--name", "decode-0")
	waitHTTP(t, sc, "http://"+side+"/health", 30*time.Second)

	file := filepath.Join(t.TempDir(), "endpoints.yaml")
	eps := fmt.Sprintf(`- {name: prefill-0, address: %q, role: prefill, models: [%q], kv_events: %q}
- {name: decode-0, address: %q, role: decode, models: [%q], kv_events: %q, metrics_url: "http://%s/metrics"}
`, pre, model, preKV, side, model, decKV, dec)
	if err := os.WriteFile(file, []byte(eps), 0o600); err != nil {
		t.Fatal(err)
	}
	httpAddr := fmt.Sprintf("127.0.0.1:%d", porttest.Free(t))
	rt := startProc(t, kvgateBin, "router", "--grpc", fmt.Sprintf("127.0.0.1:%d", porttest.Free(t)), "--http", httpAddr, "--endpoints", file)
	base := "http://" + httpAddr
	waitHTTP(t, rt, base+"/health", 30*time.Second)

	c := client(base)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var (
		mu        sync.Mutex
		done      int
		remote    int
		fallbacks int
		errs      []error
		killed    = make(chan struct{})
		killOnce  sync.Once
		afterKill int
	)
	const workers, total = 3, 36
	jobs := make(chan int)
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for i := range jobs {
				var resp *http.Response
				cc, err := c.Chat.Completions.New(ctx, userChat(longPrompt(fmt.Sprint("death", i), disaggPromptWords), 16), option.WithResponseInto(&resp))
				mu.Lock()
				switch {
				case err != nil:
					errs = append(errs, fmt.Errorf("request %d: %w", i, err))
				case len(cc.Choices) == 0 || cc.Choices[0].Message.Content == "":
					errs = append(errs, fmt.Errorf("request %d: empty answer", i))
				default:
					done++
					if resp.Header.Get(hdrPrefill) != "" {
						remote++
					}
					if resp.Header.Get(hdrFallback) != "" {
						fallbacks++
						if p := resp.Header.Get(hdrPrefill); p != "" {
							errs = append(errs, fmt.Errorf("request %d: fell back (%s) yet names prefill %s", i, resp.Header.Get(hdrFallback), p))
						}
					}
					select {
					case <-killed:
						afterKill++
					default:
					}
				}
				n := done
				mu.Unlock()
				if n == total/3 {
					killOnce.Do(func() {
						_ = preProc.cmd.Process.Kill()
						close(killed)
					})
				}
			}
		})
	}
	for i := range total {
		jobs <- i
	}
	close(jobs)
	wg.Wait()

	for _, err := range errs {
		t.Error(err)
	}
	select {
	case <-killed:
	default:
		t.Fatal("the prefill engine was never killed")
	}
	t.Logf("%d answers, %d prefilled remotely, %d after the kill, %d sidecar fallbacks", done, remote, afterKill, fallbacks)
	if done != total || remote == 0 || afterKill == 0 {
		t.Errorf("%d of %d answered, %d remote prefills, %d after the kill", done, total, remote, afterKill)
	}
	if got := metric(t, "http://"+dec, simPulledBytes); got == 0 {
		t.Errorf("decode engine pulled no KV bytes")
	}
	// After the kill the router sees the prefill engine fail its scrape and stops naming it;
	// requests it named in between fall back in the sidecar.
	reasons := metric(t, base, routerAggReasons, `reason="prefill_unavailable"`)
	sidecarFell := metric(t, "http://"+sideMetrics, sidecarFallbacks)
	if reasons+sidecarFell == 0 {
		t.Errorf("after the kill: %s{prefill_unavailable} = %v and %s = %v; one must count the kill", routerAggReasons, reasons, sidecarFallbacks, sidecarFell)
	}
	if got := metric(t, "http://"+sideMetrics, sidecarRemote); int(got) != remote {
		t.Errorf("%s = %v, clients saw %d remote prefills", sidecarRemote, got, remote)
	}
}
