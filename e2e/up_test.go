package e2e

import (
	"context"
	"fmt"
	"net/http"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
)

const model = "Qwen/Qwen3-8B"

func client(base string) openai.Client {
	return openai.NewClient(option.WithBaseURL(base+"/v1"), option.WithAPIKey("unused"), option.WithMaxRetries(0),
		option.WithRequestTimeout(60*time.Second))
}

func userChat(content string, maxTokens int64) openai.ChatCompletionNewParams {
	return openai.ChatCompletionNewParams{
		Model:     model,
		Messages:  []openai.ChatCompletionMessageParamUnion{openai.UserMessage(content)},
		MaxTokens: openai.Int(maxTokens),
	}
}

// TestUpAnswersTheSDK checks `kvgate up` answers the official OpenAI Go SDK, streaming and
// not, and lists its model.
func TestUpAnswersTheSDK(t *testing.T) {
	base, _ := up(t, "--engines", "2", "--sim-speed", "20")
	c := client(base)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	models, err := c.Models.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(models.Data) != 1 || models.Data[0].ID != model {
		t.Errorf("models %+v", models.Data)
	}

	var resp *http.Response
	cc, err := c.Chat.Completions.New(ctx, userChat("Say hello in French.", 8), option.WithResponseInto(&resp))
	if err != nil {
		t.Fatal(err)
	}
	if len(cc.Choices) != 1 || cc.Choices[0].Message.Content == "" {
		t.Errorf("choices %+v", cc.Choices)
	}
	if cc.Usage.PromptTokens == 0 || cc.Usage.CompletionTokens == 0 {
		t.Errorf("usage %+v", cc.Usage)
	}
	if resp.Header.Get("x-kvgate-endpoint") == "" {
		t.Error("no x-kvgate-endpoint header")
	}

	p := userChat("Count to five.", 8)
	p.StreamOptions = openai.ChatCompletionStreamOptionsParam{IncludeUsage: openai.Bool(true)}
	st := c.Chat.Completions.NewStreaming(ctx, p)
	var acc openai.ChatCompletionAccumulator
	chunks := 0
	for st.Next() {
		acc.AddChunk(st.Current())
		chunks++
	}
	if err := st.Err(); err != nil {
		t.Fatal(err)
	}
	if chunks < 2 || acc.Choices[0].Message.Content == "" {
		t.Errorf("%d chunks, content %q", chunks, acc.Choices[0].Message.Content)
	}
	if acc.Usage.CompletionTokens == 0 {
		t.Errorf("stream usage %+v", acc.Usage)
	}

	// Errors come back OpenAI-shaped.
	_, err = c.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{Model: "no-such-model",
		Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("x")}})
	var apiErr *openai.Error
	if !asAPIError(err, &apiErr) || apiErr.StatusCode != 404 {
		t.Errorf("unknown model: %v", err)
	}
}

func asAPIError(err error, dst **openai.Error) bool {
	e, ok := err.(*openai.Error)
	if ok {
		*dst = e
	}
	return ok
}

// longPrompt is a prompt of a few thousand tokens, distinct per seed.
func longPrompt(seed string, words int) string {
	var b strings.Builder
	fmt.Fprintf(&b, "Document %s. ", seed)
	for i := range words {
		fmt.Fprintf(&b, "%s-%d lorem ipsum dolor sit amet. ", seed, i%97)
	}
	return b.String()
}

// TestRepeatedPromptHitsCache checks a long prompt sent twice goes to the same engine the
// second time and reports cached tokens.
func TestRepeatedPromptHitsCache(t *testing.T) {
	// No in-flight credit: only the engine's KV events can send the repeat back.
	base, _ := up(t, "--engines", "2", "--sim-speed", "20", "--pending-ttl=-1s")
	c := client(base)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	prompt := longPrompt("repeat", 300)
	var first, second *http.Response
	a, err := c.Chat.Completions.New(ctx, userChat(prompt, 4), option.WithResponseInto(&first))
	if err != nil {
		t.Fatal(err)
	}
	waitIndexed(t, base, first.Header.Get("x-kvgate-endpoint"), float64(a.Usage.PromptTokens/16-1))
	b, err := c.Chat.Completions.New(ctx, userChat(prompt, 4), option.WithResponseInto(&second))
	if err != nil {
		t.Fatal(err)
	}
	if a.Usage.PromptTokens < 1000 {
		t.Errorf("prompt of %d tokens: want a long one", a.Usage.PromptTokens)
	}
	e1, e2 := first.Header.Get("x-kvgate-endpoint"), second.Header.Get("x-kvgate-endpoint")
	if e1 == "" || e1 != e2 {
		t.Errorf("endpoints %q then %q: the repeat must go where the prefix is cached", e1, e2)
	}
	if got := b.Usage.PromptTokensDetails.CachedTokens; got == 0 || got < b.Usage.PromptTokens/2 {
		t.Errorf("repeat: cached %d of %d prompt tokens", got, b.Usage.PromptTokens)
	}
	if h := second.Header.Get("x-kvgate-cached-blocks"); h == "" || h == "0" {
		t.Errorf("x-kvgate-cached-blocks %q on the repeat", h)
	}
}

// load is what a workload did on each endpoint.
type load struct {
	requests int
	prefill  int64 // prompt tokens the engine had to compute (prompt - cached)
}

// workload runs groups x perGroup chats sharing a long per-group prefix, conc at a time, and
// returns the cache hit ratio (cached / prompt tokens) and the load on each endpoint.
func workload(t *testing.T, base string, groups, perGroup, conc int) (float64, map[string]*load) {
	t.Helper()
	c := client(base)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	type job struct{ g, i int }
	jobs := make(chan job)
	var mu sync.Mutex
	var cached, prompt int64
	per := map[string]*load{}
	var wg sync.WaitGroup
	errs := make(chan error, conc)
	for range conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range jobs {
				var resp *http.Response
				msgs := []openai.ChatCompletionMessageParamUnion{
					openai.SystemMessage(longPrompt(fmt.Sprint("group", j.g), 150)),
					openai.UserMessage(fmt.Sprintf("Question %d about group %d?", j.i, j.g)),
				}
				cc, err := c.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{Model: model, Messages: msgs, MaxTokens: openai.Int(4)}, option.WithResponseInto(&resp))
				if err != nil {
					select {
					case errs <- err:
					default:
					}
					continue
				}
				mu.Lock()
				cached += cc.Usage.PromptTokensDetails.CachedTokens
				prompt += cc.Usage.PromptTokens
				ep := resp.Header.Get("x-kvgate-endpoint")
				if per[ep] == nil {
					per[ep] = &load{}
				}
				per[ep].requests++
				per[ep].prefill += cc.Usage.PromptTokens - cc.Usage.PromptTokensDetails.CachedTokens
				mu.Unlock()
			}
		}()
	}
	// Interleave the groups, as independent users would.
	for i := range perGroup {
		for g := range groups {
			jobs <- job{g, i}
		}
	}
	close(jobs)
	wg.Wait()
	select {
	case err := <-errs:
		t.Fatal(err)
	default:
	}
	return float64(cached) / float64(prompt), per
}

// TestKVPolicyBeatsRoundRobin runs the same shared-prefix workload under both policies and
// compares the cache hit ratio, and the balance as the prefill work of the busiest engine
// (the engine that sets the pace): kv must hit more without loading any engine more than
// round-robin loads its busiest.
func TestKVPolicyBeatsRoundRobin(t *testing.T) {
	// Seven groups over four engines: round-robin cannot line groups up with engines by chance.
	const engines, groups, perGroup, conc = 4, 7, 6, 2
	type result struct {
		ratio       float64
		busiest     int64
		requestsMax int
	}
	res := map[string]result{}
	for _, policy := range []string{"kv", "round-robin"} {
		base, _ := up(t, "--engines", fmt.Sprint(engines), "--sim-speed", "20", "--policy", policy)
		ratio, per := workload(t, base, groups, perGroup, conc)
		keys := make([]string, 0, len(per))
		for k := range per {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		var r result
		r.ratio = ratio
		var reqs []int
		var work []int64
		for _, k := range keys {
			reqs = append(reqs, per[k].requests)
			work = append(work, per[k].prefill)
			r.busiest = max(r.busiest, per[k].prefill)
			r.requestsMax = max(r.requestsMax, per[k].requests)
		}
		t.Logf("%-12s hit ratio %.3f  requests per endpoint %v  prefill tokens per endpoint %v", policy, ratio, reqs, work)
		res[policy] = r
	}
	kv, rr := res["kv"], res["round-robin"]
	if kv.ratio <= rr.ratio {
		t.Errorf("kv hit ratio %.3f is not above round-robin's %.3f", kv.ratio, rr.ratio)
	}
	if kv.busiest > rr.busiest {
		t.Errorf("kv's busiest engine computed %d prefill tokens, round-robin's %d", kv.busiest, rr.busiest)
	}
}
