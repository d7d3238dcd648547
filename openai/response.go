package openai

import (
	"bytes"
	"encoding/json"
)

// Object names of the response types.
const (
	ObjectChatCompletion      = "chat.completion"
	ObjectChatCompletionChunk = "chat.completion.chunk"
	ObjectTextCompletion      = "text_completion"
	ObjectModel               = "model"
	ObjectList                = "list"
)

// Usage is the token accounting of a response.
type Usage struct {
	PromptTokens        int                  `json:"prompt_tokens"`
	CompletionTokens    int                  `json:"completion_tokens"`
	TotalTokens         int                  `json:"total_tokens"`
	PromptTokensDetails *PromptTokensDetails `json:"prompt_tokens_details,omitempty"`
}

// PromptTokensDetails says how many prompt tokens came from the prefix cache.
type PromptTokensDetails struct {
	CachedTokens int `json:"cached_tokens"`
}

// CachedTokens returns prompt_tokens_details.cached_tokens, 0 when absent.
func (u *Usage) CachedTokens() int {
	if u == nil || u.PromptTokensDetails == nil {
		return 0
	}
	return u.PromptTokensDetails.CachedTokens
}

// Function is a tool call's function.
type Function struct {
	Name      string `json:"name,omitempty"`
	Arguments string `json:"arguments"`
}

// ToolCall is a tool call in an assistant message or, with Index set, a streamed delta.
type ToolCall struct {
	Index    *int     `json:"index,omitempty"`
	ID       string   `json:"id,omitempty"`
	Type     string   `json:"type,omitempty"`
	Function Function `json:"function"`
}

// Message is an assistant message in a response, or a delta in a chunk.
type Message struct {
	Role             string     `json:"role,omitempty"`
	Content          *string    `json:"content"`
	ReasoningContent *string    `json:"reasoning_content,omitempty"`
	ToolCalls        []ToolCall `json:"tool_calls,omitempty"`
}

// Delta is a streamed message fragment; content is omitted when absent.
type Delta struct {
	Role             string     `json:"role,omitempty"`
	Content          *string    `json:"content,omitempty"`
	ReasoningContent *string    `json:"reasoning_content,omitempty"`
	ToolCalls        []ToolCall `json:"tool_calls,omitempty"`
}

// ChatChoice is one choice of a chat completion.
type ChatChoice struct {
	Index        int             `json:"index"`
	Message      Message         `json:"message"`
	Logprobs     json.RawMessage `json:"logprobs"`
	FinishReason *string         `json:"finish_reason"`
	StopReason   json.RawMessage `json:"stop_reason,omitempty"`
}

// ChatCompletion is a non-streamed /v1/chat/completions response.
type ChatCompletion struct {
	ID                string          `json:"id"`
	Object            string          `json:"object"`
	Created           int64           `json:"created"`
	Model             string          `json:"model"`
	Choices           []ChatChoice    `json:"choices"`
	Usage             *Usage          `json:"usage,omitempty"`
	SystemFingerprint *string         `json:"system_fingerprint,omitempty"`
	PromptLogprobs    json.RawMessage `json:"prompt_logprobs,omitempty"`
	KVTransferParams  json.RawMessage `json:"kv_transfer_params,omitempty"`
}

// ChunkChoice is one choice of a streamed chat chunk.
type ChunkChoice struct {
	Index        int             `json:"index"`
	Delta        Delta           `json:"delta"`
	Logprobs     json.RawMessage `json:"logprobs,omitempty"`
	FinishReason *string         `json:"finish_reason"`
	StopReason   json.RawMessage `json:"stop_reason,omitempty"`
}

// ChatCompletionChunk is one SSE event of a streamed chat completion. The final usage chunk
// has no choices.
type ChatCompletionChunk struct {
	ID      string        `json:"id"`
	Object  string        `json:"object"`
	Created int64         `json:"created"`
	Model   string        `json:"model"`
	Choices []ChunkChoice `json:"choices"`
	Usage   *Usage        `json:"usage,omitempty"`
}

// CompletionChoice is one choice of a text completion (and of its chunks).
type CompletionChoice struct {
	Index        int             `json:"index"`
	Text         string          `json:"text"`
	Logprobs     json.RawMessage `json:"logprobs"`
	FinishReason *string         `json:"finish_reason"`
	StopReason   json.RawMessage `json:"stop_reason,omitempty"`
}

// Completion is a non-streamed /v1/completions response.
type Completion struct {
	ID               string             `json:"id"`
	Object           string             `json:"object"`
	Created          int64              `json:"created"`
	Model            string             `json:"model"`
	Choices          []CompletionChoice `json:"choices"`
	Usage            *Usage             `json:"usage,omitempty"`
	KVTransferParams json.RawMessage    `json:"kv_transfer_params,omitempty"`
}

// CompletionChunk is one SSE event of a streamed completion; vLLM shapes it as a Completion.
type CompletionChunk struct {
	ID      string             `json:"id"`
	Object  string             `json:"object"`
	Created int64              `json:"created"`
	Model   string             `json:"model"`
	Choices []CompletionChoice `json:"choices"`
	Usage   *Usage             `json:"usage,omitempty"`
}

// Model is one entry of /v1/models.
type Model struct {
	ID          string  `json:"id"`
	Object      string  `json:"object"`
	Created     int64   `json:"created"`
	OwnedBy     string  `json:"owned_by"`
	Root        string  `json:"root,omitempty"`
	Parent      *string `json:"parent,omitempty"`
	MaxModelLen int     `json:"max_model_len,omitempty"`
}

// ModelList is the /v1/models response.
type ModelList struct {
	Object string  `json:"object"`
	Data   []Model `json:"data"`
}

var usageKey = []byte(`"usage"`)

// UsageFromBody extracts usage from a non-streamed response body. It reports false when the
// body has no (or a null) usage object or is not JSON.
func UsageFromBody(body []byte) (*Usage, bool) {
	if !bytes.Contains(body, usageKey) {
		return nil, false
	}
	var v struct {
		Usage    *Usage `json:"usage"`
		Response *struct {
			Usage *Usage `json:"usage"`
		} `json:"response"` // a Responses stream's final event
	}
	if json.Unmarshal(body, &v) != nil {
		return nil, false
	}
	if v.Usage == nil && v.Response != nil {
		v.Usage = v.Response.Usage
	}
	return v.Usage, v.Usage != nil
}

// UsageFromChunk extracts usage from one SSE event's data (the final chunk when
// stream_options.include_usage is on); false for "[DONE]", chunks without usage and non-JSON.
func UsageFromChunk(data []byte) (*Usage, bool) {
	return UsageFromBody(data)
}
