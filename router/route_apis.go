package router

import (
	"encoding/json"
	"errors"
	"net/http"
	"slices"
	"strings"

	"github.com/kvgate/kvgate/openai"
	"github.com/kvgate/kvgate/tokenizer"
)

// API paths the router reads beyond chat and completions (docs/APIS.md).
const (
	PathResponses  = "/v1/responses"
	PathEmbeddings = "/v1/embeddings"
	// pathAPIPrefix is what a path must start with to be passed through to an engine.
	pathAPIPrefix = "/v1/"
)

// promptResponses fills p from a Responses body: the input converted to chat messages as
// vLLM converts it, rendered with the model's chat template and tokenized, so overlap is
// computed on the tokens the engine will see. It reports whether the response streams.
// Input the router cannot render (images, built-in tools) is routed by load alone.
func (r *Router) promptResponses(req Request, p *Prompt) (stream bool, err error) {
	rr, err := openai.ParseResponsesRequest(req.Body)
	if err != nil {
		return false, err
	}
	model, err := r.resolveModel(rr.Model)
	if err != nil {
		return false, err
	}
	p.Model = model
	if rr.CacheSalt != nil {
		p.CacheSalt = *rr.CacheSalt
	}
	msgs, tools, err := rr.ChatMessages()
	if errors.Is(err, openai.ErrUnrenderable) {
		r.log.Debug("responses input not rendered; routing by load only", "model", model, "reason", err)
		return rr.Stream, nil
	}
	if err != nil {
		return false, err
	}
	tok := r.tokenizer(model)
	if tok == nil {
		p.Text = string(msgs)
		return rr.Stream, nil
	}
	text, err := tok.RenderChat(tokenizer.ChatInput{Messages: msgs, Tools: tools, AddGenerationPrompt: true})
	if err != nil {
		return false, openai.BadRequest("input", "The chat template cannot render this input: %v", err)
	}
	if err := r.checkTextLen(tok, model, text); err != nil {
		return false, err
	}
	p.Text, p.Tokens = text, tok.Encode(text)
	maxOut, asked := 0, rr.MaxOutputTokens != nil
	if asked {
		maxOut = *rr.MaxOutputTokens
	}
	if err := r.checkTokens(model, len(p.Tokens), maxOut, asked); err != nil {
		var e *openai.Error
		if errors.As(err, &e) && e.Param == "max_tokens" { // chat's wording; Responses names its own field
			e = openai.BadRequest("max_output_tokens", "'max_output_tokens' is too large: %d. This model's maximum context length is %d tokens and your request has %d input tokens.",
				maxOut, r.maxModelLen(model), len(p.Tokens))
			return false, e
		}
		return false, err
	}
	return rr.Stream, nil
}

// promptEmbeddings fills p from an embeddings body. An embedding generates nothing and reuses
// no cache, so its tokens count as load only (ExtraTokens) and the pick is the least loaded
// endpoint serving the model. Each input must fit the model's context.
func (r *Router) promptEmbeddings(req Request, p *Prompt) error {
	er, err := openai.ParseEmbeddingRequest(req.Body)
	if err != nil {
		return err
	}
	model, err := r.resolveModel(er.Model)
	if err != nil {
		return err
	}
	p.Model = model
	for _, ids := range er.Input.Tokens {
		if err := r.checkEmbedLen(model, len(ids)); err != nil {
			return err
		}
		p.ExtraTokens += len(ids)
	}
	tok := r.tokenizer(model)
	for _, t := range er.Input.Texts {
		if tok == nil {
			p.ExtraTokens += len(t)/4 + 1 // a rough count: load only
			continue
		}
		if err := r.checkTextLen(tok, model, t); err != nil {
			return err
		}
		n := len(tok.Encode(t))
		if err := r.checkEmbedLen(model, n); err != nil {
			return err
		}
		p.ExtraTokens += n
	}
	return nil
}

// checkEmbedLen refuses an embedding input of n tokens over the model's context (an
// embedding generates nothing, so the whole context is the input's).
func (r *Router) checkEmbedLen(model string, n int) error {
	if maxLen := r.maxModelLen(model); maxLen > 0 && n > maxLen {
		return openai.BadRequest("input", "This model's maximum context length is %d tokens. However, you requested %d tokens in the input for embedding generation. Please reduce the length of the input.", maxLen, n)
	}
	return nil
}

// promptPassthrough fills p for any other /v1/ path, whose body the router does not read
// beyond its "model": the pick is load-aware among the endpoints serving that model or, with
// no model, among every endpoint (the model of the least loaded one is used). The body's
// size stands in for its tokens as load.
func (r *Router) promptPassthrough(req Request, p *Prompt) error {
	p.ExtraTokens = len(req.Body)/4 + 1
	if model, ok := bodyModel(req.Body); ok {
		m, err := r.resolveModel(model)
		if err != nil {
			return err
		}
		p.Model = m
		return nil
	}
	m, err := r.leastLoadedModel(req.Subset)
	if err != nil {
		return err
	}
	p.Model = m
	return nil
}

// bodyModel is the body's top-level "model" string, if the body is a JSON object with one.
func bodyModel(body []byte) (string, bool) {
	var v struct {
		Model *string `json:"model"`
	}
	if json.Unmarshal(body, &v) != nil || v.Model == nil || *v.Model == "" {
		return "", false
	}
	return *v.Model, true
}

// leastLoadedModel is a model of the healthy target endpoint (within subset, nil = any)
// holding the least load the router routed there; 503 when there is none.
func (r *Router) leastLoadedModel(subset []string) (string, error) {
	now := r.cfg.Now()
	var best *epState
	var bestLoad float64
	for _, s := range r.states() {
		if len(s.ep.Models) == 0 || !isTargetRole(s.ep.role()) || !s.healthy(now) {
			continue
		}
		if subset != nil && !slices.Contains(subset, s.ep.Address) {
			continue
		}
		load := float64(s.prefillTokens.Load())/float64(max(s.bs(), 1)) + float64(s.decodeBlocks.Load()) + float64(s.requests.Load())
		if best == nil || load < bestLoad {
			best, bestLoad = s, load
		}
	}
	if best == nil {
		return "", openai.Unavailable("No healthy endpoint can take the request.")
	}
	return best.ep.Models[0], nil
}

// notRouted is the 404 for a path outside the API.
func notRouted(path string) error {
	return openai.Errorf(http.StatusNotFound, openai.TypeInvalidRequest, "", "The router does not route %q.", path)
}

// passesThrough reports whether path is one the router passes on to an engine unread.
func passesThrough(path string) bool {
	return strings.HasPrefix(path, pathAPIPrefix) && len(path) > len(pathAPIPrefix)
}
