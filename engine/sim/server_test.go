package sim

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-zeromq/zmq4"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"go.uber.org/goleak"

	"github.com/kvgate/kvgate/engine"
	"github.com/kvgate/kvgate/openai"
)

// TestMain fails the package when a test leaves goroutines behind, except zmq4's PUB writer:
// zmq4 v0.17's socket Close never reaches pubMWriter.Close, so one goroutine per closed
// publisher stays parked (a zmq4 bug, not ours).
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.IgnoreAnyFunction("github.com/go-zeromq/zmq4.(*pubMWriter).run"))
}

// testServer starts a server on loopback port 0 with KV events and replay on, and stops it
// when the test ends.
func testServer(t testing.TB, cfg ServerConfig) *Server {
	t.Helper()
	if cfg.KVEvents == "" {
		cfg.KVEvents = "tcp://127.0.0.1:0"
	}
	if cfg.KVEventsReplay == "" {
		cfg.KVEventsReplay = "tcp://127.0.0.1:0"
	}
	if cfg.BlockBytes == 0 {
		cfg.BlockBytes = 4096
	}
	if cfg.Engine.NumBlocks == 0 {
		cfg.Engine.NumBlocks = 2048
	}
	s, err := NewServer(cfg, slog.New(slog.DiscardHandler), nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("Run did not return")
		}
	})
	return s
}

// client is an HTTP client whose connections close when the test ends.
func client(t *testing.T) *http.Client {
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 30 * time.Second}
}

func post(t *testing.T, c *http.Client, s *Server, path string, body any) (int, []byte) {
	t.Helper()
	b, _ := json.Marshal(body)
	resp, err := c.Post(s.URL()+path, "application/json", bytes.NewReader(b))
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

func completion(t *testing.T, c *http.Client, s *Server, body map[string]any) openai.Completion {
	t.Helper()
	code, out := post(t, c, s, "/v1/completions", body)
	if code != http.StatusOK {
		t.Fatalf("status %d: %s", code, out)
	}
	var r openai.Completion
	if err := json.Unmarshal(out, &r); err != nil {
		t.Fatal(err)
	}
	return r
}

// longText is a prompt of roughly n tokens that shares nothing with other seeds' texts.
func longText(seed, n int) string {
	var b strings.Builder
	fmt.Fprintf(&b, "Document %d.", seed)
	for i := range n {
		fmt.Fprintf(&b, " %s", words[(seed*7919+i*31)%len(words)])
	}
	return b.String()
}

// replay fetches every batch the server's publisher still buffers, through vLLM's replay
// protocol, and decodes them.
func replay(t *testing.T, s *Server) []engine.EventBatch {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	d := zmq4.NewDealer(ctx)
	defer d.Close()
	if err := d.Dial(s.KVEventsReplayAddr()); err != nil {
		t.Fatal(err)
	}
	if err := d.Send(zmq4.NewMsgFrom([]byte{}, make([]byte, 8))); err != nil {
		t.Fatal(err)
	}
	var out []engine.EventBatch
	for {
		msg, err := d.Recv()
		if err != nil {
			t.Fatalf("replay: %v", err)
		}
		f := msg.Frames
		if len(f) != 3 {
			t.Fatalf("replay frame count %d", len(f))
		}
		if binary.BigEndian.Uint64(f[1]) == ^uint64(0) {
			return out
		}
		if seq := binary.BigEndian.Uint64(f[1]); seq != uint64(len(out)) {
			t.Fatalf("replay seq %d, want %d", seq, len(out))
		}
		b, err := engine.DecodeBatch(f[2])
		if err != nil {
			t.Fatalf("decode batch %d: %v", len(out), err)
		}
		out = append(out, b)
	}
}

func events(bs []engine.EventBatch) []engine.Event {
	var out []engine.Event
	for _, b := range bs {
		out = append(out, b.Events...)
	}
	return out
}

func TestRepeatedPromptIsCachedAndFaster(t *testing.T) {
	s := testServer(t, ServerConfig{Engine: Config{NumBlocks: 4096}})
	c := client(t)
	text := longText(1, 6000)
	// Streaming, so the client sees its own TTFT; the engine runs at real speed, where a cold
	// 6000-token prefill takes ~330ms and a cached one ~7ms.
	ttft := func() (time.Duration, *openai.Usage) {
		b, _ := json.Marshal(map[string]any{"prompt": text, "max_tokens": 3, "ignore_eos": true, "stream": true,
			"stream_options": map[string]any{"include_usage": true}})
		start := time.Now()
		resp, err := c.Post("http://"+s.Addr()+"/v1/completions", "application/json", bytes.NewReader(b))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		rd := openai.NewSSEReader(resp.Body)
		var first time.Duration
		var u *openai.Usage
		for {
			data, err := rd.Next()
			if err != nil {
				t.Fatalf("stream ended without [DONE]: %v", err)
			}
			if string(data) == openai.Done {
				break
			}
			var ch openai.CompletionChunk
			if err := json.Unmarshal(data, &ch); err != nil {
				t.Fatal(err)
			}
			if first == 0 && len(ch.Choices) > 0 && ch.Choices[0].Text != "" {
				first = time.Since(start)
			}
			if ch.Usage != nil {
				u = ch.Usage
			}
		}
		return first, u
	}
	cold, u1 := ttft()
	warm, u2 := ttft()
	if u1 == nil || u2 == nil {
		t.Fatal("no usage chunk")
	}
	if u1.CachedTokens() != 0 || u2.CachedTokens() == 0 || u2.CachedTokens() > u2.PromptTokens {
		t.Fatalf("cached tokens cold %d warm %d of %d", u1.CachedTokens(), u2.CachedTokens(), u2.PromptTokens)
	}
	if u2.PromptTokens-u2.CachedTokens() > 16 {
		t.Fatalf("warm request recomputed %d tokens", u2.PromptTokens-u2.CachedTokens())
	}
	if warm*3 > cold {
		t.Fatalf("warm TTFT %v is not well below cold TTFT %v", warm, cold)
	}
	if st := s.Stats(); st.PrefixHits == 0 || st.PrefixQueries == 0 {
		t.Fatalf("stats %+v", st)
	}
}

func TestKVEventsOverZMQ(t *testing.T) {
	s := testServer(t, ServerConfig{})
	c := client(t)

	// A live subscriber: PUB drops what is sent before the subscription reaches it, so
	// send requests until one's events arrive.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	sub := zmq4.NewSub(ctx)
	defer sub.Close()
	if err := sub.Dial(s.KVEventsAddr()); err != nil {
		t.Fatal(err)
	}
	if err := sub.SetOption(zmq4.OptionSubscribe, ""); err != nil {
		t.Fatal(err)
	}
	msgs := make(chan zmq4.Msg, 100)
	go func() {
		defer close(msgs)
		for {
			m, err := sub.Recv()
			if err != nil {
				return
			}
			msgs <- m
		}
	}()
	var got engine.EventBatch
	for i := 0; got.Events == nil; i++ {
		completion(t, c, s, map[string]any{"prompt": longText(100+i, 100), "max_tokens": 1})
		select {
		case m := <-msgs:
			if len(m.Frames) != 3 || len(m.Frames[1]) != 8 {
				t.Fatalf("frames %v", m.Frames)
			}
			b, err := engine.DecodeBatch(m.Frames[2])
			if err != nil {
				t.Fatal(err)
			}
			got = b
		case <-time.After(300 * time.Millisecond):
		case <-ctx.Done():
			t.Fatal("no live KV events")
		}
	}
	cancel()
	for range msgs {
	}

	// Everything, in order, through the replay socket: the startup AllBlocksCleared, then
	// the stored blocks of a known prompt with its exact token ids.
	text := longText(7, 200)
	code, out := post(t, c, s, "/tokenize", map[string]any{"prompt": text})
	if code != 200 {
		t.Fatalf("tokenize: %d %s", code, out)
	}
	var tk struct {
		Tokens []uint32 `json:"tokens"`
		Count  int      `json:"count"`
	}
	json.Unmarshal(out, &tk)
	completion(t, c, s, map[string]any{"prompt": text, "max_tokens": 1})
	bs := replay(t, s)
	if len(bs) == 0 || len(bs[0].Events) != 1 || bs[0].Events[0].Kind != engine.AllBlocksCleared {
		t.Fatalf("first batch is not AllBlocksCleared: %+v", bs)
	}
	byHash := map[engine.BlockHash]engine.Event{}
	var chain []uint32
	for _, ev := range events(bs) {
		if ev.Kind != engine.BlockStored {
			continue
		}
		if ev.BlockSize != 16 || len(ev.TokenIDs) != 16*len(ev.BlockHashes) {
			t.Fatalf("stored event %+v", ev)
		}
		for _, h := range ev.BlockHashes {
			byHash[h] = ev
		}
		if len(ev.TokenIDs) >= 16 && equalU32(ev.TokenIDs[:16], tk.Tokens[:16]) && ev.Parent == "" {
			chain = append(chain, ev.TokenIDs...)
		}
	}
	full := tk.Count / 16 * 16
	if len(chain) < full-16 || !equalU32(chain[:full-16], tk.Tokens[:full-16]) {
		t.Fatalf("stored tokens do not match the prompt's: %d stored for %d prompt tokens", len(chain), tk.Count)
	}
}

func equalU32(a, b []uint32) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestFillingTheCacheEmitsBlockRemoved(t *testing.T) {
	s := testServer(t, ServerConfig{Engine: Config{NumBlocks: 40}, HashFormat: engine.HashBytes})
	c := client(t)
	for i := range 6 {
		completion(t, c, s, map[string]any{"prompt": longText(i, 150), "max_tokens": 2, "ignore_eos": true})
	}
	stored, removed := map[engine.BlockHash]bool{}, 0
	for _, ev := range events(replay(t, s)) {
		for _, h := range ev.BlockHashes {
			if len(h) != 32 {
				t.Fatalf("hash of %d bytes with HashBytes", len(h))
			}
			switch ev.Kind {
			case engine.BlockStored:
				stored[h] = true
			case engine.BlockRemoved:
				if !stored[h] {
					t.Fatal("removed a block that was never stored")
				}
				delete(stored, h)
				removed++
			}
		}
	}
	if removed == 0 {
		t.Fatal("no BlockRemoved although 6 prompts of ~10 blocks went through 40 blocks")
	}
	if st := s.Stats(); len(stored) != st.CachedBlocks {
		t.Fatalf("events leave %d blocks cached, the engine has %d", len(stored), st.CachedBlocks)
	}
}

func TestRestartPublishesAllBlocksCleared(t *testing.T) {
	// One port for events across two server lifetimes, as a restarted vLLM keeps its endpoint.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ep := "tcp://" + ln.Addr().String()
	ln.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	sub := zmq4.NewSub(ctx, zmq4.WithDialerMaxRetries(-1), zmq4.WithDialerRetry(20*time.Millisecond), zmq4.WithAutomaticReconnect(true))
	defer sub.Close()
	sub.SetOption(zmq4.OptionSubscribe, "")
	type msg struct {
		seq uint64
		b   engine.EventBatch
	}
	msgs := make(chan msg, 1000)
	go func() {
		defer close(msgs)
		for {
			m, err := sub.Recv()
			if err != nil {
				return
			}
			if b, err := engine.DecodeBatch(m.Frames[2]); err == nil {
				msgs <- msg{binary.BigEndian.Uint64(m.Frames[1]), b}
			}
		}
	}()

	var last uint64
	for life := range 2 {
		s, err := NewServer(ServerConfig{KVEvents: ep, KVEventsReplay: "tcp://127.0.0.1:0", Engine: Config{NumBlocks: 256}}, nil, nil)
		if err != nil {
			t.Fatalf("life %d: %v", life, err)
		}
		if life == 0 {
			go sub.Dial(ep)
		}
		rctx, rcancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- s.Run(rctx) }()
		c := client(t)
		// Send requests until the subscriber hears this life's events. In the second life the
		// sequence numbers start again: that is how a subscriber that stayed connected learns
		// of the restart, and the replay from 0 starts with AllBlocksCleared.
		// The first life runs until seq 5, so that the second life's restarted numbering shows.
		heard := false
		for i := 0; !heard || life == 0 && last < 5; i++ {
			heard = false
			completion(t, c, s, map[string]any{"prompt": longText(life*1000+i, 40), "max_tokens": 1})
			for wait := time.After(300 * time.Millisecond); !heard; {
				select {
				case m := <-msgs:
					if life == 1 && m.seq >= last {
						t.Fatalf("sequence did not restart: %d after %d", m.seq, last)
					}
					last, heard = m.seq, true
				case <-wait:
					wait = nil
				case <-ctx.Done():
					t.Fatal("timed out")
				}
				if wait == nil {
					break
				}
			}
			for len(msgs) > 0 {
				last = (<-msgs).seq
			}
		}
		bs := replay(t, s)
		if len(bs) == 0 || len(bs[0].Events) != 1 || bs[0].Events[0].Kind != engine.AllBlocksCleared {
			t.Fatalf("life %d: batch 0 is not AllBlocksCleared: %+v", life, bs)
		}
		if life == 1 {
			for _, ev := range events(bs) {
				if ev.Kind == engine.BlockRemoved {
					t.Fatal("the restarted engine removed blocks it never stored")
				}
			}
		}
		rcancel()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
	cancel()
	sub.Close()
	for range msgs {
	}
}

func TestMetricsParseWithVLLMNames(t *testing.T) {
	s := testServer(t, ServerConfig{})
	c := client(t)
	text := longText(3, 100)
	completion(t, c, s, map[string]any{"prompt": text, "max_tokens": 4})
	completion(t, c, s, map[string]any{"prompt": text, "max_tokens": 4})
	resp, err := c.Get("http://" + s.Addr() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	// The router reads load from it as from a vLLM.
	if l, err := engine.ParseLoad(bytes.NewReader(body)); err != nil || l.Running != 0 || l.KVUsage != 0 {
		t.Fatalf("engine.ParseLoad: %+v, %v", l, err)
	}
	for _, name := range []string{MetricRunning, MetricWaiting, MetricKVUsage, MetricPrefixQueries, MetricPrefixHits,
		MetricTTFT, MetricITL, MetricE2E, MetricPromptTokens, MetricGenerationTokens, MetricRequestSuccess, MetricCacheConfig} {
		if fams[strings.TrimSuffix(name, "_total")] == nil && fams[name] == nil {
			t.Errorf("metric %s missing", name)
		}
	}
	value := func(name string) float64 {
		f := fams[strings.TrimSuffix(name, "_total")]
		if f == nil {
			f = fams[name]
		}
		if f == nil || len(f.Metric) == 0 {
			return -1
		}
		m := f.Metric[0]
		switch {
		case m.Counter != nil:
			return m.Counter.GetValue()
		case m.Gauge != nil:
			return m.Gauge.GetValue()
		case m.Histogram != nil:
			return float64(m.Histogram.GetSampleCount())
		}
		return -1
	}
	if q, h := value(MetricPrefixQueries), value(MetricPrefixHits); q <= 0 || h <= 0 || h > q {
		t.Fatalf("prefix cache queries %v hits %v", q, h)
	}
	if n := value(MetricTTFT); n != 2 {
		t.Fatalf("TTFT observations %v, want 2", n)
	}
	if g := value(MetricGenerationTokens); g != 8 {
		t.Fatalf("generation tokens %v, want 8", g)
	}
}

func TestPrefillDecodeTransfer(t *testing.T) {
	pre := testServer(t, ServerConfig{BlockBytes: 8192})
	dec := testServer(t, ServerConfig{BlockBytes: 8192})
	c := client(t)
	text := longText(11, 500)

	p := completion(t, c, pre, map[string]any{"prompt": text, "max_tokens": 1, "kv_transfer_params": map[string]any{"do_remote_decode": true}})
	var kv map[string]any
	if err := json.Unmarshal(p.KVTransferParams, &kv); err != nil {
		t.Fatalf("prefill response kv_transfer_params %s: %v", p.KVTransferParams, err)
	}
	for _, k := range []string{"do_remote_prefill", "do_remote_decode", "remote_block_ids", "remote_engine_id", "remote_host", "remote_port", "tp_size"} {
		if _, ok := kv[k]; !ok {
			t.Fatalf("kv_transfer_params lacks %s: %s", k, p.KVTransferParams)
		}
	}
	ids := kv["remote_block_ids"].([]any)
	if kv["do_remote_prefill"] != true || len(ids) != p.Usage.PromptTokens/16 {
		t.Fatalf("kv_transfer_params %s for %d prompt tokens", p.KVTransferParams, p.Usage.PromptTokens)
	}
	if st := pre.Stats(); st.Held != 1 {
		t.Fatalf("prefill engine holds %d requests", st.Held)
	}

	d := completion(t, c, dec, map[string]any{"prompt": text, "max_tokens": 5, "ignore_eos": true, "kv_transfer_params": kv})
	if d.Usage.CachedTokens() != len(ids)*16 {
		t.Fatalf("decode cached %d tokens, want %d", d.Usage.CachedTokens(), len(ids)*16)
	}
	if d.Usage.CompletionTokens != 5 {
		t.Fatalf("decode usage %+v", d.Usage)
	}
	if st := pre.Stats(); st.Held != 0 || st.FreeBlocks != st.NumBlocks {
		t.Fatalf("prefill engine did not free the pulled blocks: %+v", st)
	}
	if got := counter(t, c, dec, MetricTransferBytes); got != float64(len(ids)*8192) {
		t.Fatalf("transferred %v bytes, want %d", got, len(ids)*8192)
	}
	if got := counter(t, c, pre, MetricTransferServed); got != float64(len(ids)*8192) {
		t.Fatalf("served %v bytes, want %d", got, len(ids)*8192)
	}
	// The decode engine published the pulled blocks.
	n := 0
	for _, ev := range events(replay(t, dec)) {
		if ev.Kind == engine.BlockStored {
			n += len(ev.BlockHashes)
		}
	}
	if n < len(ids) {
		t.Fatalf("decode engine stored %d blocks, pulled %d", n, len(ids))
	}

	// The same params again: the blocks are gone, so the decode engine prefills locally.
	text2 := longText(12, 300)
	kv["remote_request_id"] = "nope"
	d2 := completion(t, c, dec, map[string]any{"prompt": text2, "max_tokens": 2, "kv_transfer_params": kv})
	if d2.Usage.CachedTokens() != 0 || len(d2.Choices) != 1 {
		t.Fatalf("fallback response %+v", d2)
	}
	if got := counter(t, c, dec, MetricTransferFailures); got != 1 {
		t.Fatalf("transfer failures %v, want 1", got)
	}
}

func counter(t *testing.T, c *http.Client, s *Server, name string) float64 {
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
	return f.Metric[0].GetCounter().GetValue()
}

// chatStream runs a streamed chat completion and returns the text of each choice, the finish
// reasons and the usage chunk.
func chatStream(t *testing.T, c *http.Client, s *Server, body map[string]any) (map[int]string, map[int]string, *openai.Usage) {
	t.Helper()
	body["stream"] = true
	b, _ := json.Marshal(body)
	resp, err := c.Post("http://"+s.Addr()+"/v1/chat/completions", "application/json", bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
		out, _ := io.ReadAll(resp.Body)
		t.Fatalf("status %d: %s", resp.StatusCode, out)
	}
	texts, fins := map[int]string{}, map[int]string{}
	var u *openai.Usage
	rd := openai.NewSSEReader(resp.Body)
	for {
		data, err := rd.Next()
		if err != nil {
			t.Fatalf("no [DONE]: %v", err)
		}
		if string(data) == openai.Done {
			return texts, fins, u
		}
		var ch openai.ChatCompletionChunk
		if err := json.Unmarshal(data, &ch); err != nil {
			t.Fatal(err)
		}
		if ch.Object != openai.ObjectChatCompletionChunk {
			t.Fatalf("object %q", ch.Object)
		}
		if u != nil {
			t.Fatal("chunk after the usage chunk")
		}
		for _, cc := range ch.Choices {
			if cc.Delta.Content != nil {
				texts[cc.Index] += *cc.Delta.Content
			}
			if cc.FinishReason != nil {
				if _, dup := fins[cc.Index]; dup {
					t.Fatalf("choice %d finished twice", cc.Index)
				}
				fins[cc.Index] = *cc.FinishReason
			}
		}
		u = ch.Usage
	}
}

func chat(t *testing.T, c *http.Client, s *Server, body map[string]any) openai.ChatCompletion {
	t.Helper()
	code, out := post(t, c, s, "/v1/chat/completions", body)
	if code != 200 {
		t.Fatalf("status %d: %s", code, out)
	}
	var r openai.ChatCompletion
	if err := json.Unmarshal(out, &r); err != nil {
		t.Fatal(err)
	}
	return r
}

func msgs(text string) []map[string]any {
	return []map[string]any{{"role": "user", "content": text}}
}

func TestChatStreamingMatchesWhole(t *testing.T) {
	s := testServer(t, ServerConfig{Engine: Config{Timing: Timing{Speed: 20}}})
	c := client(t)
	body := func() map[string]any {
		return map[string]any{"model": s.cfg.Model, "messages": msgs("Tell me a story about a lighthouse."), "max_tokens": 40, "ignore_eos": true}
	}
	whole := chat(t, c, s, body())
	sb := body()
	sb["stream_options"] = map[string]any{"include_usage": true}
	texts, fins, u := chatStream(t, c, s, sb)
	if texts[0] != *whole.Choices[0].Message.Content || texts[0] == "" {
		t.Fatalf("streamed %q, whole %q", texts[0], *whole.Choices[0].Message.Content)
	}
	if fins[0] != "length" || *whole.Choices[0].FinishReason != "length" {
		t.Fatalf("finish reasons %v %v", fins, *whole.Choices[0].FinishReason)
	}
	if u == nil || u.CompletionTokens != 40 || u.PromptTokens != whole.Usage.PromptTokens || u.TotalTokens != u.PromptTokens+40 {
		t.Fatalf("usage %+v, whole %+v", u, whole.Usage)
	}
	if u.CachedTokens() == 0 {
		t.Fatal("the second identical chat had no cached tokens")
	}
	// Without include_usage there is no usage chunk.
	if _, _, u := chatStream(t, c, s, body()); u != nil {
		t.Fatal("usage chunk without include_usage")
	}
}

func TestSamplingParameters(t *testing.T) {
	s := testServer(t, ServerConfig{Engine: Config{Timing: Timing{Speed: 20}}})
	c := client(t)
	prompt := "Name the planets of the solar system."

	t.Run("n", func(t *testing.T) {
		r := chat(t, c, s, map[string]any{"messages": msgs(prompt), "n": 3, "max_tokens": 12, "ignore_eos": true})
		if len(r.Choices) != 3 {
			t.Fatalf("%d choices", len(r.Choices))
		}
		seen := map[string]bool{}
		for i, ch := range r.Choices {
			if ch.Index != i || seen[*ch.Message.Content] {
				t.Fatalf("choice %d: %+v", i, ch)
			}
			seen[*ch.Message.Content] = true
		}
		if r.Usage.CompletionTokens != 36 {
			t.Fatalf("usage %+v", r.Usage)
		}
		texts, fins, _ := chatStream(t, c, s, map[string]any{"messages": msgs(prompt), "n": 3, "max_tokens": 12, "ignore_eos": true})
		for i := range 3 {
			if texts[i] != *r.Choices[i].Message.Content || fins[i] != "length" {
				t.Fatalf("streamed choice %d %q, whole %q", i, texts[i], *r.Choices[i].Message.Content)
			}
		}
	})
	t.Run("eos", func(t *testing.T) {
		r := chat(t, c, s, map[string]any{"messages": msgs(prompt), "max_tokens": 1000})
		if *r.Choices[0].FinishReason != "stop" || r.Usage.CompletionTokens >= 1000 || r.Usage.CompletionTokens < 8 {
			t.Fatalf("without ignore_eos: %q after %d tokens", *r.Choices[0].FinishReason, r.Usage.CompletionTokens)
		}
		r2 := chat(t, c, s, map[string]any{"messages": msgs(prompt), "max_tokens": 1000})
		if *r2.Choices[0].Message.Content != *r.Choices[0].Message.Content {
			t.Fatal("output is not deterministic")
		}
	})
	t.Run("stop", func(t *testing.T) {
		full := chat(t, c, s, map[string]any{"messages": msgs(prompt), "max_tokens": 30, "ignore_eos": true})
		text := *full.Choices[0].Message.Content
		ws := strings.Fields(text)
		stop := " " + ws[10]
		want := text[:strings.Index(text, stop)]
		r := chat(t, c, s, map[string]any{"messages": msgs(prompt), "max_tokens": 30, "ignore_eos": true, "stop": []string{stop}})
		if got := *r.Choices[0].Message.Content; got != want || *r.Choices[0].FinishReason != "stop" {
			t.Fatalf("with stop %q: %q (%s), want %q", stop, got, *r.Choices[0].FinishReason, want)
		}
		if string(r.Choices[0].StopReason) != fmt.Sprintf("%q", stop) {
			t.Fatalf("stop_reason %s", r.Choices[0].StopReason)
		}
		texts, fins, _ := chatStream(t, c, s, map[string]any{"messages": msgs(prompt), "max_tokens": 30, "ignore_eos": true, "stop": stop})
		if texts[0] != want || fins[0] != "stop" {
			t.Fatalf("streamed with stop: %q, want %q", texts[0], want)
		}
		if st := s.Stats(); st.Running != 0 || st.FreeBlocks != st.NumBlocks {
			t.Fatalf("stopped request still holds blocks: %+v", st)
		}
	})
	t.Run("completions batch", func(t *testing.T) {
		r := completion(t, c, s, map[string]any{"prompt": []string{"one two three", "four five six"}, "n": 2, "max_tokens": 3, "ignore_eos": true})
		if len(r.Choices) != 4 || r.Usage.CompletionTokens != 12 {
			t.Fatalf("choices %d usage %+v", len(r.Choices), r.Usage)
		}
		if r.Object != openai.ObjectTextCompletion || r.Choices[3].Index != 3 {
			t.Fatalf("response %+v", r)
		}
	})
}

func TestBadRequests(t *testing.T) {
	s := testServer(t, ServerConfig{Engine: Config{NumBlocks: 64}})
	c := client(t)
	tests := []struct {
		name, path string
		body       any
		status     int
		param      string
	}{
		{"not json", "/v1/chat/completions", "{", 400, ""},
		{"no messages", "/v1/chat/completions", map[string]any{"model": tokenizerModel()}, 400, "messages"},
		{"unknown model", "/v1/completions", map[string]any{"model": "nope", "prompt": "hi"}, 404, "model"},
		{"bad max_tokens", "/v1/completions", map[string]any{"prompt": "hi", "max_tokens": 0}, 400, "max_tokens"},
		{"too long", "/v1/completions", map[string]any{"prompt": longText(1, 2000), "max_tokens": 10}, 400, "prompt"},
		{"bad kv params", "/v1/completions", map[string]any{"prompt": "hi", "kv_transfer_params": map[string]any{"remote_block_ids": "x"}}, 400, "kv_transfer_params"},
		{"tokenize nothing", "/tokenize", map[string]any{}, 400, "prompt"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var b []byte
			if s, ok := tt.body.(string); ok {
				b = []byte(s)
			} else {
				b, _ = json.Marshal(tt.body)
			}
			resp, err := c.Post("http://"+s.Addr()+tt.path, "application/json", bytes.NewReader(b))
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			var e struct {
				Error struct {
					Message string  `json:"message"`
					Type    string  `json:"type"`
					Param   *string `json:"param"`
				} `json:"error"`
			}
			if err := json.NewDecoder(resp.Body).Decode(&e); err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode != tt.status || e.Error.Message == "" || e.Error.Type == "" {
				t.Fatalf("status %d, error %+v", resp.StatusCode, e.Error)
			}
			if tt.param != "" && (e.Error.Param == nil || *e.Error.Param != tt.param) {
				t.Fatalf("param %v, want %s", e.Error.Param, tt.param)
			}
		})
	}
}

func tokenizerModel() string { return "Qwen/Qwen3-8B" }

func TestModelsHealthTokenize(t *testing.T) {
	s := testServer(t, ServerConfig{Engine: Config{NumBlocks: 100}})
	c := client(t)
	resp, err := c.Get("http://" + s.Addr() + "/health")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("health %d", resp.StatusCode)
	}
	resp, err = c.Get("http://" + s.Addr() + "/v1/models")
	if err != nil {
		t.Fatal(err)
	}
	var ml openai.ModelList
	json.NewDecoder(resp.Body).Decode(&ml)
	resp.Body.Close()
	if len(ml.Data) != 1 || ml.Data[0].ID != tokenizerModel() || ml.Data[0].MaxModelLen != 1600 {
		t.Fatalf("models %+v", ml)
	}
	code, out := post(t, c, s, "/tokenize", map[string]any{"model": tokenizerModel(), "messages": msgs("hello")})
	var tk struct {
		Tokens      []uint32 `json:"tokens"`
		Count       int      `json:"count"`
		MaxModelLen int      `json:"max_model_len"`
	}
	json.Unmarshal(out, &tk)
	if code != 200 || tk.Count != len(tk.Tokens) || tk.Count < 5 || tk.MaxModelLen != 1600 {
		t.Fatalf("tokenize chat: %d %s", code, out)
	}
	// The chat's prompt_tokens agree with /tokenize.
	r := chat(t, c, s, map[string]any{"messages": msgs("hello"), "max_tokens": 1})
	if r.Usage.PromptTokens != tk.Count {
		t.Fatalf("chat prompt_tokens %d, tokenize count %d", r.Usage.PromptTokens, tk.Count)
	}
}

func TestClientDisconnectFreesBlocks(t *testing.T) {
	s := testServer(t, ServerConfig{Engine: Config{NumBlocks: 512}})
	c := client(t)
	ctx, cancel := context.WithCancel(context.Background())
	b, _ := json.Marshal(map[string]any{"prompt": longText(5, 300), "max_tokens": 5000, "ignore_eos": true, "stream": true})
	req, _ := http.NewRequestWithContext(ctx, "POST", "http://"+s.Addr()+"/v1/completions", bytes.NewReader(b))
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	rd := openai.NewSSEReader(resp.Body)
	for range 3 { // a few tokens, so the request is running with its blocks
		if _, err := rd.Next(); err != nil {
			t.Fatal(err)
		}
	}
	if st := s.Stats(); st.Running != 1 || st.FreeBlocks == st.NumBlocks {
		t.Fatalf("before disconnect: %+v", st)
	}
	cancel()
	resp.Body.Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		st := s.Stats()
		if st.Running == 0 && st.Waiting == 0 && st.FreeBlocks == st.NumBlocks {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("blocks not freed after disconnect: %+v", st)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// collector is an engine.Handler that keeps what a router's subscriber would apply.
type collector struct {
	mu      sync.Mutex
	seqs    []uint64
	cached  map[engine.BlockHash]bool
	cleared int
	gaps    int
}

func (c *collector) Batch(seq uint64, b engine.EventBatch) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.seqs = append(c.seqs, seq)
	for _, ev := range b.Events {
		switch ev.Kind {
		case engine.AllBlocksCleared:
			c.cleared++
			clear(c.cached)
		case engine.BlockStored:
			for _, h := range ev.BlockHashes {
				c.cached[h] = true
			}
		case engine.BlockRemoved:
			for _, h := range ev.BlockHashes {
				delete(c.cached, h)
			}
		}
	}
}

func (c *collector) Gap(expected, got uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.gaps++
}

// TestRouterSubscriberTracksTheCache runs the project's KV-event subscriber (what the router
// uses for vLLM) against the sim: it recovers the batches published before it connected
// through the replay socket, and the cache it builds from the events is the engine's.
func TestRouterSubscriberTracksTheCache(t *testing.T) {
	s := testServer(t, ServerConfig{Engine: Config{NumBlocks: 48}})
	c := client(t)
	for i := range 3 { // published before anyone subscribes
		completion(t, c, s, map[string]any{"prompt": longText(200+i, 120), "max_tokens": 2, "ignore_eos": true})
	}
	col := &collector{cached: map[engine.BlockHash]bool{}}
	sub := engine.NewSubscriber(engine.SubscriberConfig{Endpoint: s.KVEventsAddr(), ReplayEndpoint: s.KVEventsReplayAddr(),
		Logger: slog.New(slog.DiscardHandler), DialRetry: 20 * time.Millisecond})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- sub.Run(ctx, col) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	deadline := time.Now().Add(20 * time.Second)
	for i := 0; ; i++ {
		completion(t, c, s, map[string]any{"prompt": longText(300+i, 120), "max_tokens": 2, "ignore_eos": true})
		time.Sleep(100 * time.Millisecond)
		col.mu.Lock()
		n, first, cleared, cached := len(col.seqs), uint64(1), col.cleared, len(col.cached)
		if n > 0 {
			first = col.seqs[0]
		}
		col.mu.Unlock()
		if n > 0 && i >= 3 {
			if first != 0 || cleared != 1 {
				t.Fatalf("subscriber started at seq %d with %d AllBlocksCleared", first, cleared)
			}
			// The engine is idle now; the subscriber catches up with its last batches.
			for st := s.Stats(); cached != st.CachedBlocks; {
				if time.Now().After(deadline) {
					t.Fatalf("subscriber holds %d blocks, the engine caches %d", cached, st.CachedBlocks)
				}
				time.Sleep(20 * time.Millisecond)
				col.mu.Lock()
				cached = len(col.cached)
				col.mu.Unlock()
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the subscriber received nothing")
		}
	}
}

// TestKVEventsDial: with KVEventsDial the sim connects to a subscriber that binds (as
// llm-d's routers do) and its events arrive there.
func TestKVEventsDial(t *testing.T) {
	col := &collector{cached: map[engine.BlockHash]bool{}}
	sub := engine.NewSubscriber(engine.SubscriberConfig{Endpoint: "tcp://127.0.0.1:0", Bind: true, Logger: slog.New(slog.DiscardHandler)})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- sub.Run(ctx, col) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	select {
	case <-sub.Ready():
	case <-time.After(10 * time.Second):
		t.Fatal("subscriber not ready")
	}
	s := testServer(t, ServerConfig{KVEvents: sub.Addr(), KVEventsDial: true})
	c := client(t)
	deadline := time.Now().Add(20 * time.Second)
	for i := 0; ; i++ {
		completion(t, c, s, map[string]any{"prompt": longText(400+i, 60), "max_tokens": 1})
		time.Sleep(50 * time.Millisecond)
		col.mu.Lock()
		n := len(col.cached)
		col.mu.Unlock()
		if n > 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("no events reached the binding subscriber")
		}
	}
}

func TestLoRAAdapters(t *testing.T) {
	s := testServer(t, ServerConfig{LoRAs: []string{"sql-adapter"}})
	c := client(t)
	resp, err := c.Get("http://" + s.Addr() + "/v1/models")
	if err != nil {
		t.Fatal(err)
	}
	var ml openai.ModelList
	json.NewDecoder(resp.Body).Decode(&ml)
	resp.Body.Close()
	if len(ml.Data) != 2 || ml.Data[1].ID != "sql-adapter" || ml.Data[1].Parent == nil || *ml.Data[1].Parent != s.cfg.Model {
		t.Fatalf("models %+v", ml)
	}
	text := longText(77, 100)
	a := completion(t, c, s, map[string]any{"model": "sql-adapter", "prompt": text, "max_tokens": 1})
	if a.Model != "sql-adapter" {
		t.Fatalf("response model %q", a.Model)
	}
	// The same prompt on the base model shares no blocks with the adapter's.
	b := completion(t, c, s, map[string]any{"model": s.cfg.Model, "prompt": text, "max_tokens": 1})
	if b.Usage.CachedTokens() != 0 {
		t.Fatalf("base model reused %d adapter tokens", b.Usage.CachedTokens())
	}
	a2 := completion(t, c, s, map[string]any{"model": "sql-adapter", "prompt": text, "max_tokens": 1})
	if a2.Usage.CachedTokens() == 0 {
		t.Fatal("adapter request did not hit its own blocks")
	}
	lora, base := 0, 0
	for _, ev := range events(replay(t, s)) {
		if ev.Kind != engine.BlockStored {
			continue
		}
		switch {
		case ev.LoRAName == "sql-adapter" && ev.LoRAID != nil && *ev.LoRAID == 1:
			if len(ev.BlockExtraKeys) != len(ev.BlockHashes) || ev.BlockExtraKeys[0][0] != "sql-adapter" {
				t.Fatalf("adapter blocks with extra_keys %q, want the adapter's name first for each of %d blocks", ev.BlockExtraKeys, len(ev.BlockHashes))
			}
			lora++
		case ev.LoRAName == "" && ev.LoRAID == nil:
			base++
		default:
			t.Fatalf("stored event with lora %q id %v", ev.LoRAName, ev.LoRAID)
		}
	}
	if lora == 0 || base == 0 {
		t.Fatalf("%d adapter and %d base stored events", lora, base)
	}
}

// TestHeldBlocksExpire: prefilled blocks nobody pulls are freed after HoldTimeout, and a
// request that waits for them meanwhile neither fails nor makes the driver spin.
func TestHeldBlocksExpire(t *testing.T) {
	s := testServer(t, ServerConfig{Engine: Config{NumBlocks: 20, Timing: Timing{Speed: 1000}}, HoldTimeout: 300 * time.Millisecond})
	c := client(t)
	p := completion(t, c, s, map[string]any{"prompt": longText(1, 200), "max_tokens": 1, "kv_transfer_params": map[string]any{"do_remote_decode": true}})
	if len(p.KVTransferParams) == 0 {
		t.Fatal("no kv_transfer_params")
	}
	before := s.Stats()
	if before.Held != 1 || before.FreeBlocks > 8 {
		t.Fatalf("held %d, free %d", before.Held, before.FreeBlocks)
	}
	start := time.Now()
	r := completion(t, c, s, map[string]any{"prompt": longText(2, 160), "max_tokens": 1})
	if len(r.Choices) != 1 || time.Since(start) < 200*time.Millisecond {
		t.Fatalf("second request finished in %v without waiting for the held blocks", time.Since(start))
	}
	after := s.Stats()
	if after.Held != 0 {
		t.Fatalf("blocks still held: %+v", after)
	}
	if steps := after.Steps - before.Steps; steps > 500 {
		t.Fatalf("the driver ran %d steps while waiting", steps)
	}
}

func TestContinuousUsageStats(t *testing.T) {
	s := testServer(t, ServerConfig{Engine: Config{Timing: Timing{Speed: 20}}})
	c := client(t)
	b, _ := json.Marshal(map[string]any{"prompt": "count with me", "max_tokens": 6, "ignore_eos": true, "stream": true,
		"stream_options": map[string]any{"include_usage": true, "continuous_usage_stats": true}})
	resp, err := c.Post("http://"+s.Addr()+"/v1/completions", "application/json", bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	rd := openai.NewSSEReader(resp.Body)
	last := 0
	for {
		data, err := rd.Next()
		if err != nil {
			t.Fatal(err)
		}
		if string(data) == openai.Done {
			break
		}
		var ch openai.CompletionChunk
		if err := json.Unmarshal(data, &ch); err != nil {
			t.Fatal(err)
		}
		if ch.Usage == nil || ch.Usage.CompletionTokens < last {
			t.Fatalf("chunk %s", data)
		}
		last = ch.Usage.CompletionTokens
	}
	if last != 6 {
		t.Fatalf("final completion_tokens %d", last)
	}
}
