package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/kvgate/kvgate/gateway"
	"github.com/kvgate/kvgate/router"
)

// answer is one streamed chat as its client read it.
type answer struct {
	seen
	prompt string
	text   string
	ids    map[string]bool
	usage  int // completion_tokens of the usage chunks, summed
	usages int // usage chunks
}

// streamAnswer streams a chat (ignore_eos, usage on) and keeps its text, ids and usage.
func streamAnswer(ctx context.Context, base, prompt string, maxTokens int, streaming func(endpoint string, delta int)) answer {
	a := answer{prompt: prompt, ids: map[string]bool{}}
	body, _ := json.Marshal(map[string]any{
		"model": model, "stream": true, "max_tokens": maxTokens, "ignore_eos": true,
		"stream_options": map[string]any{"include_usage": true},
		"messages":       []map[string]string{{"role": "user", "content": prompt}},
	})
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, base+"/v1/chat/completions", bytes.NewReader(body))
	if err != nil {
		a.err = err
		return a
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		a.err = err
		return a
	}
	defer resp.Body.Close()
	a.status, a.endpoint = resp.StatusCode, resp.Header.Get(router.HeaderEndpoint)
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		a.err = fmt.Errorf("HTTP %d: %s", resp.StatusCode, b)
		return a
	}
	if streaming != nil {
		streaming(a.endpoint, 1)
		defer streaming(a.endpoint, -1)
	}
	var raw bytes.Buffer
	a.readSSE(io.TeeReader(resp.Body, &raw))
	var text strings.Builder
	sc := bufio.NewScanner(&raw)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		data, ok := strings.CutPrefix(sc.Text(), "data: ")
		if !ok || data == "[DONE]" {
			continue
		}
		var ch struct {
			ID      string `json:"id"`
			Choices []struct {
				Delta struct {
					Content string `json:"content"`
				} `json:"delta"`
			} `json:"choices"`
			Usage *struct {
				CompletionTokens int `json:"completion_tokens"`
			} `json:"usage"`
		}
		if json.Unmarshal([]byte(data), &ch) != nil {
			continue
		}
		if ch.ID != "" {
			a.ids[ch.ID] = true
		}
		for _, c := range ch.Choices {
			text.WriteString(c.Delta.Content)
		}
		if ch.Usage != nil {
			a.usages++
			a.usage += ch.Usage.CompletionTokens
		}
	}
	a.text = text.String()
	return a
}

// TestMigrationEngineKill SIGKILLs an engine streaming answers through `kvgate router`'s
// gateway. With migration on (the default), no client sees a failure: every stream reaches
// its max_tokens, as one stream (one id, one usage with the true count), and its text is
// exactly the answer an engine gives it uninterrupted (the sims' chained output makes a
// repeated or lost token a difference). With --migration-limit 0 the same kill cuts streams.
func TestMigrationEngineKill(t *testing.T) {
	const maxTokens = 100
	for _, tc := range []struct {
		name    string
		migrate bool
	}{{"migration on", true}, {"migration off", false}} {
		t.Run(tc.name, func(t *testing.T) {
			sims := startSims(t, 3, "--chain-output")
			var extra []string
			if !tc.migrate {
				extra = []string{"--migration-limit", "0"}
			}
			rt := startRouter(t, sims, nil, extra...)
			victim := sims[0]
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			var onVictim atomic.Int32
			streaming := func(endpoint string, d int) {
				if endpoint == victim.addr {
					onVictim.Add(int32(d))
				}
			}
			f := &figures{}
			var mu sync.Mutex
			var answers []answer
			load := startStreamLoad(ctx, f, 6, 60*time.Second, func(ctx context.Context, i int) seen {
				a := streamAnswer(ctx, rt.base, faultPrompt(i), maxTokens, streaming)
				mu.Lock()
				answers = append(answers, a)
				mu.Unlock()
				return a.seen
			})
			waitUntil(t, "a stream receiving the victim's body", func() bool { return onVictim.Load() >= 1 })
			if err := victim.p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			<-victim.p.done
			sent, _, _, _ := f.snapshot()
			load.waitSent(t, sent+12)
			load.stop()
			f.retried = metric(t, rt.base, gateway.MetricRetries)
			f.load = waitNoLoad(t, rt.base)
			f.crashes = crashes(t, survivor{"router", rt.p, rt.base + "/health"})
			migrations := metric(t, rt.base, gateway.MetricMigrations)
			f.log(t, fmt.Sprintf("engine SIGKILL, gateway, %s (%v migrations)", tc.name, migrations))

			if !tc.migrate {
				if f.cut == 0 {
					t.Errorf("no stream was cut although the victim had streams in flight and migration was off")
				}
				return
			}
			if f.cut != 0 || f.failed != 0 {
				t.Errorf("%d streams cut and %d failed with migration on: %q", f.cut, f.failed, f.errs)
			}
			if migrations < 1 {
				t.Errorf("%s = %v, want at least one (a stream was on the victim)", gateway.MetricMigrations, migrations)
			}
			if got := metric(t, rt.base, gateway.MetricMigratedRequests, `outcome="completed"`); got != migrations {
				t.Errorf("%v migrated requests completed for %v migrations", got, migrations)
			}
			// Every answer, migrated or not, is exactly the uninterrupted one.
			checked, moved := 0, 0
			for _, a := range answers {
				if a.class() != "ok" {
					continue
				}
				if len(a.ids) != 1 || a.usages != 1 || a.usage != maxTokens {
					t.Errorf("%q: ids %v, %d usage chunks counting %d tokens; want one id, one usage of %d", a.prompt, a.ids, a.usages, a.usage, maxTokens)
				}
				want := streamAnswer(ctx, "http://"+sims[1].addr, a.prompt, maxTokens, nil)
				if want.text != a.text {
					t.Errorf("%q: the client got\n%q\nan engine answers\n%q", a.prompt, a.text, want.text)
				}
				if a.endpoint == victim.addr {
					moved++
				}
				checked++
			}
			t.Logf("%d answers checked token for token, %d of them begun on the killed engine", checked, moved)
			if moved == 0 {
				t.Errorf("no completed answer had begun on the killed engine")
			}
		})
	}
}
