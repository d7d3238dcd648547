package sim

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/kvgate/kvgate/openai"
	"github.com/kvgate/kvgate/tokenizer"
)

// maxScripted is how many output tokens a request's answer is written out for; past it the
// engine makes ids up (only ignore_eos requests with a larger max_tokens get there).
const maxScripted = 4096

// generation is one chat or completion request, reduced to what the engine and the response
// writer need.
type generation struct {
	chat         bool
	model        string // the name the client asked for, echoed in responses
	lora         string
	prompts      [][]uint32
	n            int
	maxTokens    int // 0: what the model length leaves
	ignoreEOS    bool
	minTokens    int
	stop         []string
	includeStop  bool
	stream       bool
	includeUsage bool
	contUsage    bool // stream_options.continuous_usage_stats: usage on every chunk
	cacheSalt    string
	kv           *kvTransferParams
	// answer, when set, writes the response instead of the chat/completion writer (the
	// Responses API, responses.go).
	answer func(sw *streamWriter) answerWriter
}

// answerWriter writes one generation's response: start before the first token when
// streaming, token per output, then finish (streamed) or whole (not streamed).
type answerWriter interface {
	start(choices []*choice)
	token(c *choice, safe int, choices []*choice) error
	finish(choices []*choice)
	whole(choices []*choice)
}

var _ answerWriter = (*streamWriter)(nil)

// choice is one output sequence of a generation.
type choice struct {
	index, prompt int
	id            string
	text          []byte
	emitted       int // bytes of text already streamed
	tokens        int
	finish        string
	stopReason    json.RawMessage
	promptTokens  int
	cachedTokens  int
	last          time.Time
	blockIDs      []int
	held          bool
}

func (s *Server) handleChat(w http.ResponseWriter, r *http.Request) {
	body, err := openai.ReadBody(r.Body, s.cfg.MaxBodyBytes)
	if err != nil {
		openai.WriteError(w, err)
		return
	}
	req, err := openai.ParseChatRequest(body)
	if err != nil {
		openai.WriteError(w, err)
		return
	}
	lora, err := s.checkModel(req.Model)
	if err != nil {
		openai.WriteError(w, err)
		return
	}
	text, err := s.renderChat(req.Messages, req.Tools, req.GenerationPrompt(), req.ChatTemplateKwargs)
	if err != nil {
		openai.WriteError(w, err)
		return
	}
	if req.ContinueFinalMessage {
		if text, err = continueFinal(text, req.Messages); err != nil {
			openai.WriteError(w, err)
			return
		}
	}
	g := generation{chat: true, model: s.responseModel(req.Model), lora: lora, prompts: [][]uint32{s.tok.Encode(text)}, n: 1, ignoreEOS: req.IgnoreEOS,
		stop: req.Stop, includeStop: req.IncludeStopStrInOutput, stream: req.Stream, includeUsage: req.IncludeUsage(),
		contUsage: req.IncludeUsage() && req.StreamOptions.ContinuousUsageStats}
	if m, ok := req.MaxOutputTokens(); ok {
		g.maxTokens = m
	}
	if req.N != nil {
		g.n = *req.N
	}
	if req.MinTokens != nil {
		g.minTokens = *req.MinTokens
	}
	if req.CacheSalt != nil {
		g.cacheSalt = *req.CacheSalt
	}
	if g.kv, err = parseKVTransferParams(req.KVTransferParams); err != nil {
		openai.WriteError(w, err)
		return
	}
	s.generate(w, r, g)
}

func (s *Server) handleCompletion(w http.ResponseWriter, r *http.Request) {
	body, err := openai.ReadBody(r.Body, s.cfg.MaxBodyBytes)
	if err != nil {
		openai.WriteError(w, err)
		return
	}
	req, err := openai.ParseCompletionRequest(body)
	if err != nil {
		openai.WriteError(w, err)
		return
	}
	lora, err := s.checkModel(req.Model)
	if err != nil {
		openai.WriteError(w, err)
		return
	}
	if req.Prompt.Count() == 0 {
		openai.WriteError(w, openai.BadRequest("prompt", "prompt_embeds are not supported by the simulator."))
		return
	}
	g := generation{model: s.responseModel(req.Model), lora: lora, maxTokens: req.MaxOutputTokens(), n: 1, ignoreEOS: req.IgnoreEOS, stop: req.Stop,
		includeStop: req.IncludeStopStrInOutput, stream: req.Stream, includeUsage: req.IncludeUsage(),
		contUsage: req.IncludeUsage() && req.StreamOptions.ContinuousUsageStats}
	for _, t := range req.Prompt.Texts {
		g.prompts = append(g.prompts, s.tok.Encode(t))
	}
	g.prompts = append(g.prompts, req.Prompt.Tokens...)
	if req.N != nil {
		g.n = *req.N
	}
	if req.MinTokens != nil {
		g.minTokens = *req.MinTokens
	}
	if req.CacheSalt != nil {
		g.cacheSalt = *req.CacheSalt
	}
	if g.kv, err = parseKVTransferParams(req.KVTransferParams); err != nil {
		openai.WriteError(w, err)
		return
	}
	s.generate(w, r, g)
}

func (s *Server) responseModel(asked string) string {
	if asked == "" {
		return s.cfg.Model
	}
	return asked
}

// renderChat applies the model's chat template.
func (s *Server) renderChat(messages, tools json.RawMessage, gen bool, extra map[string]any) (string, error) {
	text, err := s.tok.RenderChat(tokenizer.ChatInput{Messages: messages, Tools: tools, AddGenerationPrompt: gen, Extra: extra})
	if err != nil {
		return "", openai.BadRequest("messages", "%v", err)
	}
	return text, nil
}

// generate runs g on the engine and writes the response, streamed or whole.
func (s *Server) generate(w http.ResponseWriter, r *http.Request, g generation) {
	arrival := time.Now()
	maxLen := s.maxModelLen()
	if err := checkLengths(g, maxLen); err != nil {
		openai.WriteError(w, err)
		return
	}
	// Decode side of P/D: pull the prefilled blocks before queueing.
	// Or a peer's cached prefix (P2P): pull what this engine does not hold itself.
	remote := 0
	if g.kv != nil && g.kv.DoRemotePrefill && len(g.kv.blockIDs) > 0 {
		remote = s.pull(r.Context(), g.kv)
	} else {
		remote = s.pullPrefix(r.Context(), r, g)
	}
	base := "sim-" + strconv.FormatUint(s.seq.Add(1), 36)
	choices, reqs := s.requests(g, base, maxLen, remote, arrival)
	j := newJob()
	if err := s.drv.submit(j, reqs); err != nil {
		openai.WriteError(w, openai.BadRequest("", "%v", err))
		return
	}
	byID := make(map[string]*choice, len(choices))
	for _, c := range choices {
		byID[c.id] = c
	}
	unfinished := func() []string {
		var ids []string
		for _, c := range choices {
			if c.finish == "" {
				ids = append(ids, c.id)
			}
		}
		return ids
	}
	maxStop := 0
	for _, st := range g.stop {
		maxStop = max(maxStop, len(st))
	}

	var sw answerWriter = &streamWriter{w: w, s: s, g: g, id: base, created: time.Now().Unix()}
	if g.answer != nil {
		sw = g.answer(sw.(*streamWriter))
	}
	if g.stream {
		sw.start(choices)
	}
	firstSeen := false
	left := len(choices)
	for left > 0 {
		select {
		case <-r.Context().Done():
			s.drv.abort(unfinished())
			return
		case <-j.notify:
		}
		now := time.Now()
		for _, o := range j.take() {
			c := byID[o.ID]
			if c == nil || c.finish != "" {
				continue
			}
			if !firstSeen {
				firstSeen = true
				s.metrics.ttft.Observe(now.Sub(arrival).Seconds())
				s.metrics.queue.Observe(max(s.drv.start.Add(o.Admitted).Sub(arrival), 0).Seconds())
			} else if o.Index > 0 {
				s.metrics.itl.Observe(now.Sub(c.last).Seconds())
			}
			if s.apply(c, o, g, maxStop, now) {
				left--
				s.metrics.success.WithLabelValues(c.finish).Inc()
				s.metrics.e2e.Observe(now.Sub(arrival).Seconds())
				s.metrics.reqPrompt.Observe(float64(c.promptTokens))
				s.metrics.reqGen.Observe(float64(c.tokens))
			}
			if g.stream {
				safe := len(c.text)
				if c.finish == "" && maxStop > 0 {
					safe = max(len(c.text)-(maxStop-1), c.emitted)
				}
				if err := sw.token(c, safe, choices); err != nil {
					s.drv.abort(unfinished())
					return
				}
			}
		}
	}
	if g.stream {
		sw.finish(choices)
		return
	}
	sw.whole(choices)
}

// maxChoices bounds the sequences one request may ask for (n times prompts).
const maxChoices = 128

// checkLengths refuses what vLLM refuses before queueing: too many sequences, an empty
// prompt, or a prompt plus completion beyond the model's context (vLLM's message).
func checkLengths(g generation, maxLen int) *openai.Error {
	if g.n*len(g.prompts) > maxChoices {
		return openai.BadRequest("n", "At most %d sequences per request (n times prompts), got %d.", maxChoices, g.n*len(g.prompts))
	}
	for i, p := range g.prompts {
		if len(p) == 0 {
			return openai.BadRequest("prompt", "The prompt is empty.")
		}
		want := g.maxTokens
		if want == 0 {
			want = max(maxLen-len(p), 0)
		}
		if len(p)+want > maxLen || want == 0 {
			param, where := "messages", "the messages"
			if !g.chat {
				param, where = "prompt", fmt.Sprintf("prompt %d", i)
			}
			return openai.BadRequest(param, "This model's maximum context length is %d tokens. However, you requested %d tokens (%d in %s, %d in the completion). Please reduce the length of the input or the completion.",
				maxLen, len(p)+want, len(p), where, want)
		}
	}
	return nil
}

// requests makes one engine request per (prompt, n) pair with its scripted output; the first
// holds its blocks for a remote decode, or reuses remotely prefilled ones.
func (s *Server) requests(g generation, base string, maxLen, remote int, arrival time.Time) ([]*choice, []Request) {
	choices := make([]*choice, 0, g.n*len(g.prompts))
	reqs := make([]Request, 0, cap(choices))
	for pi, p := range g.prompts {
		want := g.maxTokens
		if want == 0 {
			want = maxLen - len(p)
		}
		for j := range g.n {
			c := &choice{index: pi*g.n + j, prompt: pi, id: fmt.Sprintf("%s-%d-%d", base, pi, j), last: arrival}
			seed := promptSeed(p, j)
			req := Request{ID: c.id, Prompt: p, MaxTokens: want, CacheSalt: g.cacheSalt, LoRAName: g.lora}
			scripted := min(want, maxScripted)
			if !g.ignoreEOS {
				req.EOS = max(eosPoint(seed), g.minTokens)
				scripted = min(scripted, req.EOS)
			}
			if s.cfg.ChainOutput {
				req.Output = s.vocab.chain(p, seed, scripted)
			} else {
				req.Output = s.vocab.completion(seed, scripted)
			}
			if c.index == 0 && g.kv != nil && g.kv.DoRemoteDecode {
				req.Hold, c.held = true, true
			}
			if c.index == 0 {
				req.RemoteBlocks = remote
			}
			choices = append(choices, c)
			reqs = append(reqs, req)
		}
	}
	return choices, reqs
}

// apply adds one engine output to its choice: the token's text, then a stop string or the
// engine's finish. It reports whether the choice finished with this output.
func (s *Server) apply(c *choice, o Output, g generation, maxStop int, now time.Time) bool {
	c.last = now
	c.tokens++
	c.promptTokens, c.cachedTokens = o.PromptTokens, o.CachedTokens
	from := len(c.text)
	c.text = append(c.text, s.piece(o.Token)...)
	if st, at := findStop(c.text, g.stop, max(from-maxStop+1, 0)); at >= 0 {
		end := at
		if g.includeStop {
			end += len(st)
		}
		c.text = c.text[:end]
		c.finish = "stop"
		c.stopReason, _ = json.Marshal(st)
		if o.Finish == NotFinished {
			s.drv.cancel([]string{c.id})
		} else if o.BlockIDs != nil {
			c.blockIDs = o.BlockIDs
		}
	} else if o.Finish != NotFinished {
		c.finish = o.Finish.String()
		c.blockIDs = o.BlockIDs
	}
	return c.finish != ""
}

// piece is the text of one output token.
func (s *Server) piece(id uint32) string {
	if t, ok := s.text[id]; ok {
		return t
	}
	return s.tok.Decode([]uint32{id})
}

// findStop returns the first stop string found in text at or after from, and where.
func findStop(text []byte, stops []string, from int) (string, int) {
	best, at := "", -1
	for _, st := range stops {
		if st == "" {
			continue
		}
		if i := strings.Index(string(text[from:]), st); i >= 0 && (at < 0 || from+i < at) {
			best, at = st, from+i
		}
	}
	return best, at
}

// usage sums the choices: prompt tokens once per prompt, cached tokens from each prompt's
// first choice.
func usage(choices []*choice) *openai.Usage {
	u := &openai.Usage{PromptTokensDetails: &openai.PromptTokensDetails{}}
	seen := map[int]bool{}
	for _, c := range choices {
		if !seen[c.prompt] {
			seen[c.prompt] = true
			u.PromptTokens += c.promptTokens
			u.PromptTokensDetails.CachedTokens += c.cachedTokens
		}
		u.CompletionTokens += c.tokens
	}
	u.TotalTokens = u.PromptTokens + u.CompletionTokens
	return u
}

// streamWriter writes the OpenAI response shapes.
type streamWriter struct {
	w       http.ResponseWriter
	s       *Server
	g       generation
	id      string
	created int64
	err     error
}

func (sw *streamWriter) chunkID() string {
	if sw.g.chat {
		return "chatcmpl-" + sw.id
	}
	return "cmpl-" + sw.id
}

func (sw *streamWriter) send(v any) error {
	if sw.err != nil {
		return sw.err
	}
	b, err := json.Marshal(v)
	if err != nil {
		sw.err = err
		return err
	}
	sw.err = openai.WriteSSE(sw.w, b)
	return sw.err
}

func (sw *streamWriter) start(choices []*choice) {
	h := sw.w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	sw.w.WriteHeader(http.StatusOK)
	if !sw.g.chat {
		return
	}
	empty := ""
	for _, c := range choices {
		_ = sw.send(openai.ChatCompletionChunk{ID: sw.chunkID(), Object: openai.ObjectChatCompletionChunk, Created: sw.created,
			Model: sw.g.model, Choices: []openai.ChunkChoice{{Index: c.index, Delta: openai.Delta{Role: "assistant", Content: &empty}}}})
	}
}

// token streams c's text up to safe, with the finish reason once c is done.
func (sw *streamWriter) token(c *choice, safe int, choices []*choice) error {
	if c.finish != "" {
		safe = len(c.text)
	}
	if safe <= c.emitted && c.finish == "" {
		return sw.err
	}
	delta := string(c.text[c.emitted:max(safe, c.emitted)])
	c.emitted = max(safe, c.emitted)
	var fin *string
	if c.finish != "" {
		f := c.finish
		fin = &f
	}
	var u *openai.Usage
	if sw.g.contUsage {
		u = usage(choices)
	}
	if sw.g.chat {
		ch := openai.ChunkChoice{Index: c.index, Delta: openai.Delta{Content: &delta}, FinishReason: fin}
		if fin != nil {
			ch.StopReason = c.stopReason
		}
		return sw.send(openai.ChatCompletionChunk{ID: sw.chunkID(), Object: openai.ObjectChatCompletionChunk, Created: sw.created,
			Model: sw.g.model, Choices: []openai.ChunkChoice{ch}, Usage: u})
	}
	ch := openai.CompletionChoice{Index: c.index, Text: delta, FinishReason: fin}
	if fin != nil {
		ch.StopReason = c.stopReason
	}
	return sw.send(openai.CompletionChunk{ID: sw.chunkID(), Object: openai.ObjectTextCompletion, Created: sw.created,
		Model: sw.g.model, Choices: []openai.CompletionChoice{ch}, Usage: u})
}

func (sw *streamWriter) finish(choices []*choice) {
	if sw.g.includeUsage {
		u := usage(choices)
		if sw.g.chat {
			_ = sw.send(openai.ChatCompletionChunk{ID: sw.chunkID(), Object: openai.ObjectChatCompletionChunk, Created: sw.created,
				Model: sw.g.model, Choices: []openai.ChunkChoice{}, Usage: u})
		} else {
			_ = sw.send(openai.CompletionChunk{ID: sw.chunkID(), Object: openai.ObjectTextCompletion, Created: sw.created,
				Model: sw.g.model, Choices: []openai.CompletionChoice{}, Usage: u})
		}
	}
	if sw.err == nil {
		_ = openai.WriteSSEDone(sw.w)
	}
}

func (sw *streamWriter) whole(choices []*choice) {
	kv := sw.s.transferParams(choices)
	null := json.RawMessage("null")
	if sw.g.chat {
		resp := openai.ChatCompletion{ID: sw.chunkID(), Object: openai.ObjectChatCompletion, Created: sw.created,
			Model: sw.g.model, Usage: usage(choices), KVTransferParams: kv}
		for _, c := range choices {
			text, fin := string(c.text), c.finish
			resp.Choices = append(resp.Choices, openai.ChatChoice{Index: c.index, Message: openai.Message{Role: "assistant", Content: &text},
				Logprobs: null, FinishReason: &fin, StopReason: c.stopReason})
		}
		writeJSON(sw.w, http.StatusOK, resp)
		return
	}
	resp := openai.Completion{ID: sw.chunkID(), Object: openai.ObjectTextCompletion, Created: sw.created,
		Model: sw.g.model, Usage: usage(choices), KVTransferParams: kv}
	for _, c := range choices {
		fin := c.finish
		resp.Choices = append(resp.Choices, openai.CompletionChoice{Index: c.index, Text: string(c.text), Logprobs: null,
			FinishReason: &fin, StopReason: c.stopReason})
	}
	writeJSON(sw.w, http.StatusOK, resp)
}

// continueFinal cuts a rendered chat right after the final message's content, so the model
// continues that message (vLLM's continue_final_message, which renders the conversation
// without a generation prompt and truncates it the way transformers' apply_chat_template
// does: after the last occurrence of the final message's content, stripped).
func continueFinal(rendered string, messages json.RawMessage) (string, error) {
	var msgs []struct {
		Content json.RawMessage `json:"content"`
	}
	if err := json.Unmarshal(messages, &msgs); err != nil || len(msgs) == 0 {
		return "", openai.BadRequest("messages", "continue_final_message needs a final message to continue.")
	}
	content := messageText(msgs[len(msgs)-1].Content)
	final := strings.TrimSpace(content)
	at := strings.LastIndex(rendered, final)
	if final == "" || at < 0 {
		return "", openai.BadRequest("messages", "continue_final_message is set but the final message does not appear in the chat after applying the chat template.")
	}
	return rendered[:at+len(final)], nil
}

// messageText is a message's content as text: a string, or the text parts of a list.
func messageText(raw json.RawMessage) string {
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return s
	}
	var parts []struct {
		Type string `json:"type"`
		Text string `json:"text"`
	}
	if json.Unmarshal(raw, &parts) != nil {
		return ""
	}
	var b strings.Builder
	for _, p := range parts {
		if p.Type == "text" {
			b.WriteString(p.Text)
		}
	}
	return b.String()
}
