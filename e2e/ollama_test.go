package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"

	"github.com/kvgate/kvgate/engine/gguftest"
	"github.com/kvgate/kvgate/polltest"
	"github.com/kvgate/kvgate/porttest"
	"github.com/kvgate/kvgate/tokenizer"
)

// tinyModel is the name the test gives its random-weight model in Ollama.
const tinyModel = "tiny"

// qwenTemplate renders a chat as the embedded Qwen3 chat template does for plain messages
// with a generation prompt, so Ollama's prompt is kvgate's token for token.
const qwenTemplate = `{{- range .Messages }}<|im_start|>{{ .Role }}
{{ .Content }}<|im_end|>
{{ end }}<|im_start|>assistant
`

// ollamaFleet is two Ollama engines run by `kvgate workerd` (kind: ollama) with the tiny model.
type ollamaFleet struct {
	bin     string
	home    string
	workerd *proc
	addrs   map[string]string // engine name ("e2e-a") -> host:port
}

// startOllamaFleet writes the tiny model, starts workerd with two ollama engines on loopback
// and creates the model in their (shared) model store.
func startOllamaFleet(t *testing.T) *ollamaFleet {
	t.Helper()
	f := &ollamaFleet{bin: peer(t, "ollama"), home: t.TempDir(), addrs: map[string]string{}}
	vocab, err := gguftest.Qwen3Vocab("../tokenizer/models/qwen3/tokenizer.json.gz")
	if err != nil {
		t.Fatal(err)
	}
	gguf := filepath.Join(f.home, "tiny.gguf")
	if err := (gguftest.Llama{Vocab: vocab, Seed: 17}).WriteFile(gguf); err != nil {
		t.Fatal(err)
	}
	var cfg strings.Builder
	fmt.Fprintf(&cfg, "node: e2e\nlisten: 127.0.0.1:0\nstart_timeout: 2m\nengines:\n")
	for _, name := range []string{"a", "b"} {
		port := porttest.Free(t)
		f.addrs["e2e-"+name] = fmt.Sprintf("127.0.0.1:%d", port)
		// OLLAMA_DEBUG logs each request's cache slot: how much of the prompt was reused.
		fmt.Fprintf(&cfg, "  - {name: %s, kind: ollama, model: %s, port: %d, binary: %q, env: {HOME: %q, OLLAMA_MODELS: %q, OLLAMA_DEBUG: \"1\"}}\n",
			name, tinyModel, port, f.bin, f.home, filepath.Join(f.home, "models"))
	}
	cfgPath := filepath.Join(f.home, "workerd.yaml")
	if err := os.WriteFile(cfgPath, []byte(cfg.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	f.workerd = startProc(t, kvgateBin, "workerd", "--config", cfgPath, "--no-consul")
	for _, addr := range f.addrs {
		waitHTTP(t, f.workerd, "http://"+addr+"/", 2*time.Minute)
	}
	modelfile := filepath.Join(f.home, "Modelfile")
	mf := fmt.Sprintf("FROM %s\nTEMPLATE \"\"\"%s\"\"\"\nPARAMETER num_ctx 4096\n", gguf, qwenTemplate)
	if err := os.WriteFile(modelfile, []byte(mf), 0o644); err != nil {
		t.Fatal(err)
	}
	create := exec.Command(f.bin, "create", tinyModel, "-f", modelfile)
	create.Env = append(os.Environ(), "HOME="+f.home, "OLLAMA_HOST="+f.addrs["e2e-a"])
	if out, err := create.CombinedOutput(); err != nil {
		t.Fatalf("ollama create: %v\n%s", err, out)
	}
	return f
}

// engineOf names the engine at addr.
func (f *ollamaFleet) engineOf(t *testing.T, addr string) string {
	t.Helper()
	for name, a := range f.addrs {
		if a == addr {
			return name
		}
	}
	t.Fatalf("no engine at %q", addr)
	return ""
}

// slotLine is Ollama's debug line about a request's cache slot: of prompt tokens, used
// were already in the slot's KV cache, the rest computed.
var slotLine = regexp.MustCompile(`(?m)^(\S+) \| .*msg="loading cache slot" .*prompt=(\d+) used=(\d+) remaining=(\d+)`)

type slotUse struct{ prompt, used int }

// slots returns every cache-slot line of the engine so far.
func (f *ollamaFleet) slots(engine string) []slotUse {
	var out []slotUse
	for _, m := range slotLine.FindAllStringSubmatch(f.workerd.output(), -1) {
		if m[1] != engine {
			continue
		}
		p, _ := strconv.Atoi(m[2])
		u, _ := strconv.Atoi(m[3])
		out = append(out, slotUse{prompt: p, used: u})
	}
	return out
}

// ginLine is Ollama's access log line: status and its own measure of the request's time.
var ginLine = regexp.MustCompile(`(?m)^(\S+) \| \[GIN\] [^|]*\| (\d{3}) \|\s*(\S+) \|[^|]*\| POST\s+"/v1/chat/completions"`)

// served returns how long Ollama says each chat completion on the engine took, in order.
func (f *ollamaFleet) served(engine string) []time.Duration {
	var out []time.Duration
	for _, m := range ginLine.FindAllStringSubmatch(f.workerd.output(), -1) {
		if d, err := time.ParseDuration(m[3]); err == nil && m[1] == engine {
			out = append(out, d)
		}
	}
	return out
}

// marks counts each engine's access log lines so far: the next request's line comes after.
func (f *ollamaFleet) marks() map[string]int {
	m := map[string]int{}
	for name := range f.addrs {
		m[name] = len(f.served(name))
	}
	return m
}

// took waits for the engine's chat completion number n (0-based) and returns Ollama's time.
func (f *ollamaFleet) took(t *testing.T, engine string, n int) time.Duration {
	t.Helper()
	var d []time.Duration
	polltest.Until(t, 30*time.Second, engine+"'s access log line", func() bool { d = f.served(engine); return len(d) > n })
	return d[n]
}

// slot waits for the engine's cache-slot line number n (0-based) and returns it.
func (f *ollamaFleet) slot(t *testing.T, engine string, n int) slotUse {
	t.Helper()
	var s []slotUse
	polltest.Until(t, 30*time.Second, engine+"'s cache slot line", func() bool { s = f.slots(engine); return len(s) > n })
	return s[n]
}

// chat sends a one-message chat through c and returns the answer and the engine kvgate picked.
func chat(t *testing.T, ctx context.Context, c openai.Client, prompt string, maxTokens int64) (*openai.ChatCompletion, *http.Response) {
	t.Helper()
	var resp *http.Response
	p := userChat(prompt, maxTokens)
	p.Model = tinyModel
	cc, err := c.Chat.Completions.New(ctx, p, option.WithResponseInto(&resp))
	if err != nil {
		t.Fatal(err)
	}
	return cc, resp
}

// qwenTokens counts the prompt tokens of a chat with kvgate's embedded Qwen3 tokenizer.
func qwenTokens(t *testing.T, messages []map[string]string) int {
	t.Helper()
	tok, err := tokenizer.Default()
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := json.Marshal(messages)
	text, err := tok.RenderChat(tokenizer.ChatInput{Messages: raw, AddGenerationPrompt: true})
	if err != nil {
		t.Fatal(err)
	}
	return len(tok.Encode(text))
}

// nativeChat asks the engine at addr directly (Ollama's own API) for one token and returns
// Ollama's own prompt eval figures.
func nativeChat(t *testing.T, ctx context.Context, addr, prompt string) (count int, took time.Duration) {
	t.Helper()
	body, _ := json.Marshal(map[string]any{
		"model": tinyModel, "stream": false, "options": map[string]any{"num_predict": 4},
		"messages": []map[string]string{{"role": "user", "content": prompt}},
	})
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+addr+"/api/chat", bytes.NewReader(body))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out struct {
		PromptEvalCount    int   `json:"prompt_eval_count"`
		PromptEvalDuration int64 `json:"prompt_eval_duration"` // nanoseconds
		Error              string
	}
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("ollama /api/chat: %s %v %s", resp.Status, err, out.Error)
	}
	return out.PromptEvalCount, time.Duration(out.PromptEvalDuration)
}

// TestOllama runs two real Ollama engines (built by scripts/peers.sh, started by workerd's
// kind ollama) with a tiny random-weight model of the real Qwen3 vocabulary behind kvgate in
// approximate mode (Ollama publishes no KV events): kvgate counts Ollama's prompt tokens
// exactly; answers come back whole and streamed; a repeated 2k-token prompt goes back to the
// engine that holds it, which reuses its cached prefix (Ollama's own report), and a cached
// prompt costs Ollama a fraction of its cold prompt eval; round-robin sends the repeat to the
// other engine, which computes it all again.
func TestOllama(t *testing.T) {
	f := startOllamaFleet(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	// kvgate's tokenizer counts Ollama's prompt tokens exactly (Ollama's own count, from the
	// engine directly). The first request also loads the model.
	direct := openai.NewClient(option.WithBaseURL("http://"+f.addrs["e2e-a"]+"/v1"), option.WithAPIKey("unused"),
		option.WithMaxRetries(0), option.WithRequestTimeout(2*time.Minute))
	for _, msgs := range [][]map[string]string{
		{{"role": "user", "content": "Hello, world!"}},
		{{"role": "system", "content": "You answer in French."}, {"role": "user", "content": "Count: 1 2 3 10 100 1000.\n\nDone? <think> ünïcödé 漢字 🙂"}},
		{{"role": "user", "content": longPrompt("count", 60)}},
	} {
		p := openai.ChatCompletionNewParams{Model: tinyModel, MaxTokens: openai.Int(1)}
		for _, m := range msgs {
			if m["role"] == "system" {
				p.Messages = append(p.Messages, openai.SystemMessage(m["content"]))
			} else {
				p.Messages = append(p.Messages, openai.UserMessage(m["content"]))
			}
		}
		cc, err := direct.Chat.Completions.New(ctx, p)
		if err != nil {
			t.Fatal(err)
		}
		if want := qwenTokens(t, msgs); int(cc.Usage.PromptTokens) != want {
			t.Errorf("Ollama counted %d prompt tokens, kvgate's Qwen3 %d, for %q", cc.Usage.PromptTokens, want, msgs)
		}
	}

	modelsFile := filepath.Join(f.home, "models.yaml")
	if err := os.WriteFile(modelsFile, []byte("- name: "+tinyModel+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	upArgs := func(policy string) []string {
		args := []string{"--models", modelsFile, "--served-model", tinyModel, "--policy", policy}
		for _, e := range []string{"e2e-a", "e2e-b"} {
			args = append(args, "--endpoint", f.addrs[e], "--kv-events", "none")
		}
		return args
	}

	base, _ := up(t, upArgs("kv")...)
	c := client(base)

	t.Run("served and streamed", func(t *testing.T) {
		cc, resp := chat(t, ctx, c, "Say hello in French.", 8)
		if len(cc.Choices) != 1 || cc.Usage.CompletionTokens == 0 || cc.Usage.PromptTokens == 0 {
			t.Errorf("answer %+v", cc)
		}
		f.engineOf(t, resp.Header.Get("x-kvgate-endpoint"))
		p := userChat("Count to five.", 8)
		p.Model = tinyModel
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
		if chunks < 2 || len(acc.Choices) != 1 || acc.Usage.CompletionTokens == 0 {
			t.Errorf("%d chunks, %+v", chunks, acc.ChatCompletion)
		}
	})

	// The repeat goes back where the prompt is cached, and that engine reuses it.
	prompt := longPrompt("kv-repeat", 200)
	mark := f.marks()
	a, first := chat(t, ctx, c, prompt, 1)
	engine := f.engineOf(t, first.Header.Get("x-kvgate-endpoint"))
	coldTook := f.took(t, engine, mark[engine])
	n := len(f.slots(engine)) // the repeat's line comes after this many
	mark = f.marks()
	if a.Usage.PromptTokens < 1800 {
		t.Fatalf("prompt of %d tokens, want about 2k", a.Usage.PromptTokens)
	}
	_, second := chat(t, ctx, c, prompt, 1)
	if got := f.engineOf(t, second.Header.Get("x-kvgate-endpoint")); got != engine {
		t.Fatalf("kv policy: the repeat went to %s, the prompt is cached on %s", got, engine)
	}
	if h := second.Header.Get("x-kvgate-cached-blocks"); h == "" || h == "0" {
		t.Errorf("x-kvgate-cached-blocks %q on the repeat", h)
	}
	rep := f.slot(t, engine, n)
	if rep.prompt != int(a.Usage.PromptTokens) || rep.used < rep.prompt*9/10 {
		t.Errorf("kv policy: %s reused %d of the repeat's %d prompt tokens, want nearly all", engine, rep.used, rep.prompt)
	}
	// Ollama's own time for the request (its access log): the repeat costs a fraction.
	warmTook := f.took(t, engine, mark[engine])
	t.Logf("kv policy: repeat on %s, which reused %d of %d prompt tokens; Ollama served the prompt cold in %v, the repeat in %v",
		engine, rep.used, rep.prompt, coldTook, warmTook)
	if warmTook*2 > coldTook {
		t.Errorf("kv policy: Ollama took %v for the repeat, %v cold: want under half", warmTook, coldTook)
	}

	// A cached prompt costs Ollama a fraction of a cold one (its own prompt eval timings).
	cold := longPrompt("timing", 200)
	coldN, coldD := nativeChat(t, ctx, f.addrs["e2e-a"], cold)
	warmN, warmD := nativeChat(t, ctx, f.addrs["e2e-a"], cold)
	t.Logf("Ollama prompt eval of %d tokens: cold %v, cached %v (%.1fx)", coldN, coldD, warmD, float64(coldD)/float64(max(warmD, 1)))
	if coldN != warmN || warmD*2 > coldD {
		t.Errorf("prompt eval: cold %d tokens in %v, cached %d in %v: want the cached one under half", coldN, coldD, warmN, warmD)
	}

	// Round-robin sends the repeat to the other engine, which computes the prompt again.
	rrBase, _ := up(t, upArgs("round-robin")...)
	rr := client(rrBase)
	rrPrompt := longPrompt("rr-repeat", 200)
	mark = f.marks()
	_, r1 := chat(t, ctx, rr, rrPrompt, 1)
	e1 := f.engineOf(t, r1.Header.Get("x-kvgate-endpoint"))
	rrCold := f.took(t, e1, mark[e1])
	other := "e2e-a"
	if e1 == other {
		other = "e2e-b"
	}
	n = len(f.slots(other))
	mark = f.marks()
	_, r2 := chat(t, ctx, rr, rrPrompt, 1)
	if e2 := f.engineOf(t, r2.Header.Get("x-kvgate-endpoint")); e2 != other {
		t.Fatalf("round-robin sent both to %s", e1)
	}
	miss := f.slot(t, other, n)
	if miss.used > miss.prompt/10 {
		t.Errorf("round-robin: %s reused %d of %d prompt tokens it never saw", other, miss.used, miss.prompt)
	}
	t.Logf("round-robin: repeat on %s, which reused %d of %d prompt tokens; Ollama served the prompt in %v on %s, the repeat in %v",
		other, miss.used, miss.prompt, rrCold, e1, f.took(t, other, mark[other]))
}
