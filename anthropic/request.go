// Package anthropic holds Anthropic's Messages API (/v1/messages) as kvgate serves it: request
// parsing and validation, the conversion to an OpenAI chat request that vLLM's own Anthropic
// server performs, error bodies in Anthropic's shape and the SSE event stream.
// In a request's path it owns R2 for /v1/messages (parse and validate; error bodies).
package anthropic

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"

	"github.com/kvgate/kvgate/openai"
)

// Path is the Messages API's path.
const Path = "/v1/messages"

// Request is a /v1/messages body. Raw fields are slices of the body the caller parsed.
type Request struct {
	Model         string
	MaxTokens     int
	System        System
	Messages      []Message
	Tools         []Tool
	ToolChoice    *ToolChoice
	Stream        bool
	Temperature   *float64
	TopP          *float64
	TopK          *int
	StopSequences []string
	Metadata      json.RawMessage // an object, nil when absent
}

// System is the system prompt: a string or text blocks. Set reports whether it was given.
type System struct {
	Text   string
	Blocks []Block
	IsText bool
}

// Message is one turn. Content is a string (IsText) or blocks.
type Message struct {
	Role   string
	Text   string
	Blocks []Block
	IsText bool
}

// Block is one content block. Which fields are set depends on Type.
type Block struct {
	Type      string
	Text      string          // text, thinking
	Source    json.RawMessage // image: {"type":"base64","media_type":...,"data":...} or a URL source
	ID        string          // tool_use
	ToolUseID string          // tool_result
	Name      string          // tool_use
	Input     json.RawMessage // tool_use: an object
	Content   json.RawMessage // tool_result: a string or an array of blocks, nil when absent
	IsError   bool            // tool_result
}

// Tool is a client tool with its JSON schema.
type Tool struct {
	Name        string
	Description *string
	InputSchema json.RawMessage // an object
}

// ToolChoice is tool_choice: auto, any, tool (with Name) or none.
type ToolChoice struct {
	Type string
	Name string
}

// blockTypes are the content block types a request may carry (vLLM's list).
var blockTypes = map[string]bool{
	"text": true, "image": true, "tool_use": true, "tool_result": true, "tool_reference": true,
	"thinking": true, "redacted_thinking": true,
}

// Parse decodes and validates a Messages body. Every error is an *openai.Error (400 naming
// the field; the front door writes it in Anthropic's shape with ErrorBody). Fields it does
// not know are ignored, as vLLM ignores them.
func Parse(body []byte) (*Request, error) {
	body = bytes.TrimSpace(body)
	if len(body) == 0 {
		return nil, openai.BadRequest("", "The request body is empty; expected a JSON object.")
	}
	if kind(body) != "an object" {
		return nil, openai.BadRequest("", "The request body must be a JSON object, got %s.", kind(body))
	}
	if !valid(body) {
		var top map[string]json.RawMessage
		err := json.Unmarshal(body, &top) // for its message
		if err == nil {
			err = errors.New("unexpected input")
		}
		return nil, openai.BadRequest("", "The request body is not valid JSON: %v", err)
	}
	var buf [16]member
	top, _ := members(body, buf[:0])
	r := &Request{}
	raw := get(top, "model")
	if kind(raw) == "nothing" || kind(raw) == "null" {
		return nil, openai.BadRequest("model", "model: Field required")
	}
	if err := str(raw, "model", &r.Model); err != nil {
		return nil, err
	}
	if r.Model == "" {
		return nil, openai.BadRequest("model", "model: must not be empty")
	}
	raw = get(top, "max_tokens")
	if kind(raw) == "nothing" || kind(raw) == "null" {
		return nil, openai.BadRequest("max_tokens", "max_tokens: Field required")
	}
	if err := integer(raw, "max_tokens", &r.MaxTokens); err != nil {
		return nil, err
	}
	if r.MaxTokens < 1 {
		return nil, openai.BadRequest("max_tokens", "max_tokens: must be at least 1, got %d", r.MaxTokens)
	}
	raw = get(top, "messages")
	if kind(raw) == "nothing" || kind(raw) == "null" {
		return nil, openai.BadRequest("messages", "messages: Field required")
	}
	if err := r.parseMessages(raw); err != nil {
		return nil, err
	}
	if raw := get(top, "system"); raw != nil && kind(raw) != "null" {
		if err := r.parseSystem(raw); err != nil {
			return nil, err
		}
	}
	if raw := get(top, "tools"); raw != nil && kind(raw) != "null" {
		if err := r.parseTools(raw); err != nil {
			return nil, err
		}
	}
	if raw := get(top, "tool_choice"); raw != nil && kind(raw) != "null" {
		if err := r.parseToolChoice(raw); err != nil {
			return nil, err
		}
	}
	if raw := get(top, "stream"); raw != nil && kind(raw) != "null" {
		if kind(raw) != "a boolean" {
			return nil, openai.BadRequest("stream", "stream: expected a boolean, got %s", kind(raw))
		}
		r.Stream = bytes.Equal(raw, []byte("true"))
	}
	var err error
	if r.Temperature, err = number(get(top, "temperature"), "temperature", 0, 2, "[0, 2]"); err != nil {
		return nil, err
	}
	if r.TopP, err = number(get(top, "top_p"), "top_p", math.SmallestNonzeroFloat64, 1, "(0, 1]"); err != nil {
		return nil, err
	}
	if raw := get(top, "top_k"); raw != nil && kind(raw) != "null" {
		var k int
		if err := integer(raw, "top_k", &k); err != nil {
			return nil, err
		}
		if k < -1 {
			return nil, openai.BadRequest("top_k", "top_k: must be -1 (off) or at least 0, got %d", k)
		}
		r.TopK = &k
	}
	if raw := get(top, "stop_sequences"); raw != nil && kind(raw) != "null" {
		list, ok := elems(raw)
		if ok {
			r.StopSequences = make([]string, len(list))
			for i, e := range list {
				switch kind(e) {
				case "a string":
					r.StopSequences[i] = decodeString(e)
				case "null":
				default:
					ok = false
				}
			}
		}
		if !ok {
			r.StopSequences = nil
			return nil, openai.BadRequest("stop_sequences", "stop_sequences: expected an array of strings, got %s", kind(raw))
		}
	}
	if raw := get(top, "metadata"); raw != nil && kind(raw) != "null" {
		if kind(raw) != "an object" {
			return nil, openai.BadRequest("metadata", "metadata: expected an object, got %s", kind(raw))
		}
		var mdBuf [4]member
		md, _ := members(raw, mdBuf[:0])
		if id := get(md, "user_id"); id != nil && kind(id) != "a string" && kind(id) != "null" {
			return nil, openai.BadRequest("metadata.user_id", "metadata.user_id: expected a string, got %s", kind(id))
		}
		r.Metadata = raw
	}
	if r.ToolChoice != nil && r.ToolChoice.Type != "none" && r.Tools == nil {
		return nil, openai.BadRequest("tool_choice", "tool_choice: tools must be set when tool_choice is '%s'", r.ToolChoice.Type)
	}
	return r, nil
}

func (r *Request) parseMessages(raw json.RawMessage) error {
	list, ok := elems(raw)
	if !ok {
		return openai.BadRequest("messages", "messages: expected an array of objects, got %s", kind(raw))
	}
	if len(list) == 0 {
		return openai.BadRequest("messages", "messages: must contain at least one item")
	}
	r.Messages = make([]Message, len(list))
	var buf [8]member
	for i, m := range list {
		p := "messages." + strconv.Itoa(i)
		f, ok := members(m, buf[:0])
		if !ok {
			return openai.BadRequest(p, "%s: expected an object, got %s", p, kind(m))
		}
		msg := &r.Messages[i]
		role := get(f, "role")
		if role == nil {
			return openai.BadRequest(p+".role", "%s.role: Field required", p)
		}
		if err := str(role, p+".role", &msg.Role); err != nil {
			return err
		}
		switch msg.Role {
		case "user", "assistant", "system":
		case "ctx", "msg": // roles some Claude Code versions send; vLLM reads them as user
			msg.Role = "user"
		default:
			return openai.BadRequest(p+".role", "%s.role: expected 'user' or 'assistant', got '%s'", p, msg.Role)
		}
		content := get(f, "content")
		switch kind(content) {
		case "a string":
			msg.IsText = true
			msg.Text = decodeString(content)
		case "an array":
			blocks, err := parseBlocks(content, p+".content")
			if err != nil {
				return err
			}
			if len(blocks) == 0 {
				return openai.BadRequest(p+".content", "%s.content: message content must not be empty", p)
			}
			msg.Blocks = blocks
		case "nothing":
			return openai.BadRequest(p+".content", "%s.content: Field required", p)
		default:
			return openai.BadRequest(p+".content", "%s.content: expected a string or an array of content blocks, got %s", p, kind(content))
		}
	}
	return nil
}

func (r *Request) parseSystem(raw json.RawMessage) error {
	switch kind(raw) {
	case "a string":
		r.System.IsText = true
		r.System.Text = decodeString(raw)
		return nil
	case "an array":
		blocks, err := parseBlocks(raw, "system")
		if err != nil {
			return err
		}
		for i, b := range blocks {
			if b.Type != "text" {
				return openai.BadRequest(fmt.Sprintf("system.%d.type", i), "system.%d.type: system blocks must be 'text', got '%s'", i, b.Type)
			}
		}
		r.System.Blocks = blocks
		return nil
	}
	return openai.BadRequest("system", "system: expected a string or an array of text blocks, got %s", kind(raw))
}

// parseBlocks decodes an array of content blocks; p names it in errors.
func parseBlocks(raw json.RawMessage, p string) ([]Block, error) {
	list, ok := elems(raw)
	if !ok {
		return nil, openai.BadRequest(p, "%s: expected an array of content blocks, got %s", p, kind(raw))
	}
	out := make([]Block, len(list))
	var buf [8]member
	for i, b := range list {
		bp := p + "." + strconv.Itoa(i)
		fs, ok := members(b, buf[:0])
		if !ok {
			return nil, openai.BadRequest(bp, "%s: expected a content block object, got %s", bp, kind(b))
		}
		f := func(key string) json.RawMessage { return get(fs, key) }
		blk := &out[i]
		if f("type") == nil {
			return nil, openai.BadRequest(bp+".type", "%s.type: Field required", bp)
		}
		if err := str(f("type"), bp+".type", &blk.Type); err != nil {
			return nil, err
		}
		if !blockTypes[blk.Type] {
			return nil, openai.BadRequest(bp+".type", "%s.type: unknown content block type '%s'", bp, blk.Type)
		}
		if err := optStr(f("text"), bp+".text", &blk.Text); err != nil {
			return nil, err
		}
		switch blk.Type {
		case "text":
			if f("text") == nil || kind(f("text")) == "null" {
				return nil, openai.BadRequest(bp+".text", "%s.text: Field required", bp)
			}
		case "thinking":
			if err := optStr(f("thinking"), bp+".thinking", &blk.Text); err != nil {
				return nil, err
			}
		case "image":
			if kind(f("source")) != "an object" {
				return nil, openai.BadRequest(bp+".source", "%s.source: expected an object, got %s", bp, kind(f("source")))
			}
			blk.Source = f("source")
		case "tool_use":
			if err := optStr(f("id"), bp+".id", &blk.ID); err != nil {
				return nil, err
			}
			if err := optStr(f("name"), bp+".name", &blk.Name); err != nil {
				return nil, err
			}
			if blk.Name == "" {
				return nil, openai.BadRequest(bp+".name", "%s.name: Field required", bp)
			}
			switch kind(f("input")) {
			case "an object":
				blk.Input = f("input")
			case "nothing", "null":
			default:
				return nil, openai.BadRequest(bp+".input", "%s.input: expected an object, got %s", bp, kind(f("input")))
			}
		case "tool_result":
			if err := optStr(f("tool_use_id"), bp+".tool_use_id", &blk.ToolUseID); err != nil {
				return nil, err
			}
			if err := optStr(f("id"), bp+".id", &blk.ID); err != nil {
				return nil, err
			}
			switch kind(f("content")) {
			case "a string":
				blk.Content = f("content")
			case "an array":
				parts, _ := elems(f("content"))
				for j, part := range parts {
					if kind(part) != "an object" {
						q := fmt.Sprintf("%s.content.%d", bp, j)
						return nil, openai.BadRequest(q, "%s: expected an object, got %s", q, kind(part))
					}
				}
				blk.Content = f("content")
			case "nothing", "null":
			default:
				return nil, openai.BadRequest(bp+".content", "%s.content: expected a string or an array of blocks, got %s", bp, kind(f("content")))
			}
			switch kind(f("is_error")) {
			case "a boolean":
				blk.IsError = bytes.Equal(f("is_error"), []byte("true"))
			case "nothing", "null":
			default:
				return nil, openai.BadRequest(bp+".is_error", "%s.is_error: expected a boolean, got %s", bp, kind(f("is_error")))
			}
		}
	}
	return out, nil
}

func (r *Request) parseTools(raw json.RawMessage) error {
	list, ok := elems(raw)
	if !ok {
		return openai.BadRequest("tools", "tools: expected an array of tools, got %s", kind(raw))
	}
	r.Tools = make([]Tool, len(list))
	var buf [8]member
	for i, t := range list {
		p := "tools." + strconv.Itoa(i)
		fs, ok := members(t, buf[:0])
		if !ok {
			return openai.BadRequest(p, "%s: expected an object, got %s", p, kind(t))
		}
		f := func(key string) json.RawMessage { return get(fs, key) }
		tool := &r.Tools[i]
		if f("name") == nil {
			return openai.BadRequest(p+".name", "%s.name: Field required", p)
		}
		if err := str(f("name"), p+".name", &tool.Name); err != nil {
			return err
		}
		if tool.Name == "" {
			return openai.BadRequest(p+".name", "%s.name: must not be empty", p)
		}
		if f("description") != nil && kind(f("description")) != "null" {
			var d string
			if err := str(f("description"), p+".description", &d); err != nil {
				return err
			}
			tool.Description = &d
		}
		if kind(f("input_schema")) != "an object" {
			var typ string
			if t := f("type"); kind(t) == "a string" {
				typ = decodeString(t)
			}
			if f("input_schema") == nil && typ != "" && typ != "custom" {
				return openai.BadRequest(p+".type", "%s: server tool '%s' is not supported; only client tools with an input_schema are", p, typ)
			}
			return openai.BadRequest(p+".input_schema", "%s.input_schema: expected an object, got %s", p, kind(f("input_schema")))
		}
		tool.InputSchema = f("input_schema")
	}
	return nil
}

func (r *Request) parseToolChoice(raw json.RawMessage) error {
	var buf [8]member
	fs, ok := members(raw, buf[:0])
	if !ok {
		return openai.BadRequest("tool_choice", "tool_choice: expected an object, got %s", kind(raw))
	}
	tc := &ToolChoice{}
	if err := str(get(fs, "type"), "tool_choice.type", &tc.Type); err != nil {
		return err
	}
	if err := optStr(get(fs, "name"), "tool_choice.name", &tc.Name); err != nil {
		return err
	}
	switch tc.Type {
	case "auto", "any", "none":
	case "tool":
		if tc.Name == "" {
			return openai.BadRequest("tool_choice.name", "tool_choice.name is required when tool_choice.type is 'tool'")
		}
	default:
		return openai.BadRequest("tool_choice.type", "tool_choice.type: expected 'auto', 'any', 'tool' or 'none', got '%s'", tc.Type)
	}
	r.ToolChoice = tc
	return nil
}

// kind names a JSON value's type for error messages.
func kind(raw json.RawMessage) string {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 {
		return "nothing"
	}
	switch raw[0] {
	case '{':
		return "an object"
	case '[':
		return "an array"
	case '"':
		return "a string"
	case 't', 'f':
		return "a boolean"
	case 'n':
		return "null"
	}
	return "a number"
}

func str(raw json.RawMessage, p string, dst *string) error {
	if kind(raw) != "a string" {
		return openai.BadRequest(p, "%s: expected a string, got %s", p, kind(raw))
	}
	*dst = decodeString(raw)
	return nil
}

// optStr is str for a field that may be absent or null.
func optStr(raw json.RawMessage, p string, dst *string) error {
	if k := kind(raw); k == "nothing" || k == "null" {
		return nil
	}
	return str(raw, p, dst)
}

func integer(raw json.RawMessage, p string, dst *int) error {
	f, err := strconv.ParseFloat(string(bytes.TrimSpace(raw)), 64)
	if kind(raw) != "a number" || err != nil || f != math.Trunc(f) || math.Abs(f) > 1<<53 {
		return openai.BadRequest(p, "%s: expected an integer, got %s", p, kind(raw))
	}
	*dst = int(f)
	return nil
}

// number reads the optional number field p, raw (nil when absent), within [lo, hi]
// (described as within).
func number(raw json.RawMessage, p string, lo, hi float64, within string) (*float64, error) {
	if raw == nil || kind(raw) == "null" {
		return nil, nil
	}
	f, err := strconv.ParseFloat(string(bytes.TrimSpace(raw)), 64)
	if kind(raw) != "a number" || err != nil {
		return nil, openai.BadRequest(p, "%s: expected a number, got %s", p, kind(raw))
	}
	if f < lo || f > hi {
		return nil, openai.BadRequest(p, "%s: must be within %s, got %g", p, within, f)
	}
	return &f, nil
}
