package openai

import (
	"bytes"
	"encoding/json"
)

// Anthropic's Messages API (/v1/messages) reports usage in its own shape: a whole message's
// "usage", message_start's "message.usage" (the prompt) and message_delta's "usage" (the
// output so far). The front doors account load from it as from OpenAI's usage.

var (
	inputTokensKey  = []byte(`"input_tokens"`)
	outputTokensKey = []byte(`"output_tokens"`)
)

type messagesUsage struct {
	InputTokens   *int `json:"input_tokens"`
	OutputTokens  *int `json:"output_tokens"`
	CacheCreation *int `json:"cache_creation_input_tokens"`
	CacheRead     *int `json:"cache_read_input_tokens"`
}

// usageOfEvent is the usage after one body or SSE event's data, given the usage before it
// (nil for none): OpenAI's replaces it; Anthropic's is merged into it, field by field, since
// message_start and message_delta each carry part. ok is false when data has none.
func usageOfEvent(data []byte, prev *Usage) (*Usage, bool) {
	if !bytes.Contains(data, inputTokensKey) && !bytes.Contains(data, outputTokensKey) {
		return UsageFromChunk(data)
	}
	var v struct {
		Type    string         `json:"type"`
		Usage   *messagesUsage `json:"usage"`
		Message *struct {
			Usage *messagesUsage `json:"usage"`
		} `json:"message"`
	}
	if json.Unmarshal(data, &v) != nil {
		return nil, false
	}
	switch v.Type {
	case "message", "message_start", "message_delta":
	default: // OpenAI's Responses API names its counts input_tokens/output_tokens too
		return UsageFromChunk(data)
	}
	mu := v.Usage
	if mu == nil && v.Message != nil {
		mu = v.Message.Usage
	}
	if mu == nil {
		return nil, false
	}
	u := &Usage{PromptTokensDetails: &PromptTokensDetails{}}
	if prev != nil {
		*u = *prev
		u.PromptTokensDetails = &PromptTokensDetails{CachedTokens: prev.CachedTokens()}
	}
	// The prompt is input + cache creation + cache read; a field left out keeps its value.
	input, cached := u.PromptTokens-u.CachedTokens(), u.CachedTokens()
	if mu.InputTokens != nil || mu.CacheCreation != nil || mu.CacheRead != nil {
		input = 0
		if mu.InputTokens != nil {
			input = *mu.InputTokens
		} else if prev != nil {
			input = prev.PromptTokens - prev.CachedTokens()
		}
		if mu.CacheCreation != nil {
			input += *mu.CacheCreation
		}
		if mu.CacheRead != nil {
			cached = *mu.CacheRead
		}
	}
	u.PromptTokens = input + cached
	u.PromptTokensDetails.CachedTokens = cached
	if mu.OutputTokens != nil {
		u.CompletionTokens = *mu.OutputTokens
	}
	u.TotalTokens = u.PromptTokens + u.CompletionTokens
	return u, true
}
