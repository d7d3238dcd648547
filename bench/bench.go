// Package bench is a load generator for any OpenAI-compatible URL: it replays a trace (or a
// synthetic workload) at its arrival times or at a fixed concurrency, streams every response,
// and reports TTFT, inter-token latency, end-to-end latency, throughput, cache hits and errors.
// It is the client before R1; it owns no step of a KV event.
package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/kvgate/kvgate/openai"
	"github.com/kvgate/kvgate/workload"
)

// Config says what to send where.
type Config struct {
	URL         string // base URL of the OpenAI API, e.g. http://127.0.0.1:8000
	Model       string
	API         string // "completions" (token-id prompts, exact) or "chat" (text prompts)
	Trace       *workload.Trace
	Concurrency int  // > 0: closed loop with this many requests in flight; 0: open loop at the trace's arrival times
	IgnoreEOS   bool // ask the engine for exactly the trace's output length (vLLM's ignore_eos)
	Timeout     time.Duration
	Header      http.Header // extra request headers (e.g. Authorization)
	Client      *http.Client
	Progress    io.Writer // a live progress line is drawn here when not nil
}

// Result is what a run measured.
type Result struct {
	URL              string         `json:"url"`
	API              string         `json:"api"`
	Requests         int            `json:"requests"`
	Errors           int            `json:"errors"`
	ErrorsByKind     map[string]int `json:"errors_by_kind,omitempty"`
	Duration         float64        `json:"duration_s"`
	TTFT             Dist           `json:"ttft"`
	ITL              Dist           `json:"itl"`
	E2E              Dist           `json:"e2e"`
	PromptTokens     int64          `json:"prompt_tokens"`
	CachedTokens     int64          `json:"cached_tokens"`
	OutputTokens     int64          `json:"output_tokens"`
	HitRatio         float64        `json:"hit_ratio"`
	ThroughputTokens float64        `json:"throughput_tokens_per_s"`
	RequestsPerS     float64        `json:"requests_per_s"`
	ByEndpoint       map[string]int `json:"by_endpoint,omitempty"`
}

// one request's measurements.
type sample struct {
	ttft, e2e time.Duration
	itl       []time.Duration
	usage     *openai.Usage
	endpoint  string
	err       error
}

// Run sends every request of the trace and waits for all answers (or ctx).
func Run(ctx context.Context, cfg Config) (*Result, error) {
	if cfg.Trace == nil || len(cfg.Trace.Requests) == 0 {
		return nil, errors.New("bench: empty trace")
	}
	if cfg.URL == "" {
		return nil, errors.New("bench: no URL")
	}
	switch cfg.API {
	case "", "completions":
		cfg.API = "completions"
	case "chat":
	default:
		return nil, fmt.Errorf("bench: unknown API %q (want completions or chat)", cfg.API)
	}
	if cfg.Client == nil {
		cfg.Client = &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 1024, DisableCompression: true}}
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 10 * time.Minute
	}
	reqs := cfg.Trace.Requests
	samples := make([]sample, len(reqs))
	prog := newProgress(cfg.Progress, len(reqs))
	defer prog.stop()

	start := time.Now()
	var wg sync.WaitGroup
	run := func(i int) {
		defer wg.Done()
		samples[i] = cfg.one(ctx, &reqs[i])
		prog.done(samples[i].err != nil)
	}
	if cfg.Concurrency > 0 {
		next := make(chan int)
		for w := 0; w < cfg.Concurrency; w++ {
			go func() {
				for i := range next {
					run(i)
				}
			}()
		}
	feed:
		for i := range reqs {
			wg.Add(1)
			select {
			case next <- i:
			case <-ctx.Done():
				wg.Done()
				break feed
			}
		}
		close(next)
	} else {
		timer := time.NewTimer(0)
		defer timer.Stop()
	open:
		for i := range reqs {
			if wait := reqs[i].Arrival - time.Since(start); wait > 0 {
				timer.Reset(wait)
				select {
				case <-timer.C:
				case <-ctx.Done():
					break open
				}
			}
			wg.Add(1)
			go run(i)
		}
	}
	wg.Wait()
	elapsed := time.Since(start)
	res := summarize(samples, elapsed)
	res.URL, res.API = cfg.URL, cfg.API
	return res, ctx.Err()
}

func summarize(samples []sample, elapsed time.Duration) *Result {
	res := &Result{Duration: elapsed.Seconds(), ByEndpoint: map[string]int{}, ErrorsByKind: map[string]int{}}
	var ttft, e2e, itl []time.Duration
	for _, s := range samples {
		if s.err == nil && s.e2e == 0 {
			continue // never sent (cancelled)
		}
		res.Requests++
		if s.err != nil {
			res.Errors++
			res.ErrorsByKind[errorKind(s.err)]++
			continue
		}
		ttft = append(ttft, s.ttft)
		e2e = append(e2e, s.e2e)
		itl = append(itl, s.itl...)
		if s.endpoint != "" {
			res.ByEndpoint[s.endpoint]++
		}
		if s.usage != nil {
			res.PromptTokens += int64(s.usage.PromptTokens)
			res.CachedTokens += int64(s.usage.CachedTokens())
			res.OutputTokens += int64(s.usage.CompletionTokens)
		}
	}
	res.TTFT, res.E2E, res.ITL = Summarize(ttft), Summarize(e2e), Summarize(itl)
	if res.PromptTokens > 0 {
		res.HitRatio = round3(float64(res.CachedTokens) / float64(res.PromptTokens))
	}
	if elapsed > 0 {
		res.ThroughputTokens = round3(float64(res.PromptTokens+res.OutputTokens) / elapsed.Seconds())
		res.RequestsPerS = round3(float64(res.Requests-res.Errors) / elapsed.Seconds())
	}
	if len(res.ByEndpoint) == 0 {
		res.ByEndpoint = nil
	}
	if len(res.ErrorsByKind) == 0 {
		res.ErrorsByKind = nil
	}
	return res
}

// statusError is a non-2xx answer.
type statusError struct {
	code int
	body string
}

func (e *statusError) Error() string { return fmt.Sprintf("HTTP %d: %s", e.code, e.body) }

func errorKind(err error) string {
	var se *statusError
	switch {
	case errors.As(err, &se):
		return fmt.Sprintf("http_%d", se.code)
	case errors.Is(err, context.DeadlineExceeded):
		return "timeout"
	case errors.Is(err, context.Canceled):
		return "canceled"
	case errors.Is(err, errNoDone):
		return "no_done"
	case errors.Is(err, errNoFinish):
		return "no_finish_reason"
	case errors.As(err, new(*streamError)):
		return "stream_error"
	}
	return "transport"
}

// body builds the request body for one trace request.
func (cfg *Config) body(r *workload.Request) ([]byte, string) {
	m := map[string]any{
		"model":          cfg.Model,
		"max_tokens":     max(1, r.OutputLength),
		"stream":         true,
		"stream_options": map[string]any{"include_usage": true},
		"temperature":    0,
	}
	if cfg.IgnoreEOS {
		m["ignore_eos"] = true
	}
	path := "/v1/completions"
	if cfg.API == "chat" {
		path = "/v1/chat/completions"
		m["messages"] = []map[string]string{{"role": "user", "content": Text(r.Tokens())}}
	} else {
		m["prompt"] = r.Tokens()
	}
	b, _ := json.Marshal(m)
	return b, path
}

func (cfg *Config) one(ctx context.Context, r *workload.Request) sample {
	body, path := cfg.body(r)
	ctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, strings.TrimRight(cfg.URL, "/")+path, bytes.NewReader(body))
	if err != nil {
		return sample{err: err}
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "text/event-stream")
	for k, vs := range cfg.Header {
		for _, v := range vs {
			req.Header.Add(k, v)
		}
	}
	start := time.Now()
	resp, err := cfg.Client.Do(req)
	if err != nil {
		return sample{err: err, e2e: time.Since(start)}
	}
	defer resp.Body.Close()
	s := sample{endpoint: resp.Header.Get("x-kvgate-endpoint")}
	if resp.StatusCode/100 != 2 {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		s.err, s.e2e = &statusError{code: resp.StatusCode, body: strings.TrimSpace(string(b))}, time.Since(start)
		return s
	}
	sse := openai.NewSSEReader(resp.Body)
	var last time.Time
	done, finished := false, false
	for {
		data, err := sse.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			s.err, s.e2e = err, time.Since(start)
			return s
		}
		if string(data) == openai.Done {
			done = true
			break
		}
		if u, ok := openai.UsageFromChunk(data); ok {
			s.usage = u
		}
		c := parseChunk(data)
		if c.err != "" {
			s.err, s.e2e = &streamError{c.err}, time.Since(start)
			return s
		}
		finished = finished || c.finished
		if !c.content {
			continue
		}
		now := time.Now()
		if last.IsZero() {
			s.ttft = now.Sub(start)
		} else {
			s.itl = append(s.itl, now.Sub(last))
		}
		last = now
	}
	s.e2e = time.Since(start)
	switch {
	case !done:
		s.err = errNoDone // a stream cut short, though its connection ended cleanly
	case !finished:
		s.err = errNoFinish
	case last.IsZero() && (s.usage == nil || s.usage.CompletionTokens > 0):
		s.err = errors.New("stream ended without a token")
	}
	return s
}

// Errors of streams that ended without their proper end.
var (
	errNoDone   = errors.New("stream ended without [DONE]")
	errNoFinish = errors.New("stream ended without a finish reason")
)

// streamError is an error event inside a stream.
type streamError struct{ msg string }

func (e *streamError) Error() string { return "error event in the stream: " + e.msg }

// chunk is what one SSE chunk says.
type chunk struct {
	content  bool   // it carries generated text
	finished bool   // a choice has a finish reason
	err      string // it is an error event: the message
}

func parseChunk(data []byte) chunk {
	var c struct {
		Choices []struct {
			Text  string `json:"text"`
			Delta struct {
				Content          string `json:"content"`
				ReasoningContent string `json:"reasoning_content"`
			} `json:"delta"`
			FinishReason *string `json:"finish_reason"`
		} `json:"choices"`
		Error *struct {
			Message string `json:"message"`
		} `json:"error"`
	}
	if json.Unmarshal(data, &c) != nil {
		return chunk{}
	}
	var out chunk
	if c.Error != nil {
		out.err = c.Error.Message
		if out.err == "" {
			out.err = "(no message)"
		}
	}
	for _, ch := range c.Choices {
		if ch.Text != "" || ch.Delta.Content != "" || ch.Delta.ReasoningContent != "" {
			out.content = true
		}
		if ch.FinishReason != nil && *ch.FinishReason != "" {
			out.finished = true
		}
	}
	return out
}

// words turn generated token ids into text for chat prompts: one word per token, so equal
// token prefixes give equal text prefixes.
var words = strings.Fields(`time year people way day man thing woman life child world school
state family student group country problem hand part place case week company system program
question work government number night point home water room mother area money story fact month
lot right study book eye job word business issue side kind head house service friend father power
hour game line end member law car city community name president team minute idea kid body
information back parent face others level office door health person art war history party result
change morning reason research girl guy moment air teacher force education`)

// Text renders token ids as words, deterministic and prefix-preserving.
func Text(ids []uint32) string {
	var b strings.Builder
	b.Grow(len(ids) * 6)
	for i, id := range ids {
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(words[int(id)%len(words)])
	}
	return b.String()
}
