package openai

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
)

// ResponsesRequest is a /v1/responses body (OpenAI's Responses API) as far as routing needs
// it; every other field stays in Extra and reaches the engine untouched (the router forwards
// the client's bytes). A nil pointer means the field was absent (or null).
type ResponsesRequest struct {
	Model              string          `json:"model,omitempty"`
	Input              json.RawMessage `json:"input"`
	Instructions       *string         `json:"instructions,omitempty"`
	Tools              json.RawMessage `json:"tools,omitempty"`
	ToolChoice         json.RawMessage `json:"tool_choice,omitempty"`
	Stream             bool            `json:"stream,omitempty"`
	MaxOutputTokens    *int            `json:"max_output_tokens,omitempty"`
	PreviousResponseID *string         `json:"previous_response_id,omitempty"`
	Conversation       json.RawMessage `json:"conversation,omitempty"`
	Background         *bool           `json:"background,omitempty"`
	Temperature        *float64        `json:"temperature,omitempty"`
	TopP               *float64        `json:"top_p,omitempty"`
	CacheSalt          *string         `json:"cache_salt,omitempty"`

	// Extra holds the fields this type does not know, as they came.
	Extra map[string]json.RawMessage `json:"-"`

	conv *converted // ChatMessages' result, computed once by validation
}

type converted struct {
	messages, tools json.RawMessage
	err             error
}

// ParseResponsesRequest decodes and validates a Responses body. Every error is an *Error
// (400, naming the field in Param). State kept by a server (previous_response_id,
// conversation, background) is refused: kvgate keeps no responses, and an engine behind it
// would not find the one a client names. The raw fields are slices of body.
func ParseResponsesRequest(body []byte) (*ResponsesRequest, error) {
	r := &ResponsesRequest{}
	extra, _, err := decodeObject(body, r, nil, false, false)
	if err != nil {
		return nil, err
	}
	r.Extra = extra
	if err := r.validate(); err != nil {
		return nil, err
	}
	return r, nil
}

func (r *ResponsesRequest) validate() error {
	if r.Input == nil {
		return BadRequest("input", "Missing required parameter: 'input'.")
	}
	if k := jsonKind(r.Input); k != "a string" && k != "an array" {
		return BadRequest("input", "Invalid type for 'input': expected a string or an array of input items, but got %s instead.", k)
	}
	if r.PreviousResponseID != nil {
		return BadRequest("previous_response_id", "previous_response_id is not supported: kvgate keeps no responses and routes every request on its own; send the whole conversation in 'input'.")
	}
	if r.Conversation != nil {
		return BadRequest("conversation", "conversation is not supported: kvgate keeps no conversations; send the whole conversation in 'input'.")
	}
	if r.Background != nil && *r.Background {
		return BadRequest("background", "background responses are not supported: kvgate keeps no responses to poll.")
	}
	if r.MaxOutputTokens != nil && *r.MaxOutputTokens < 1 {
		return BadRequest("max_output_tokens", "Invalid value for 'max_output_tokens': must be at least 1, got %d.", *r.MaxOutputTokens)
	}
	if r.Temperature != nil && (*r.Temperature < 0 || *r.Temperature > 2) {
		return BadRequest("temperature", "Invalid value for 'temperature': must be between 0 and 2, got %g.", *r.Temperature)
	}
	if r.TopP != nil && (*r.TopP <= 0 || *r.TopP > 1) {
		return BadRequest("top_p", "Invalid value for 'top_p': must be in (0, 1], got %g.", *r.TopP)
	}
	if r.CacheSalt != nil && *r.CacheSalt == "" {
		return BadRequest("cache_salt", "Invalid value for 'cache_salt': must be a non-empty string.")
	}
	if r.Tools != nil {
		if _, err := r.chatTools(); err != nil && !errors.Is(err, ErrUnrenderable) {
			return err
		}
	}
	m, t, err := r.convert()
	r.conv = &converted{m, t, err}
	if err != nil && !errors.Is(err, ErrUnrenderable) {
		return err
	}
	return nil
}

// ErrUnrenderable is what ChatMessages returns (wrapped) for valid input the router cannot
// render as text: images, files, built-in tools. Such a request is routed by load alone and
// the engine renders it.
var ErrUnrenderable = errors.New("openai: input the router cannot render")

// ChatMessages converts the request into the chat messages and tools an engine renders with
// its chat template, the way vLLM's Responses serving does: instructions become a leading
// system message; a string input is one user message; input items map one to one (messages
// with their input_text parts as text parts), except that function_call items join the
// preceding assistant message's tool_calls, and an assistant message fills the content of a
// preceding assistant message that has none; function_call_output items become tool messages.
// tools is nil when the request has none. The error is an *Error for invalid items, or wraps
// ErrUnrenderable.
func (r *ResponsesRequest) ChatMessages() (messages, tools json.RawMessage, err error) {
	if r.conv != nil {
		return r.conv.messages, r.conv.tools, r.conv.err
	}
	return r.convert()
}

func (r *ResponsesRequest) convert() (messages, tools json.RawMessage, err error) {
	var msgs []chatMsg
	if r.Instructions != nil && *r.Instructions != "" {
		msgs = append(msgs, chatMsg{Role: "system", Content: mustJSON(*r.Instructions)})
	}
	if jsonKind(r.Input) == "a string" {
		msgs = append(msgs, chatMsg{Role: "user", Content: r.Input})
	} else if items, ok := decodeItems(r.Input); ok { // one pass over the input
		for i, it := range items {
			if msgs, err = appendItem(msgs, i, it); err != nil {
				return nil, nil, err
			}
		}
	} else { // item by item, to name the one that is wrong
		var raws []json.RawMessage
		if err := json.Unmarshal(r.Input, &raws); err != nil {
			return nil, nil, BadRequest("input", "Invalid value for 'input': %s", jsonErrText(err))
		}
		for i, raw := range raws {
			p := fmt.Sprintf("input[%d]", i)
			var it inputItem
			if jsonKind(raw) != "an object" {
				return nil, nil, BadRequest(p, "Invalid type for '%s': expected an object, but got %s instead.", p, jsonKind(raw))
			}
			if err := json.Unmarshal(raw, &it); err != nil {
				return nil, nil, BadRequest(p, "Invalid value for '%s': %s", p, jsonErrText(err))
			}
			if msgs, err = appendItem(msgs, i, it); err != nil {
				return nil, nil, err
			}
		}
	}
	if r.Tools != nil {
		if tools, err = r.chatTools(); err != nil {
			return nil, nil, err
		}
	}
	messages, err = json.Marshal(msgs)
	if err != nil {
		return nil, nil, fmt.Errorf("openai: encoding messages: %w", err)
	}
	return messages, tools, nil
}

// chatMsg is one chat message as vLLM's conversion produces it; absent keys are omitted, as
// in the Python dicts.
type chatMsg struct {
	Role       string          `json:"role"`
	Content    json.RawMessage `json:"content,omitempty"`
	Reasoning  *string         `json:"reasoning,omitempty"`
	ToolCalls  []chatToolCall  `json:"tool_calls,omitempty"`
	ToolCallID *string         `json:"tool_call_id,omitempty"`
}

type chatToolCall struct {
	ID       string   `json:"id"`
	Type     string   `json:"type"`
	Function Function `json:"function"`
}

// inputItem is the union of the input item kinds the router renders.
type inputItem struct {
	Type      *string         `json:"type"`
	Role      *string         `json:"role"`
	Content   json.RawMessage `json:"content"`
	CallID    *string         `json:"call_id"`
	Name      *string         `json:"name"`
	Arguments *string         `json:"arguments"`
	Output    json.RawMessage `json:"output"`
	Summary   []textPart      `json:"summary"`
}

type textPart struct {
	Type string  `json:"type"`
	Text *string `json:"text"`
}

// decodeItems decodes an input array in one pass; false when some item is not a well-typed
// object (the caller then finds which).
func decodeItems(raw json.RawMessage) ([]inputItem, bool) {
	var items []*inputItem
	if json.Unmarshal(raw, &items) != nil {
		return nil, false
	}
	out := make([]inputItem, len(items))
	for i, it := range items {
		if it == nil { // a null item
			return nil, false
		}
		out[i] = *it
	}
	return out, true
}

func appendItem(msgs []chatMsg, i int, it inputItem) ([]chatMsg, error) {
	p := fmt.Sprintf("input[%d]", i)
	typ := "message"
	if it.Type != nil {
		typ = *it.Type
	}
	var prevAsst *chatMsg // the preceding message when it is the assistant's
	if n := len(msgs); n > 0 && msgs[n-1].Role == "assistant" {
		prevAsst = &msgs[n-1]
	}
	switch typ {
	case "message":
		return appendMessage(msgs, prevAsst, p, it)
	case "function_call":
		switch {
		case it.CallID == nil:
			return nil, BadRequest(p+".call_id", "Missing required parameter: '%s.call_id'.", p)
		case it.Name == nil || *it.Name == "":
			return nil, BadRequest(p+".name", "Missing required parameter: '%s.name'.", p)
		case it.Arguments == nil:
			return nil, BadRequest(p+".arguments", "Missing required parameter: '%s.arguments'.", p)
		}
		call := chatToolCall{ID: *it.CallID, Type: "function", Function: Function{Name: *it.Name, Arguments: *it.Arguments}}
		if prevAsst != nil {
			prevAsst.ToolCalls = append(prevAsst.ToolCalls, call)
			return msgs, nil
		}
		return append(msgs, chatMsg{Role: "assistant", ToolCalls: []chatToolCall{call}}), nil
	case "function_call_output":
		if it.CallID == nil {
			return nil, BadRequest(p+".call_id", "Missing required parameter: '%s.call_id'.", p)
		}
		if it.Output == nil {
			return nil, BadRequest(p+".output", "Missing required parameter: '%s.output'.", p)
		}
		out, err := userContent(p+".output", it.Output)
		if err != nil {
			return nil, err
		}
		return append(msgs, chatMsg{Role: "tool", Content: out, ToolCallID: it.CallID}), nil
	case "reasoning":
		text := ""
		var parts []textPart
		_ = json.Unmarshal(it.Content, &parts)
		switch {
		case len(parts) > 0 && parts[0].Text != nil:
			text = *parts[0].Text
		case len(it.Summary) > 0 && it.Summary[0].Text != nil:
			text = *it.Summary[0].Text
		}
		if prevAsst != nil && prevAsst.Reasoning == nil {
			prevAsst.Reasoning = &text
			return msgs, nil
		}
		return append(msgs, chatMsg{Role: "assistant", Reasoning: &text}), nil
	case "item_reference":
		return nil, BadRequest(p, "Invalid value for '%s': item_reference needs stored items, which kvgate does not keep; send the item itself.", p)
	}
	return nil, fmt.Errorf("%w: %s items", ErrUnrenderable, typ)
}

// appendMessage adds a message item: an assistant's text (its first content part's) fills a
// preceding assistant message without content; other roles keep their content, input_text
// parts becoming text parts.
func appendMessage(msgs []chatMsg, prevAsst *chatMsg, p string, it inputItem) ([]chatMsg, error) {
	if it.Role == nil {
		return nil, BadRequest(p+".role", "Missing required parameter: '%s.role'.", p)
	}
	if it.Content == nil {
		return nil, BadRequest(p+".content", "Missing required parameter: '%s.content'.", p)
	}
	switch role := *it.Role; role {
	case "assistant":
		var text string
		switch jsonKind(it.Content) {
		case "a string":
			_ = json.Unmarshal(it.Content, &text)
		case "an array":
			var parts []textPart
			if json.Unmarshal(it.Content, &parts) != nil || len(parts) == 0 || parts[0].Text == nil {
				return nil, BadRequest(p+".content", "Invalid value for '%s.content': expected a string or output_text parts.", p)
			}
			text = *parts[0].Text
		default:
			return nil, BadRequest(p+".content", "Invalid type for '%s.content': expected a string or an array, but got %s instead.", p, jsonKind(it.Content))
		}
		if prevAsst != nil && prevAsst.Content == nil {
			prevAsst.Content = mustJSON(text)
			return msgs, nil
		}
		return append(msgs, chatMsg{Role: "assistant", Content: mustJSON(text)}), nil
	case "user", "system", "developer":
		c, err := userContent(p+".content", it.Content)
		if err != nil {
			return nil, err
		}
		return append(msgs, chatMsg{Role: role, Content: c}), nil
	default:
		return nil, BadRequest(p+".role", "Invalid value for '%s.role': expected 'user', 'assistant', 'system' or 'developer', got '%s'.", p, role)
	}
}

// userContent is a message's (or a tool output's) content: a string as it is, or an array of
// input_text parts as chat text parts (the chat template flattens them as for chat requests).
// Images and files wrap ErrUnrenderable.
func userContent(p string, raw json.RawMessage) (json.RawMessage, error) {
	switch jsonKind(raw) {
	case "a string":
		return raw, nil
	case "an array":
	default:
		return nil, BadRequest(p, "Invalid type for '%s': expected a string or an array of content parts, but got %s instead.", p, jsonKind(raw))
	}
	var parts []*textPart
	if json.Unmarshal(raw, &parts) != nil || slices.Contains(parts, nil) {
		// Find the part that is not an object with a string type and text.
		var raws []json.RawMessage
		if err := json.Unmarshal(raw, &raws); err != nil {
			return nil, BadRequest(p, "Invalid value for '%s': %s", p, jsonErrText(err))
		}
		for j, pr := range raws {
			var tp textPart
			if jsonKind(pr) != "an object" || json.Unmarshal(pr, &tp) != nil {
				return nil, BadRequest(fmt.Sprintf("%s[%d]", p, j), "Invalid type for '%s[%d]': expected a content part object.", p, j)
			}
		}
		return nil, BadRequest(p, "Invalid value for '%s'.", p) // unreachable: some part failed above
	}
	out := make([]textPart, 0, len(parts))
	for j, tp := range parts {
		switch tp.Type {
		case "input_text", "output_text", "text":
			if tp.Text == nil {
				return nil, BadRequest(fmt.Sprintf("%s[%d].text", p, j), "Missing required parameter: '%s[%d].text'.", p, j)
			}
			out = append(out, textPart{Type: "text", Text: tp.Text})
		case "":
			return nil, BadRequest(fmt.Sprintf("%s[%d].type", p, j), "Missing required parameter: '%s[%d].type'.", p, j)
		default:
			return nil, fmt.Errorf("%w: %s content", ErrUnrenderable, tp.Type)
		}
	}
	return mustJSON(out), nil
}

// chatTools converts Responses function tools ({"type":"function","name",...}) to the chat
// form the template sees ({"type":"function","function":{"name","description","parameters"}}),
// as vLLM does. Built-in tools wrap ErrUnrenderable.
func (r *ResponsesRequest) chatTools() (json.RawMessage, error) {
	var list []json.RawMessage
	if jsonKind(r.Tools) != "an array" || json.Unmarshal(r.Tools, &list) != nil {
		return nil, BadRequest("tools", "Invalid type for 'tools': expected an array of objects, but got %s instead.", jsonKind(r.Tools))
	}
	if len(list) == 0 {
		return nil, nil
	}
	type fn struct {
		Name        string          `json:"name"`
		Description *string         `json:"description,omitempty"`
		Parameters  json.RawMessage `json:"parameters,omitempty"`
	}
	type tool struct {
		Type     string `json:"type"`
		Function fn     `json:"function"`
	}
	out := make([]tool, 0, len(list))
	var unrenderable error
	for i, raw := range list {
		p := fmt.Sprintf("tools[%d]", i)
		var t struct {
			Type        *string         `json:"type"`
			Name        *string         `json:"name"`
			Description *string         `json:"description"`
			Parameters  json.RawMessage `json:"parameters"`
		}
		if jsonKind(raw) != "an object" || json.Unmarshal(raw, &t) != nil {
			return nil, BadRequest(p, "Invalid type for '%s': expected an object with a string 'type', but got %s instead.", p, jsonKind(raw))
		}
		if t.Type == nil {
			return nil, BadRequest(p+".type", "Missing required parameter: '%s.type'.", p)
		}
		if *t.Type != "function" {
			unrenderable = fmt.Errorf("%w: %s tools", ErrUnrenderable, *t.Type)
			continue
		}
		if t.Name == nil || *t.Name == "" {
			return nil, BadRequest(p+".name", "Missing required parameter: '%s.name'.", p)
		}
		if t.Parameters != nil && !isNull(t.Parameters) && jsonKind(t.Parameters) != "an object" {
			return nil, BadRequest(p+".parameters", "Invalid type for '%s.parameters': expected an object, but got %s instead.", p, jsonKind(t.Parameters))
		}
		if isNull(t.Parameters) {
			t.Parameters = nil
		}
		out = append(out, tool{Type: "function", Function: fn{Name: *t.Name, Description: t.Description, Parameters: t.Parameters}})
	}
	if unrenderable != nil {
		return nil, unrenderable
	}
	return mustJSON(out), nil
}

// mustJSON encodes v, which is only strings and slices of them.
func mustJSON(v any) json.RawMessage {
	b, err := json.Marshal(v)
	if err != nil {
		panic(fmt.Sprintf("openai: encoding %T: %v", v, err)) // unreachable: strings only
	}
	return b
}

// Responses object names and event types (OpenAI's Responses API).
const (
	ObjectResponse = "response"

	EventResponseCreated      = "response.created"
	EventResponseInProgress   = "response.in_progress"
	EventOutputItemAdded      = "response.output_item.added"
	EventContentPartAdded     = "response.content_part.added"
	EventOutputTextDelta      = "response.output_text.delta"
	EventOutputTextDone       = "response.output_text.done"
	EventContentPartDone      = "response.content_part.done"
	EventOutputItemDone       = "response.output_item.done"
	EventResponseCompleted    = "response.completed"
	EventResponseIncomplete   = "response.incomplete"
	EventResponseFailed       = "response.failed"
	ResponseStatusCompleted   = "completed"
	ResponseStatusIncomplete  = "incomplete"
	ResponseStatusInProgress  = "in_progress"
	ResponseReasonMaxTokens   = "max_output_tokens"
	ResponseOutputTypeMessage = "message"
	ResponseContentOutputText = "output_text"
)

// ResponsesUsage is a Responses usage object.
type ResponsesUsage struct {
	InputTokens         int                `json:"input_tokens"`
	InputTokensDetails  InputTokensDetails `json:"input_tokens_details"`
	OutputTokens        int                `json:"output_tokens"`
	OutputTokensDetails struct {
		ReasoningTokens int `json:"reasoning_tokens"`
	} `json:"output_tokens_details"`
	TotalTokens int `json:"total_tokens"`
}

// InputTokensDetails says how many input tokens came from the prefix cache.
type InputTokensDetails struct {
	CachedTokens int `json:"cached_tokens"`
}

// OutputText is an output_text content part.
type OutputText struct {
	Type        string            `json:"type"`
	Text        string            `json:"text"`
	Annotations []json.RawMessage `json:"annotations"`
}

// OutputMessage is an output item of type message.
type OutputMessage struct {
	Type    string       `json:"type"`
	ID      string       `json:"id"`
	Status  string       `json:"status"`
	Role    string       `json:"role"`
	Content []OutputText `json:"content"`
}

// Response is a Responses response object (non-streamed, and inside stream events).
type Response struct {
	ID                string          `json:"id"`
	Object            string          `json:"object"`
	CreatedAt         int64           `json:"created_at"`
	Status            string          `json:"status"`
	Model             string          `json:"model"`
	Output            []OutputMessage `json:"output"`
	Usage             *ResponsesUsage `json:"usage"`
	IncompleteDetails *struct {
		Reason string `json:"reason"`
	} `json:"incomplete_details"`
	Error             json.RawMessage `json:"error"`
	Instructions      *string         `json:"instructions"`
	MaxOutputTokens   *int            `json:"max_output_tokens"`
	ParallelToolCalls bool            `json:"parallel_tool_calls"`
	ToolChoice        json.RawMessage `json:"tool_choice"`
	Tools             json.RawMessage `json:"tools"`
}

// ResponseEvent is one SSE event of a streamed response; the fields a type does not use are
// omitted.
type ResponseEvent struct {
	Type           string         `json:"type"`
	SequenceNumber int            `json:"sequence_number"`
	Response       *Response      `json:"response,omitempty"`
	OutputIndex    *int           `json:"output_index,omitempty"`
	ContentIndex   *int           `json:"content_index,omitempty"`
	ItemID         string         `json:"item_id,omitempty"`
	Item           *OutputMessage `json:"item,omitempty"`
	Part           *OutputText    `json:"part,omitempty"`
	Delta          *string        `json:"delta,omitempty"`
	Text           *string        `json:"text,omitempty"`
	Logprobs       []any          `json:"logprobs,omitempty"`
}

// responsesPreamble reports whether an SSE event's data is one of the events a Responses
// stream opens with before any token (created, in_progress, output item and content part
// added): the first token is the first event after them. A quoted event type cannot occur
// inside a JSON string (its quotes would be escaped), so a match is the event's own type.
func responsesPreamble(data []byte) bool {
	for _, t := range preambleTypes {
		if bytes.Contains(data, t) {
			return true
		}
	}
	return false
}

var preambleTypes = [...][]byte{
	[]byte(`"` + EventResponseCreated + `"`), []byte(`"` + EventResponseInProgress + `"`),
	[]byte(`"` + EventOutputItemAdded + `"`), []byte(`"` + EventContentPartAdded + `"`),
}

// UnmarshalJSON reads a chat or completion usage, or a Responses one (input_tokens,
// output_tokens, input_tokens_details.cached_tokens) into the same fields.
func (u *Usage) UnmarshalJSON(b []byte) error {
	type plain Usage
	var v struct {
		plain
		InputTokens        *int                `json:"input_tokens"`
		OutputTokens       *int                `json:"output_tokens"`
		InputTokensDetails *InputTokensDetails `json:"input_tokens_details"`
	}
	if err := json.Unmarshal(b, &v); err != nil {
		return err
	}
	*u = Usage(v.plain)
	if v.InputTokens != nil {
		u.PromptTokens = *v.InputTokens
	}
	if v.OutputTokens != nil {
		u.CompletionTokens = *v.OutputTokens
	}
	if v.InputTokensDetails != nil && u.PromptTokensDetails == nil {
		u.PromptTokensDetails = &PromptTokensDetails{CachedTokens: v.InputTokensDetails.CachedTokens}
	}
	return nil
}
