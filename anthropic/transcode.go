package anthropic

import (
	"bytes"
	"encoding/json"
	"net/http"
	"strconv"
	"strings"

	"github.com/kvgate/kvgate/openai"
)

// Usage is a Messages response's usage. InputTokens are the prompt tokens not read from the
// prefix cache (Anthropic's meaning: the prompt is input + cache read + cache creation).
type Usage struct {
	InputTokens              int `json:"input_tokens"`
	OutputTokens             int `json:"output_tokens"`
	CacheCreationInputTokens int `json:"cache_creation_input_tokens"`
	CacheReadInputTokens     int `json:"cache_read_input_tokens"`
}

// usageOf converts an OpenAI usage.
func usageOf(u *openai.Usage) Usage {
	if u == nil {
		return Usage{}
	}
	cached := u.CachedTokens()
	return Usage{InputTokens: u.PromptTokens - cached, OutputTokens: u.CompletionTokens, CacheReadInputTokens: cached}
}

// ContentBlock is a response content block: text or tool_use.
type ContentBlock struct {
	Type  string          `json:"type"`
	Text  *string         `json:"text,omitempty"`
	ID    string          `json:"id,omitempty"`
	Name  string          `json:"name,omitempty"`
	Input json.RawMessage `json:"input,omitempty"`
}

// Response is a non-streamed Messages response (and message_start's message).
type Response struct {
	ID           string         `json:"id"`
	Type         string         `json:"type"`
	Role         string         `json:"role"`
	Model        string         `json:"model"`
	Content      []ContentBlock `json:"content"`
	StopReason   *string        `json:"stop_reason"`
	StopSequence *string        `json:"stop_sequence"`
	Usage        Usage          `json:"usage"`
}

// stopReason maps a chat finish_reason (and vLLM's stop_reason: the stop string matched)
// to Anthropic's stop_reason and stop_sequence.
func stopReason(finish string, matched json.RawMessage) (string, *string) {
	var seq string
	if json.Unmarshal(matched, &seq) == nil && finish == "stop" {
		return "stop_sequence", &seq
	}
	switch finish {
	case "length":
		return "max_tokens", nil
	case "tool_calls":
		return "tool_use", nil
	}
	return "end_turn", nil
}

func messageID(chatID string) string {
	return "msg_" + strings.TrimPrefix(chatID, "chatcmpl-")
}

// MessageFromChat converts a non-streamed chat completion body into a Messages response:
// the first choice's text as a text block, its tool calls as tool_use blocks.
func MessageFromChat(body []byte) ([]byte, error) {
	var cc openai.ChatCompletion
	if err := json.Unmarshal(body, &cc); err != nil {
		return nil, err
	}
	m := Response{ID: messageID(cc.ID), Type: "message", Role: "assistant", Model: cc.Model, Content: []ContentBlock{}, Usage: usageOf(cc.Usage)}
	if len(cc.Choices) > 0 {
		ch := cc.Choices[0]
		text := ""
		if ch.Message.Content != nil {
			text = *ch.Message.Content
		}
		m.Content = append(m.Content, ContentBlock{Type: "text", Text: &text})
		for _, tc := range ch.Message.ToolCalls {
			in := json.RawMessage(tc.Function.Arguments)
			if !json.Valid(in) {
				in = json.RawMessage("{}")
			}
			m.Content = append(m.Content, ContentBlock{Type: "tool_use", ID: tc.ID, Name: tc.Function.Name, Input: in})
		}
		fin := ""
		if ch.FinishReason != nil {
			fin = *ch.FinishReason
		}
		r, seq := stopReason(fin, ch.StopReason)
		m.StopReason, m.StopSequence = &r, seq
	}
	return json.Marshal(m)
}

// StreamConverter turns the data events of a streamed chat completion into a Messages event
// stream: message_start (at the first token, with the prompt's usage), a content block per
// text run or tool call with its deltas and stop, then message_delta (stop reason, usage) and
// message_stop. Not safe for concurrent use.
type StreamConverter struct {
	started, open, ended bool
	index                int // the open (or next) block's index
	blocks               int // blocks started
	id, model            string
	finish               string
	matched              json.RawMessage
	usage                *openai.Usage
}

// Chunk appends the events for one chat chunk's data to dst. "[DONE]" ends the stream.
func (c *StreamConverter) Chunk(dst, data []byte) ([]byte, error) {
	if string(bytes.TrimSpace(data)) == openai.Done {
		return c.End(dst), nil
	}
	var ch openai.ChatCompletionChunk
	if err := json.Unmarshal(data, &ch); err != nil {
		return dst, err
	}
	if ch.Usage != nil {
		c.usage = ch.Usage
	}
	c.id, c.model = ch.ID, ch.Model
	if len(ch.Choices) == 0 {
		return dst, nil
	}
	choice := ch.Choices[0]
	d := choice.Delta
	hasText := d.Content != nil && *d.Content != ""
	if !hasText && len(d.ToolCalls) == 0 && choice.FinishReason == nil && ch.Usage == nil {
		return dst, nil // the role chunk: message_start waits for the first token's usage
	}
	dst = c.start(dst)
	if hasText {
		if !c.open {
			dst = c.openBlock(dst, ContentBlock{Type: "text", Text: new(string)})
		}
		dst = event(dst, EventContentBlockDelta, object("type", EventContentBlockDelta, "index", c.index,
			"delta", object("type", "text_delta", "text", *d.Content)))
	}
	for _, tc := range d.ToolCalls {
		if tc.ID != "" {
			dst = c.closeBlock(dst)
			dst = c.openBlock(dst, ContentBlock{Type: "tool_use", ID: tc.ID, Name: tc.Function.Name, Input: json.RawMessage("{}")})
		}
		if tc.Function.Arguments != "" && c.open {
			dst = event(dst, EventContentBlockDelta, object("type", EventContentBlockDelta, "index", c.index,
				"delta", object("type", "input_json_delta", "partial_json", tc.Function.Arguments)))
		}
	}
	if choice.FinishReason != nil {
		c.finish, c.matched = *choice.FinishReason, choice.StopReason
	}
	return dst, nil
}

// End appends the closing events (once): the open block's stop, message_delta, message_stop.
func (c *StreamConverter) End(dst []byte) []byte {
	if c.ended {
		return dst
	}
	c.ended = true
	dst = c.start(dst)
	dst = c.closeBlock(dst)
	reason, seq := stopReason(c.finish, c.matched)
	dst = event(dst, EventMessageDelta, object("type", EventMessageDelta,
		"delta", object("stop_reason", reason, "stop_sequence", seq), "usage", usageOf(c.usage)))
	return event(dst, EventMessageStop, object("type", EventMessageStop))
}

func (c *StreamConverter) start(dst []byte) []byte {
	if c.started {
		return dst
	}
	c.started = true
	u := usageOf(c.usage)
	u.OutputTokens = 0
	m := Response{ID: messageID(c.id), Type: "message", Role: "assistant", Model: c.model, Content: []ContentBlock{}, Usage: u}
	return event(dst, EventMessageStart, object("type", EventMessageStart, "message", m))
}

func (c *StreamConverter) openBlock(dst []byte, b ContentBlock) []byte {
	c.index, c.open = c.blocks, true
	c.blocks++
	return event(dst, EventContentBlockStart, object("type", EventContentBlockStart, "index", c.index, "content_block", b))
}

func (c *StreamConverter) closeBlock(dst []byte) []byte {
	if !c.open {
		return dst
	}
	c.open = false
	return event(dst, EventContentBlockStop, object("type", EventContentBlockStop, "index", c.index))
}

// event appends the event name with data (an object written in Anthropic's key order, type
// first).
func event(dst []byte, name string, data json.RawMessage) []byte {
	return AppendEvent(dst, name, data)
}

// ChatWriter is an http.ResponseWriter for a chat completion handler that answers a Messages
// request: it writes the handler's chat response to w converted (a whole completion into a
// message, an SSE stream event by event, an error into Anthropic's shape). Call Close after
// the handler returns.
type ChatWriter struct {
	w      http.ResponseWriter
	h      http.Header
	status int
	sse    bool
	buf    []byte // SSE: the partial line; otherwise the whole body
	out    []byte
	conv   StreamConverter
}

var _ http.Flusher = (*ChatWriter)(nil)

// NewChatWriter writes to w.
func NewChatWriter(w http.ResponseWriter) *ChatWriter {
	return &ChatWriter{w: w, h: http.Header{}}
}

// Header is the chat handler's headers (sent with the converted response).
func (c *ChatWriter) Header() http.Header { return c.h }

// WriteHeader records the status; an SSE response's headers go out at once.
func (c *ChatWriter) WriteHeader(status int) {
	if c.status != 0 {
		return
	}
	c.status = status
	if status == http.StatusOK && strings.HasPrefix(c.h.Get("Content-Type"), "text/event-stream") {
		c.sse = true
		for k, v := range c.h {
			c.w.Header()[k] = v
		}
		c.w.Header().Del("Content-Length")
		c.w.WriteHeader(status)
	}
}

// Write takes the chat handler's body.
func (c *ChatWriter) Write(p []byte) (int, error) {
	if c.status == 0 {
		c.WriteHeader(http.StatusOK)
	}
	if !c.sse {
		c.buf = append(c.buf, p...)
		return len(p), nil
	}
	c.out = c.out[:0]
	rest := p
	for {
		i := bytes.IndexByte(rest, '\n')
		if i < 0 {
			c.buf = append(c.buf, rest...)
			break
		}
		line := append(c.buf, rest[:i]...)
		rest = rest[i+1:]
		c.buf = c.buf[:0]
		if data, ok := bytes.CutPrefix(bytes.TrimSuffix(line, []byte{'\r'}), []byte("data:")); ok {
			var err error
			if c.out, err = c.conv.Chunk(c.out, bytes.TrimPrefix(data, []byte{' '})); err != nil {
				c.out = append(c.out, ErrorEvent(TypeAPI, "The engine sent an invalid stream chunk.")...)
			}
		}
	}
	if len(c.out) > 0 {
		if _, err := c.w.Write(c.out); err != nil {
			return 0, err
		}
	}
	return len(p), nil
}

// Flush flushes a stream.
func (c *ChatWriter) Flush() {
	if f, ok := c.w.(http.Flusher); ok && c.sse {
		f.Flush()
	}
}

// Close writes a whole (non-SSE) response, converted.
func (c *ChatWriter) Close() {
	if c.sse {
		return
	}
	if c.status == 0 {
		c.status = http.StatusOK
	}
	body := c.buf
	if c.status == http.StatusOK {
		b, err := MessageFromChat(body)
		if err != nil {
			WriteError(c.w, openai.Errorf(http.StatusInternalServerError, TypeAPI, "", "The engine's answer could not be converted: %v", err))
			return
		}
		body = b
	} else {
		body = ConvertErrorBody(c.status, body)
	}
	h := c.w.Header()
	for k, v := range c.h {
		h[k] = v
	}
	h.Set("Content-Type", "application/json")
	h.Set("Content-Length", strconv.Itoa(len(body)))
	c.w.WriteHeader(c.status)
	_, _ = c.w.Write(body)
}
