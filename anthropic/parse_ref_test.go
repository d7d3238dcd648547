package anthropic

// The parser and conversion before the one-pass decoder (request.go and chat.go at b96c38e),
// kept as the reference the differential test compares Parse and ToChat against:
// encoding/json level by level, keys matched exactly through maps, strings written with
// json.Encoder.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"strconv"

	"github.com/kvgate/kvgate/openai"
)

// Parse decodes and validates a Messages body. Every error is an *openai.Error (400 naming
// the field; the front door writes it in Anthropic's shape with ErrorBody). Fields it does
// not know are ignored, as vLLM ignores them.
func refParse(body []byte) (*Request, error) {
	body = bytes.TrimSpace(body)
	if len(body) == 0 {
		return nil, openai.BadRequest("", "The request body is empty; expected a JSON object.")
	}
	if kind(body) != "an object" {
		return nil, openai.BadRequest("", "The request body must be a JSON object, got %s.", kind(body))
	}
	var top map[string]json.RawMessage
	if err := json.Unmarshal(body, &top); err != nil {
		return nil, openai.BadRequest("", "The request body is not valid JSON: %v", err)
	}
	r := &Request{}
	raw, ok := top["model"]
	if !ok || kind(raw) == "null" {
		return nil, openai.BadRequest("model", "model: Field required")
	}
	if err := refStr(raw, "model", &r.Model); err != nil {
		return nil, err
	}
	if r.Model == "" {
		return nil, openai.BadRequest("model", "model: must not be empty")
	}
	raw, ok = top["max_tokens"]
	if !ok || kind(raw) == "null" {
		return nil, openai.BadRequest("max_tokens", "max_tokens: Field required")
	}
	if err := refInteger(raw, "max_tokens", &r.MaxTokens); err != nil {
		return nil, err
	}
	if r.MaxTokens < 1 {
		return nil, openai.BadRequest("max_tokens", "max_tokens: must be at least 1, got %d", r.MaxTokens)
	}
	raw, ok = top["messages"]
	if !ok || kind(raw) == "null" {
		return nil, openai.BadRequest("messages", "messages: Field required")
	}
	if err := r.refParseMessages(raw); err != nil {
		return nil, err
	}
	if raw, ok := top["system"]; ok && kind(raw) != "null" {
		if err := r.refParseSystem(raw); err != nil {
			return nil, err
		}
	}
	if raw, ok := top["tools"]; ok && kind(raw) != "null" {
		if err := r.refParseTools(raw); err != nil {
			return nil, err
		}
	}
	if raw, ok := top["tool_choice"]; ok && kind(raw) != "null" {
		if err := r.refParseToolChoice(raw); err != nil {
			return nil, err
		}
	}
	if raw, ok := top["stream"]; ok && kind(raw) != "null" {
		if kind(raw) != "a boolean" {
			return nil, openai.BadRequest("stream", "stream: expected a boolean, got %s", kind(raw))
		}
		r.Stream = bytes.Equal(raw, []byte("true"))
	}
	var err error
	if r.Temperature, err = refNumber(top, "temperature", 0, 2, "[0, 2]"); err != nil {
		return nil, err
	}
	if r.TopP, err = refNumber(top, "top_p", math.SmallestNonzeroFloat64, 1, "(0, 1]"); err != nil {
		return nil, err
	}
	if raw, ok := top["top_k"]; ok && kind(raw) != "null" {
		var k int
		if err := refInteger(raw, "top_k", &k); err != nil {
			return nil, err
		}
		if k < -1 {
			return nil, openai.BadRequest("top_k", "top_k: must be -1 (off) or at least 0, got %d", k)
		}
		r.TopK = &k
	}
	if raw, ok := top["stop_sequences"]; ok && kind(raw) != "null" {
		if kind(raw) != "an array" || json.Unmarshal(raw, &r.StopSequences) != nil {
			return nil, openai.BadRequest("stop_sequences", "stop_sequences: expected an array of strings, got %s", kind(raw))
		}
	}
	if raw, ok := top["metadata"]; ok && kind(raw) != "null" {
		if kind(raw) != "an object" {
			return nil, openai.BadRequest("metadata", "metadata: expected an object, got %s", kind(raw))
		}
		md, _ := refFields(raw)
		if id, ok := md["user_id"]; ok && kind(id) != "a string" && kind(id) != "null" {
			return nil, openai.BadRequest("metadata.user_id", "metadata.user_id: expected a string, got %s", kind(id))
		}
		r.Metadata = raw
	}
	if r.ToolChoice != nil && r.ToolChoice.Type != "none" && r.Tools == nil {
		return nil, openai.BadRequest("tool_choice", "tool_choice: tools must be set when tool_choice is '%s'", r.ToolChoice.Type)
	}
	return r, nil
}

func (r *Request) refParseMessages(raw json.RawMessage) error {
	var list []json.RawMessage
	if kind(raw) != "an array" || json.Unmarshal(raw, &list) != nil {
		return openai.BadRequest("messages", "messages: expected an array of objects, got %s", kind(raw))
	}
	if len(list) == 0 {
		return openai.BadRequest("messages", "messages: must contain at least one item")
	}
	r.Messages = make([]Message, len(list))
	for i, m := range list {
		p := fmt.Sprintf("messages.%d", i)
		f, ok := refFields(m)
		if !ok {
			return openai.BadRequest(p, "%s: expected an object, got %s", p, kind(m))
		}
		msg := &r.Messages[i]
		if f["role"] == nil {
			return openai.BadRequest(p+".role", "%s.role: Field required", p)
		}
		if err := refStr(f["role"], p+".role", &msg.Role); err != nil {
			return err
		}
		switch msg.Role {
		case "user", "assistant", "system":
		case "ctx", "msg": // roles some Claude Code versions send; vLLM reads them as user
			msg.Role = "user"
		default:
			return openai.BadRequest(p+".role", "%s.role: expected 'user' or 'assistant', got '%s'", p, msg.Role)
		}
		content := f["content"]
		switch kind(content) {
		case "a string":
			msg.IsText = true
			_ = json.Unmarshal(content, &msg.Text)
		case "an array":
			blocks, err := refParseBlocks(content, p+".content")
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

func (r *Request) refParseSystem(raw json.RawMessage) error {
	switch kind(raw) {
	case "a string":
		r.System.IsText = true
		_ = json.Unmarshal(raw, &r.System.Text)
		return nil
	case "an array":
		blocks, err := refParseBlocks(raw, "system")
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
func refParseBlocks(raw json.RawMessage, p string) ([]Block, error) {
	var list []json.RawMessage
	if json.Unmarshal(raw, &list) != nil {
		return nil, openai.BadRequest(p, "%s: expected an array of content blocks, got %s", p, kind(raw))
	}
	out := make([]Block, len(list))
	for i, b := range list {
		bp := fmt.Sprintf("%s.%d", p, i)
		f, ok := refFields(b)
		if !ok {
			return nil, openai.BadRequest(bp, "%s: expected a content block object, got %s", bp, kind(b))
		}
		blk := &out[i]
		if f["type"] == nil {
			return nil, openai.BadRequest(bp+".type", "%s.type: Field required", bp)
		}
		if err := refStr(f["type"], bp+".type", &blk.Type); err != nil {
			return nil, err
		}
		if !blockTypes[blk.Type] {
			return nil, openai.BadRequest(bp+".type", "%s.type: unknown content block type '%s'", bp, blk.Type)
		}
		if err := refOptStr(f["text"], bp+".text", &blk.Text); err != nil {
			return nil, err
		}
		switch blk.Type {
		case "text":
			if f["text"] == nil || kind(f["text"]) == "null" {
				return nil, openai.BadRequest(bp+".text", "%s.text: Field required", bp)
			}
		case "thinking":
			if err := refOptStr(f["thinking"], bp+".thinking", &blk.Text); err != nil {
				return nil, err
			}
		case "image":
			if kind(f["source"]) != "an object" {
				return nil, openai.BadRequest(bp+".source", "%s.source: expected an object, got %s", bp, kind(f["source"]))
			}
			blk.Source = f["source"]
		case "tool_use":
			if err := refOptStr(f["id"], bp+".id", &blk.ID); err != nil {
				return nil, err
			}
			if err := refOptStr(f["name"], bp+".name", &blk.Name); err != nil {
				return nil, err
			}
			if blk.Name == "" {
				return nil, openai.BadRequest(bp+".name", "%s.name: Field required", bp)
			}
			switch kind(f["input"]) {
			case "an object":
				blk.Input = f["input"]
			case "nothing", "null":
			default:
				return nil, openai.BadRequest(bp+".input", "%s.input: expected an object, got %s", bp, kind(f["input"]))
			}
		case "tool_result":
			if err := refOptStr(f["tool_use_id"], bp+".tool_use_id", &blk.ToolUseID); err != nil {
				return nil, err
			}
			if err := refOptStr(f["id"], bp+".id", &blk.ID); err != nil {
				return nil, err
			}
			switch kind(f["content"]) {
			case "a string":
				blk.Content = f["content"]
			case "an array":
				var parts []json.RawMessage
				_ = json.Unmarshal(f["content"], &parts)
				for j, part := range parts {
					if kind(part) != "an object" {
						q := fmt.Sprintf("%s.content.%d", bp, j)
						return nil, openai.BadRequest(q, "%s: expected an object, got %s", q, kind(part))
					}
				}
				blk.Content = f["content"]
			case "nothing", "null":
			default:
				return nil, openai.BadRequest(bp+".content", "%s.content: expected a string or an array of blocks, got %s", bp, kind(f["content"]))
			}
			switch kind(f["is_error"]) {
			case "a boolean":
				blk.IsError = bytes.Equal(f["is_error"], []byte("true"))
			case "nothing", "null":
			default:
				return nil, openai.BadRequest(bp+".is_error", "%s.is_error: expected a boolean, got %s", bp, kind(f["is_error"]))
			}
		}
	}
	return out, nil
}

func (r *Request) refParseTools(raw json.RawMessage) error {
	var list []json.RawMessage
	if kind(raw) != "an array" || json.Unmarshal(raw, &list) != nil {
		return openai.BadRequest("tools", "tools: expected an array of tools, got %s", kind(raw))
	}
	r.Tools = make([]Tool, len(list))
	for i, t := range list {
		p := fmt.Sprintf("tools.%d", i)
		f, ok := refFields(t)
		if !ok {
			return openai.BadRequest(p, "%s: expected an object, got %s", p, kind(t))
		}
		tool := &r.Tools[i]
		if f["name"] == nil {
			return openai.BadRequest(p+".name", "%s.name: Field required", p)
		}
		if err := refStr(f["name"], p+".name", &tool.Name); err != nil {
			return err
		}
		if tool.Name == "" {
			return openai.BadRequest(p+".name", "%s.name: must not be empty", p)
		}
		if f["description"] != nil && kind(f["description"]) != "null" {
			var d string
			if err := refStr(f["description"], p+".description", &d); err != nil {
				return err
			}
			tool.Description = &d
		}
		if kind(f["input_schema"]) != "an object" {
			var typ string
			_ = json.Unmarshal(f["type"], &typ)
			if f["input_schema"] == nil && typ != "" && typ != "custom" {
				return openai.BadRequest(p+".type", "%s: server tool '%s' is not supported; only client tools with an input_schema are", p, typ)
			}
			return openai.BadRequest(p+".input_schema", "%s.input_schema: expected an object, got %s", p, kind(f["input_schema"]))
		}
		tool.InputSchema = f["input_schema"]
	}
	return nil
}

func (r *Request) refParseToolChoice(raw json.RawMessage) error {
	f, ok := refFields(raw)
	if !ok {
		return openai.BadRequest("tool_choice", "tool_choice: expected an object, got %s", kind(raw))
	}
	tc := &ToolChoice{}
	if err := refStr(f["type"], "tool_choice.type", &tc.Type); err != nil {
		return err
	}
	if err := refOptStr(f["name"], "tool_choice.name", &tc.Name); err != nil {
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

// fields decodes a JSON object into its members, keys matched exactly (as vLLM's models
// match them; encoding/json's struct decoding would ignore case). ok is false for anything
// but an object.
func refFields(raw json.RawMessage) (map[string]json.RawMessage, bool) {
	var f map[string]json.RawMessage
	if kind(raw) != "an object" || json.Unmarshal(raw, &f) != nil {
		return nil, false
	}
	return f, true
}

func refStr(raw json.RawMessage, p string, dst *string) error {
	if kind(raw) != "a string" || json.Unmarshal(raw, dst) != nil {
		return openai.BadRequest(p, "%s: expected a string, got %s", p, kind(raw))
	}
	return nil
}

// optStr is str for a field that may be absent or null.
func refOptStr(raw json.RawMessage, p string, dst *string) error {
	if k := kind(raw); k == "nothing" || k == "null" {
		return nil
	}
	return refStr(raw, p, dst)
}

func refInteger(raw json.RawMessage, p string, dst *int) error {
	var f float64
	if kind(raw) != "a number" || json.Unmarshal(raw, &f) != nil || f != math.Trunc(f) || math.Abs(f) > 1<<53 {
		return openai.BadRequest(p, "%s: expected an integer, got %s", p, kind(raw))
	}
	*dst = int(f)
	return nil
}

// number reads an optional number field within [lo, hi] (described as within).
func refNumber(top map[string]json.RawMessage, p string, lo, hi float64, within string) (*float64, error) {
	raw, ok := top[p]
	if !ok || kind(raw) == "null" {
		return nil, nil
	}
	var f float64
	if kind(raw) != "a number" || json.Unmarshal(raw, &f) != nil {
		return nil, openai.BadRequest(p, "%s: expected a number, got %s", p, kind(raw))
	}
	if f < lo || f > hi {
		return nil, openai.BadRequest(p, "%s: must be within %s, got %g", p, within, f)
	}
	return &f, nil
}

// ToChat converts r the way vLLM's AnthropicServingMessages does: the system prompt (its
// text blocks joined) becomes a system message; text blocks become content (a string when
// there is one, parts otherwise); an image block an image_url part with the source's data;
// tool_use blocks the assistant's tool_calls (arguments as Python's json.dumps writes the
// input); each tool_result in a user turn a tool message placed before that turn (content as
// Python's str() writes it); a turn left with neither content nor tool calls an empty
// string. Tools become function tools with input_schema as parameters ("type":"object"
// added when missing); tool_choice auto/any/tool/none become auto/required/named/none, and
// auto is the default with tools.
func (r *Request) refToChat() (*Chat, error) {
	var msgs bytes.Buffer
	msgs.WriteByte('[')
	n := 0
	add := func(parts ...any) {
		if n > 0 {
			msgs.WriteByte(',')
		}
		n++
		refWriteObject(&msgs, parts...)
	}
	if sys := r.System.text(); sys != nil {
		add("role", "system", "content", *sys)
	}
	for i, m := range r.Messages {
		if m.IsText {
			add("role", m.Role, "content", m.Text)
			continue
		}
		var parts []json.RawMessage
		var calls []json.RawMessage
		for j, b := range m.Blocks {
			switch b.Type {
			case "text":
				if b.Text != "" {
					parts = append(parts, refObject("type", "text", "text", b.Text))
				}
			case "image":
				var src struct {
					Data string `json:"data"`
				}
				_ = json.Unmarshal(b.Source, &src)
				parts = append(parts, refObject("type", "image_url", "image_url", refObject("url", src.Data)))
			case "tool_use":
				args := "{}"
				if len(b.Input) > 0 && !bytes.Equal(bytes.TrimSpace(b.Input), []byte("{}")) {
					var err error
					if args, err = pyDumps(b.Input); err != nil {
						return nil, fmt.Errorf("messages.%d.content.%d.input: %w", i, j, err)
					}
				}
				id := b.ID
				if id == "" {
					id = "call_0"
				}
				calls = append(calls, refObject("id", id, "type", "function", "function", refObject("name", b.Name, "arguments", args)))
			case "tool_result":
				text, err := b.resultText()
				if err != nil {
					return nil, fmt.Errorf("messages.%d.content.%d.content: %w", i, j, err)
				}
				if m.Role == "user" {
					id := b.ToolUseID
					if id == "" {
						id = b.ID
					}
					add("role", "tool", "tool_call_id", id, "content", text)
				} else {
					parts = append(parts, refObject("type", "text", "text", "Tool result: "+text))
				}
			}
		}
		fields := []any{"role", m.Role}
		if len(calls) > 0 {
			fields = append(fields, "tool_calls", calls)
		}
		switch {
		case len(parts) == 1 && bytes.HasPrefix(parts[0], []byte(`{"type":"text"`)):
			var p struct {
				Text string `json:"text"`
			}
			_ = json.Unmarshal(parts[0], &p)
			fields = append(fields, "content", p.Text)
		case len(parts) > 0:
			fields = append(fields, "content", parts)
		case len(calls) == 0:
			fields = append(fields, "content", "")
		}
		add(fields...)
	}
	msgs.WriteByte(']')

	c := &Chat{Messages: msgs.Bytes()}
	if r.Tools != nil {
		var tools bytes.Buffer
		tools.WriteByte('[')
		for i, t := range r.Tools {
			if i > 0 {
				tools.WriteByte(',')
			}
			fn := []any{"name", t.Name}
			if t.Description != nil {
				fn = append(fn, "description", *t.Description)
			}
			fn = append(fn, "parameters", schemaWithType(t.InputSchema))
			refWriteObject(&tools, "type", "function", "function", refObject(fn...))
		}
		tools.WriteByte(']')
		c.Tools = tools.Bytes()
	}

	body := []any{"model", r.Model, "messages", c.Messages, "max_tokens", r.MaxTokens, "max_completion_tokens", r.MaxTokens}
	if r.StopSequences != nil {
		body = append(body, "stop", r.StopSequences)
	}
	if r.Temperature != nil {
		body = append(body, "temperature", *r.Temperature)
	}
	if r.TopP != nil {
		body = append(body, "top_p", *r.TopP)
	}
	if r.TopK != nil {
		body = append(body, "top_k", *r.TopK)
	}
	if r.Stream {
		body = append(body, "stream", true, "stream_options", refObject("include_usage", true, "continuous_usage_stats", true))
	}
	if choice := r.chatToolChoice(); choice != nil {
		body = append(body, "tool_choice", choice)
	}
	if c.Tools != nil {
		body = append(body, "tools", c.Tools)
	}
	c.Body = refObject(body...)
	return c, nil
}

// object writes a JSON object from key, value pairs in order; a json.RawMessage value is
// written as is, a []json.RawMessage as an array of them.
func refObject(kv ...any) json.RawMessage {
	var b bytes.Buffer
	refWriteObject(&b, kv...)
	return b.Bytes()
}

func refWriteObject(b *bytes.Buffer, kv ...any) {
	b.WriteByte('{')
	for i := 0; i+1 < len(kv); i += 2 {
		if i > 0 {
			b.WriteByte(',')
		}
		refWriteJSON(b, kv[i])
		b.WriteByte(':')
		refWriteJSON(b, kv[i+1])
	}
	b.WriteByte('}')
}

func refWriteJSON(b *bytes.Buffer, v any) {
	switch v := v.(type) {
	case json.RawMessage:
		b.Write(v)
	case []json.RawMessage:
		b.WriteByte('[')
		for i, x := range v {
			if i > 0 {
				b.WriteByte(',')
			}
			b.Write(x)
		}
		b.WriteByte(']')
	case int:
		b.WriteString(strconv.Itoa(v))
	default:
		enc := json.NewEncoder(b)
		enc.SetEscapeHTML(false)
		_ = enc.Encode(v) // strings, floats, bools, []string: cannot fail
		b.Truncate(b.Len() - 1)
	}
}
