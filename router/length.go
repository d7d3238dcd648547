package router

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/kvgate/kvgate/openai"
	"github.com/kvgate/kvgate/tokenizer"
)

// Prompt length checks. A request whose prompt cannot fit the model's context is refused
// before it costs an engine anything, with vLLM's messages: first from the prompt's bytes
// before tokenizing (a token covers at most maxTokenBytes bytes, so a text of B bytes has at
// least B/maxTokenBytes tokens), then exactly from its tokens.

// maxModelLen returns the context length (prompt plus output tokens) of model: the
// configured one (Config.MaxModelLen), else the largest max_model_len the endpoints serving
// it report on /v1/models; 0 when unknown (no check).
func (r *Router) maxModelLen(model string) int {
	if n := r.cfg.MaxModelLen[model]; n > 0 {
		return n
	}
	n := 0
	for _, s := range r.states() {
		if m := s.maxLens.Load(); m != nil && s.ep.Serves(model) {
			n = max(n, (*m)[model])
		}
	}
	return n
}

// checkTextLen refuses text that has more tokens than maxLen allows whatever it tokenizes
// to: at least len(text)/maxTokenBytes of them.
func (r *Router) checkTextLen(tok *tokenizer.Tokenizer, model, text string) error {
	maxLen := r.maxModelLen(model)
	if maxLen <= 0 {
		return nil
	}
	per := r.maxTokenBytes(tok)
	if least := (len(text) + per - 1) / per; least >= maxLen {
		return openai.BadRequest("input_tokens", "This model's maximum context length is %d tokens. However, your request has at least %d input tokens. Please reduce the length of the input messages.", maxLen, least)
	}
	return nil
}

// checkTokens refuses a prompt of n tokens that leaves no room for output, or for the
// output asked (maxOut, when asked).
func (r *Router) checkTokens(model string, n, maxOut int, asked bool) error {
	maxLen := r.maxModelLen(model)
	if maxLen <= 0 {
		return nil
	}
	if n >= maxLen {
		return openai.BadRequest("input_tokens", "This model's maximum context length is %d tokens. However, your request has %d input tokens. Please reduce the length of the input messages.", maxLen, n)
	}
	if asked && n+maxOut > maxLen {
		return openai.BadRequest("max_tokens", "'max_tokens' or 'max_completion_tokens' is too large: %d. This model's maximum context length is %d tokens and your request has %d input tokens (%d > %d - %d).", maxOut, maxLen, n, maxOut, maxLen, n)
	}
	return nil
}

// maxTokenBytes is the most bytes one token of tok stands for (at least 1), computed once
// per tokenizer. Byte-level BPE tokens are written one character per byte, so their length
// in bytes is at least the bytes they stand for; added tokens are literal.
func (r *Router) maxTokenBytes(tok *tokenizer.Tokenizer) int {
	if v, ok := r.tokBytes.Load(tok); ok {
		return v.(int)
	}
	n := 1
	for id := range tok.VocabSize() {
		if s, ok := tok.IDToken(uint32(id)); ok {
			n = max(n, len(s))
		}
	}
	r.tokBytes.Store(tok, n)
	return n
}

// fetchModelLens reads the engine's /v1/models for the max_model_len of each model it
// serves; it is asked once per endpoint (after the first successful scrape).
func (r *Router) fetchModelLens(ctx context.Context, s *epState) {
	url := s.ep.URL() + "/v1/models"
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return
	}
	resp, err := r.cfg.HTTPClient.Do(req)
	if err != nil {
		return
	}
	defer resp.Body.Close()
	lens := map[string]int{}
	var list openai.ModelList
	if resp.StatusCode == http.StatusOK && json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&list) == nil {
		for _, m := range list.Data {
			if m.MaxModelLen > 0 {
				lens[m.ID] = m.MaxModelLen
			}
		}
	}
	s.maxLens.Store(&lens) // also when none is reported: asked once
	if len(lens) > 0 {
		r.log.Info("learned the models' context lengths", "endpoint", s.ep.Name, "max_model_len", fmtLens(lens))
	}
}

func fmtLens(m map[string]int) string {
	var b strings.Builder
	for k, v := range m {
		fmt.Fprintf(&b, "%s=%d ", k, v)
	}
	return strings.TrimSpace(b.String())
}
