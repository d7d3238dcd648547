package openai

import (
	"bytes"
	"encoding/json"
	"fmt"
	"unicode/utf8"
)

// Prompt is a completion prompt in one of its four forms: a string, an array of strings, an
// array of token ids, or an array of token id arrays. Exactly one of Texts and Tokens is set.
type Prompt struct {
	Texts  []string
	Tokens [][]uint32
	// Single is true for the one-prompt forms (a string or one array of token ids).
	Single bool
}

// Count is the number of prompts.
func (p Prompt) Count() int { return len(p.Texts) + len(p.Tokens) }

// MarshalJSON writes the prompt back in the form it came in.
func (p Prompt) MarshalJSON() ([]byte, error) {
	switch {
	case p.Single && len(p.Texts) == 1:
		return json.Marshal(p.Texts[0])
	case p.Single && len(p.Tokens) == 1:
		return json.Marshal(p.Tokens[0])
	case p.Texts != nil:
		return json.Marshal(p.Texts)
	case p.Tokens != nil:
		return json.Marshal(p.Tokens)
	}
	return []byte("null"), nil
}

// UnmarshalJSON reads any of the four forms.
func (p *Prompt) UnmarshalJSON(b []byte) error {
	q, err := decodePrompt(b)
	if err != nil {
		return err
	}
	*p = q
	return nil
}

func decodePrompt(raw json.RawMessage) (Prompt, error) {
	badType := func(param, got string) error {
		return BadRequest(param, "Invalid type for '%s': expected a string, an array of strings, an array of token ids or an array of token id arrays, but got %s instead.", param, got)
	}
	switch jsonKind(raw) {
	case "a string":
		if bytes.IndexByte(raw, '\\') < 0 && utf8.Valid(raw) { // valid JSON without escapes: the bytes are the text
			return Prompt{Texts: []string{string(raw[1 : len(raw)-1])}, Single: true}, nil
		}
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return Prompt{}, BadRequest("prompt", "Invalid value for 'prompt': %s", jsonErrText(err))
		}
		return Prompt{Texts: []string{s}, Single: true}, nil
	case "an array":
	default:
		return Prompt{}, badType("prompt", jsonKind(raw))
	}
	var elems []json.RawMessage
	if err := json.Unmarshal(raw, &elems); err != nil {
		return Prompt{}, BadRequest("prompt", "Invalid value for 'prompt': %s", jsonErrText(err))
	}
	if len(elems) == 0 {
		return Prompt{}, BadRequest("prompt", "Invalid value for 'prompt': the prompt must not be empty.")
	}
	switch jsonKind(elems[0]) {
	case "a string":
		out := make([]string, len(elems))
		for i, e := range elems {
			if jsonKind(e) != "a string" || json.Unmarshal(e, &out[i]) != nil {
				return Prompt{}, badType(fmt.Sprintf("prompt[%d]", i), jsonKind(e))
			}
		}
		return Prompt{Texts: out}, nil
	case "a number":
		ids, err := decodeIDs("prompt", raw)
		if err != nil {
			return Prompt{}, err
		}
		return Prompt{Tokens: [][]uint32{ids}, Single: true}, nil
	case "an array":
		out := make([][]uint32, len(elems))
		for i, e := range elems {
			p := fmt.Sprintf("prompt[%d]", i)
			if jsonKind(e) != "an array" {
				return Prompt{}, badType(p, jsonKind(e))
			}
			ids, err := decodeIDs(p, e)
			if err != nil {
				return Prompt{}, err
			}
			if len(ids) == 0 {
				return Prompt{}, BadRequest(p, "Invalid value for '%s': the prompt must not be empty.", p)
			}
			out[i] = ids
		}
		return Prompt{Tokens: out}, nil
	}
	return Prompt{}, badType("prompt[0]", jsonKind(elems[0]))
}

func decodeIDs(param string, raw json.RawMessage) ([]uint32, error) {
	var ids []uint32
	if err := json.Unmarshal(raw, &ids); err != nil {
		return nil, BadRequest(param, "Invalid value for '%s': token ids must be non-negative integers below 2^32.", param)
	}
	return ids, nil
}

// CompletionRequest is a /v1/completions body with every field vLLM accepts; unknown fields
// are kept in Extra and written back by MarshalJSON.
type CompletionRequest struct {
	Model  string `json:"model,omitempty"`
	Prompt Prompt `json:"prompt"`

	// OpenAI fields.
	BestOf           *int               `json:"best_of,omitempty"`
	Echo             bool               `json:"echo,omitempty"`
	FrequencyPenalty *float64           `json:"frequency_penalty,omitempty"`
	LogitBias        map[string]float64 `json:"logit_bias,omitempty"`
	Logprobs         *int               `json:"logprobs,omitempty"`
	MaxTokens        *int               `json:"max_tokens,omitempty"`
	N                *int               `json:"n,omitempty"`
	PresencePenalty  *float64           `json:"presence_penalty,omitempty"`
	Seed             *int64             `json:"seed,omitempty"`
	Stop             []string           `json:"stop,omitempty"`
	Stream           bool               `json:"stream,omitempty"`
	StreamOptions    *StreamOptions     `json:"stream_options,omitempty"`
	Suffix           *string            `json:"suffix,omitempty"`
	Temperature      *float64           `json:"temperature,omitempty"`
	TopP             *float64           `json:"top_p,omitempty"`
	User             string             `json:"user,omitempty"`

	// vLLM extensions.
	UseBeamSearch              bool            `json:"use_beam_search,omitempty"`
	TopK                       *int            `json:"top_k,omitempty"`
	MinP                       *float64        `json:"min_p,omitempty"`
	RepetitionPenalty          *float64        `json:"repetition_penalty,omitempty"`
	LengthPenalty              *float64        `json:"length_penalty,omitempty"`
	StopTokenIDs               []int           `json:"stop_token_ids,omitempty"`
	IncludeStopStrInOutput     bool            `json:"include_stop_str_in_output,omitempty"`
	IgnoreEOS                  bool            `json:"ignore_eos,omitempty"`
	MinTokens                  *int            `json:"min_tokens,omitempty"`
	SkipSpecialTokens          *bool           `json:"skip_special_tokens,omitempty"`
	SpacesBetweenSpecialTokens *bool           `json:"spaces_between_special_tokens,omitempty"`
	TruncatePromptTokens       *int            `json:"truncate_prompt_tokens,omitempty"`
	AllowedTokenIDs            []int           `json:"allowed_token_ids,omitempty"`
	PromptLogprobs             *int            `json:"prompt_logprobs,omitempty"`
	AddSpecialTokens           *bool           `json:"add_special_tokens,omitempty"`
	ResponseFormat             json.RawMessage `json:"response_format,omitempty"`
	GuidedJSON                 json.RawMessage `json:"guided_json,omitempty"`
	GuidedRegex                json.RawMessage `json:"guided_regex,omitempty"`
	GuidedChoice               json.RawMessage `json:"guided_choice,omitempty"`
	GuidedGrammar              json.RawMessage `json:"guided_grammar,omitempty"`
	GuidedDecodingBackend      json.RawMessage `json:"guided_decoding_backend,omitempty"`
	GuidedWhitespacePattern    json.RawMessage `json:"guided_whitespace_pattern,omitempty"`
	StructuredOutputs          json.RawMessage `json:"structured_outputs,omitempty"`
	Priority                   *int            `json:"priority,omitempty"`
	RequestID                  string          `json:"request_id,omitempty"`
	LogitsProcessors           json.RawMessage `json:"logits_processors,omitempty"`
	ReturnTokensAsTokenIDs     *bool           `json:"return_tokens_as_token_ids,omitempty"`
	ReturnTokenIDs             *bool           `json:"return_token_ids,omitempty"`
	PromptEmbeds               json.RawMessage `json:"prompt_embeds,omitempty"`
	CacheSalt                  *string         `json:"cache_salt,omitempty"`
	KVTransferParams           json.RawMessage `json:"kv_transfer_params,omitempty"`
	VLLMXArgs                  json.RawMessage `json:"vllm_xargs,omitempty"`

	// Extra holds the fields this type does not know, as they came.
	Extra map[string]json.RawMessage `json:"-"`
}

func (r *CompletionRequest) special(key string, raw json.RawMessage) (bool, error) {
	switch key {
	case "stop":
		s, err := decodeStop(raw)
		r.Stop = s
		return true, err
	case "prompt":
		if isNull(raw) {
			return true, nil
		}
		p, err := decodePrompt(raw)
		r.Prompt = p
		return true, err
	}
	return false, nil
}

// ParseCompletionRequest decodes and validates a completion body. Every error is an *Error
// (400, naming the field in Param). It does not check that the model exists. Its raw fields are
// slices of body, which the caller must leave as it is while it uses them.
func ParseCompletionRequest(body []byte) (*CompletionRequest, error) {
	r := &CompletionRequest{}
	extra, _, err := decodeObject(body, r, r.special, false, false)
	if err != nil {
		return nil, err
	}
	r.Extra = extra
	if err := r.validate(); err != nil {
		return nil, err
	}
	return r, nil
}

// MarshalJSON writes the known fields and then Extra.
func (r *CompletionRequest) MarshalJSON() ([]byte, error) {
	type plain CompletionRequest
	return encodeObject((*plain)(r), r.Extra)
}

// UnmarshalJSON decodes without validation; use ParseCompletionRequest for client requests.
func (r *CompletionRequest) UnmarshalJSON(b []byte) error {
	type plain CompletionRequest
	extra, _, err := decodeObject(b, (*plain)(r), r.special, false, true)
	if err != nil {
		return err
	}
	r.Extra = extra
	return nil
}

// IncludeUsage reports whether a streamed response will carry a final usage chunk.
func (r *CompletionRequest) IncludeUsage() bool {
	return r.Stream && r.StreamOptions != nil && r.StreamOptions.IncludeUsage
}

// MaxOutputTokens returns max_tokens (vLLM's completions default when absent is 16).
func (r *CompletionRequest) MaxOutputTokens() int {
	if r.MaxTokens != nil {
		return *r.MaxTokens
	}
	return 16
}

func (r *CompletionRequest) validate() error {
	if r.Prompt.Count() == 0 && r.PromptEmbeds == nil {
		return BadRequest("prompt", "Missing required parameter: 'prompt' (or 'prompt_embeds').")
	}
	if r.Logprobs != nil && *r.Logprobs < 0 {
		return BadRequest("logprobs", "Invalid value for 'logprobs': must be a non-negative integer, got %d.", *r.Logprobs)
	}
	maxTok := 0
	if r.MaxTokens != nil {
		maxTok = *r.MaxTokens
	}
	return validateSampling(sampling{
		stream: r.Stream, streamOptions: r.StreamOptions != nil,
		maxTokens: r.MaxTokens, minTokens: r.MinTokens, maxForMin: maxTok, n: r.N, bestOf: r.BestOf,
		temperature: r.Temperature, topP: r.TopP, topK: r.TopK, minP: r.MinP,
		presence: r.PresencePenalty, frequency: r.FrequencyPenalty, repetition: r.RepetitionPenalty,
		promptLogprobs: r.PromptLogprobs, truncate: r.TruncatePromptTokens, cacheSalt: r.CacheSalt,
	})
}
