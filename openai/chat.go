package openai

import (
	"encoding/json"
	"fmt"
	"strings"
)

// roles are the message roles a chat request may use (OpenAI's, "function" deprecated).
var roles = [...]string{"system", "developer", "user", "assistant", "tool", "function"}

var rolesText = "'" + strings.Join(roles[:], "', '") + "'"

// StreamOptions is stream_options.
type StreamOptions struct {
	IncludeUsage         bool `json:"include_usage"`
	ContinuousUsageStats bool `json:"continuous_usage_stats,omitempty"`
}

// ChatRequest is a /v1/chat/completions body with every field vLLM accepts. Fields vLLM does
// not know are kept in Extra and written back by MarshalJSON, so they reach the engine. A
// nil pointer means the field was absent (or null).
type ChatRequest struct {
	Model    string          `json:"model,omitempty"`
	Messages json.RawMessage `json:"messages"`

	// OpenAI fields.
	FrequencyPenalty    *float64           `json:"frequency_penalty,omitempty"`
	LogitBias           map[string]float64 `json:"logit_bias,omitempty"`
	Logprobs            *bool              `json:"logprobs,omitempty"`
	TopLogprobs         *int               `json:"top_logprobs,omitempty"`
	MaxTokens           *int               `json:"max_tokens,omitempty"`
	MaxCompletionTokens *int               `json:"max_completion_tokens,omitempty"`
	N                   *int               `json:"n,omitempty"`
	PresencePenalty     *float64           `json:"presence_penalty,omitempty"`
	ResponseFormat      json.RawMessage    `json:"response_format,omitempty"`
	Seed                *int64             `json:"seed,omitempty"`
	Stop                []string           `json:"stop,omitempty"`
	Stream              bool               `json:"stream,omitempty"`
	StreamOptions       *StreamOptions     `json:"stream_options,omitempty"`
	Temperature         *float64           `json:"temperature,omitempty"`
	TopP                *float64           `json:"top_p,omitempty"`
	Tools               json.RawMessage    `json:"tools,omitempty"`
	ToolChoice          json.RawMessage    `json:"tool_choice,omitempty"`
	ParallelToolCalls   *bool              `json:"parallel_tool_calls,omitempty"`
	ReasoningEffort     string             `json:"reasoning_effort,omitempty"`
	IncludeReasoning    *bool              `json:"include_reasoning,omitempty"`
	User                string             `json:"user,omitempty"`

	// vLLM sampling extensions.
	BestOf                     *int     `json:"best_of,omitempty"`
	UseBeamSearch              bool     `json:"use_beam_search,omitempty"`
	TopK                       *int     `json:"top_k,omitempty"`
	MinP                       *float64 `json:"min_p,omitempty"`
	RepetitionPenalty          *float64 `json:"repetition_penalty,omitempty"`
	LengthPenalty              *float64 `json:"length_penalty,omitempty"`
	StopTokenIDs               []int    `json:"stop_token_ids,omitempty"`
	IncludeStopStrInOutput     bool     `json:"include_stop_str_in_output,omitempty"`
	IgnoreEOS                  bool     `json:"ignore_eos,omitempty"`
	MinTokens                  *int     `json:"min_tokens,omitempty"`
	SkipSpecialTokens          *bool    `json:"skip_special_tokens,omitempty"`
	SpacesBetweenSpecialTokens *bool    `json:"spaces_between_special_tokens,omitempty"`
	TruncatePromptTokens       *int     `json:"truncate_prompt_tokens,omitempty"`
	PromptLogprobs             *int     `json:"prompt_logprobs,omitempty"`
	AllowedTokenIDs            []int    `json:"allowed_token_ids,omitempty"`
	BadWords                   []string `json:"bad_words,omitempty"`

	// vLLM chat extensions.
	Echo                    bool            `json:"echo,omitempty"`
	AddGenerationPrompt     *bool           `json:"add_generation_prompt,omitempty"`
	ContinueFinalMessage    bool            `json:"continue_final_message,omitempty"`
	AddSpecialTokens        bool            `json:"add_special_tokens,omitempty"`
	Documents               json.RawMessage `json:"documents,omitempty"`
	ChatTemplate            *string         `json:"chat_template,omitempty"`
	ChatTemplateKwargs      map[string]any  `json:"chat_template_kwargs,omitempty"`
	MMProcessorKwargs       json.RawMessage `json:"mm_processor_kwargs,omitempty"`
	GuidedJSON              json.RawMessage `json:"guided_json,omitempty"`
	GuidedRegex             json.RawMessage `json:"guided_regex,omitempty"`
	GuidedChoice            json.RawMessage `json:"guided_choice,omitempty"`
	GuidedGrammar           json.RawMessage `json:"guided_grammar,omitempty"`
	StructuralTag           json.RawMessage `json:"structural_tag,omitempty"`
	GuidedDecodingBackend   json.RawMessage `json:"guided_decoding_backend,omitempty"`
	GuidedWhitespacePattern json.RawMessage `json:"guided_whitespace_pattern,omitempty"`
	StructuredOutputs       json.RawMessage `json:"structured_outputs,omitempty"`
	Priority                *int            `json:"priority,omitempty"`
	RequestID               string          `json:"request_id,omitempty"`
	LogitsProcessors        json.RawMessage `json:"logits_processors,omitempty"`
	ReturnTokensAsTokenIDs  *bool           `json:"return_tokens_as_token_ids,omitempty"`
	ReturnTokenIDs          *bool           `json:"return_token_ids,omitempty"`
	CacheSalt               *string         `json:"cache_salt,omitempty"`
	KVTransferParams        json.RawMessage `json:"kv_transfer_params,omitempty"`
	VLLMXArgs               json.RawMessage `json:"vllm_xargs,omitempty"`

	// Extra holds the fields this type does not know, as they came.
	Extra map[string]json.RawMessage `json:"-"`
}

// ParseChatRequest decodes and validates a chat completion body. Every error is an *Error
// (400, naming the field in Param). It does not check that the model exists: the caller knows
// the models (see ModelNotFound). The raw fields of the request (Messages, Tools, Extra, ...)
// are slices of body, which the caller must leave as it is while it uses them.
func ParseChatRequest(body []byte) (*ChatRequest, error) {
	r := &ChatRequest{}
	extra, msgErr, err := decodeObject(body, r, func(key string, raw json.RawMessage) (bool, error) {
		if key != "stop" {
			return false, nil
		}
		s, err := decodeStop(raw)
		r.Stop = s
		return true, err
	}, true, false)
	if err != nil {
		return nil, err
	}
	r.Extra = extra
	if err := r.validate(msgErr); err != nil {
		return nil, err
	}
	return r, nil
}

// MarshalJSON writes the known fields and then Extra.
func (r *ChatRequest) MarshalJSON() ([]byte, error) {
	type plain ChatRequest
	return encodeObject((*plain)(r), r.Extra)
}

// UnmarshalJSON decodes without validation; use ParseChatRequest for requests from clients.
func (r *ChatRequest) UnmarshalJSON(b []byte) error {
	type plain ChatRequest
	p := (*plain)(r)
	extra, _, err := decodeObject(b, p, func(key string, raw json.RawMessage) (bool, error) {
		if key != "stop" {
			return false, nil
		}
		s, err := decodeStop(raw)
		p.Stop = s
		return true, err
	}, false, true)
	if err != nil {
		return err
	}
	r.Extra = extra
	return nil
}

// GenerationPrompt reports whether the chat template is rendered with add_generation_prompt
// (vLLM's default is true).
func (r *ChatRequest) GenerationPrompt() bool {
	return r.AddGenerationPrompt == nil || *r.AddGenerationPrompt
}

// IncludeUsage reports whether a streamed response will carry a final usage chunk.
func (r *ChatRequest) IncludeUsage() bool {
	return r.Stream && r.StreamOptions != nil && r.StreamOptions.IncludeUsage
}

// MaxOutputTokens returns max_completion_tokens, else max_tokens, and whether either was set.
func (r *ChatRequest) MaxOutputTokens() (int, bool) {
	if r.MaxCompletionTokens != nil {
		return *r.MaxCompletionTokens, true
	}
	if r.MaxTokens != nil {
		return *r.MaxTokens, true
	}
	return 0, false
}

// validate checks the decoded request; msgErr is what the scan of the messages array found.
func (r *ChatRequest) validate(msgErr error) error {
	if r.Messages == nil {
		return BadRequest("messages", "Missing required parameter: 'messages'.")
	}
	if jsonKind(r.Messages) != "an array" {
		return BadRequest("messages", "Invalid type for 'messages': expected an array of objects, but got %s instead.", jsonKind(r.Messages))
	}
	if msgErr != nil {
		return msgErr
	}
	if err := validateTools(r.Tools, r.ToolChoice); err != nil {
		return err
	}
	if r.ContinueFinalMessage && r.GenerationPrompt() {
		return BadRequest("continue_final_message", "Cannot set both `continue_final_message` and `add_generation_prompt` to True.")
	}
	if r.TopLogprobs != nil {
		if *r.TopLogprobs < 0 {
			return BadRequest("top_logprobs", "Invalid value for 'top_logprobs': must be a non-negative integer, got %d.", *r.TopLogprobs)
		}
		if *r.TopLogprobs > 0 && (r.Logprobs == nil || !*r.Logprobs) {
			return BadRequest("top_logprobs", "When using `top_logprobs`, `logprobs` must be set to true.")
		}
	}
	if r.MaxCompletionTokens != nil && *r.MaxCompletionTokens < 1 {
		return BadRequest("max_completion_tokens", "Invalid value for 'max_completion_tokens': must be at least 1, got %d.", *r.MaxCompletionTokens)
	}
	maxTok, _ := r.MaxOutputTokens()
	return validateSampling(sampling{
		stream: r.Stream, streamOptions: r.StreamOptions != nil,
		maxTokens: r.MaxTokens, minTokens: r.MinTokens, maxForMin: maxTok, n: r.N, bestOf: r.BestOf,
		temperature: r.Temperature, topP: r.TopP, topK: r.TopK, minP: r.MinP,
		presence: r.PresencePenalty, frequency: r.FrequencyPenalty, repetition: r.RepetitionPenalty,
		promptLogprobs: r.PromptLogprobs, truncate: r.TruncatePromptTokens, cacheSalt: r.CacheSalt,
	})
}

// validateTools checks tools (an array of {"type":"function","function":{"name":...}}) and that a
// tool_choice other than "none" comes with tools.
func validateTools(tools, choice json.RawMessage) error {
	if tools != nil {
		var list []json.RawMessage
		if jsonKind(tools) != "an array" || json.Unmarshal(tools, &list) != nil {
			return BadRequest("tools", "Invalid type for 'tools': expected an array of objects, but got %s instead.", jsonKind(tools))
		}
		for i, t := range list {
			p := fmt.Sprintf("tools[%d]", i)
			var tool struct {
				Type     *string         `json:"type"`
				Function json.RawMessage `json:"function"`
			}
			if jsonKind(t) != "an object" || json.Unmarshal(t, &tool) != nil {
				return BadRequest(p, "Invalid type for '%s': expected an object with a string 'type', but got %s instead.", p, jsonKind(t))
			}
			if tool.Type != nil && *tool.Type != "function" {
				return BadRequest(p+".type", "Invalid value for '%s.type': expected 'function', got '%s'.", p, *tool.Type)
			}
			if tool.Function == nil {
				return BadRequest(p+".function", "Missing required parameter: '%s.function'.", p)
			}
			var fn struct {
				Name *string `json:"name"`
			}
			if jsonKind(tool.Function) != "an object" || json.Unmarshal(tool.Function, &fn) != nil {
				return BadRequest(p+".function", "Invalid type for '%s.function': expected an object, but got %s instead.", p, jsonKind(tool.Function))
			}
			if fn.Name == nil || *fn.Name == "" {
				return BadRequest(p+".function.name", "Missing required parameter: '%s.function.name'.", p)
			}
		}
	}
	if choice == nil {
		return nil
	}
	switch jsonKind(choice) {
	case "a string":
		var s string
		_ = json.Unmarshal(choice, &s)
		switch s {
		case "none":
			return nil
		case "auto", "required":
		default:
			return BadRequest("tool_choice", "Invalid value for 'tool_choice': expected 'none', 'auto', 'required' or a named function, got '%s'.", s)
		}
	case "an object":
		var named struct {
			Function struct {
				Name string `json:"name"`
			} `json:"function"`
		}
		if json.Unmarshal(choice, &named) != nil || named.Function.Name == "" {
			return BadRequest("tool_choice", "Invalid value for 'tool_choice': a named tool choice needs function.name.")
		}
	default:
		return BadRequest("tool_choice", "Invalid type for 'tool_choice': expected a string or an object, but got %s instead.", jsonKind(choice))
	}
	if tools == nil {
		return BadRequest("tool_choice", "When using `tool_choice`, `tools` must be set.")
	}
	return nil
}
