package anthropic

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strconv"
	"unicode/utf8"
)

// Chat is a Messages request converted to an OpenAI chat completion request, as vLLM's
// Anthropic server converts it before rendering the chat template.
type Chat struct {
	Messages json.RawMessage // the chat "messages" array (a part of Body: read-only)
	Tools    json.RawMessage // the chat "tools" array, nil without tools
	Body     []byte          // a whole /v1/chat/completions body
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
func (r *Request) ToChat() (*Chat, error) {
	// The messages are written in place in the body, whose second member they are; Messages
	// is that part of Body.
	var msgs bytes.Buffer
	msgs.Grow(r.textLen() + 64*len(r.Messages) + len(r.Model) + 256)
	msgs.WriteString(`{"model":`)
	writeJSON(&msgs, r.Model)
	msgs.WriteString(`,"messages":`)
	start := msgs.Len()
	msgs.WriteByte('[')
	n := 0
	add := func(parts ...any) {
		if n > 0 {
			msgs.WriteByte(',')
		}
		n++
		writeObject(&msgs, parts...)
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
		var firstText string // the text of parts[0] when it is a text part
		for j, b := range m.Blocks {
			switch b.Type {
			case "text":
				if b.Text != "" {
					if len(parts) == 0 {
						firstText = b.Text
					}
					parts = append(parts, object("type", "text", "text", b.Text))
				}
			case "image":
				var src struct {
					Data string `json:"data"`
				}
				_ = json.Unmarshal(b.Source, &src)
				parts = append(parts, object("type", "image_url", "image_url", object("url", src.Data)))
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
				calls = append(calls, object("id", id, "type", "function", "function", object("name", b.Name, "arguments", args)))
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
					if len(parts) == 0 {
						firstText = "Tool result: " + text
					}
					parts = append(parts, object("type", "text", "text", "Tool result: "+text))
				}
			}
		}
		fields := []any{"role", m.Role}
		if len(calls) > 0 {
			fields = append(fields, "tool_calls", calls)
		}
		switch {
		case len(parts) == 1 && bytes.HasPrefix(parts[0], []byte(`{"type":"text"`)):
			fields = append(fields, "content", firstText)
		case len(parts) > 0:
			fields = append(fields, "content", parts)
		case len(calls) == 0:
			fields = append(fields, "content", "")
		}
		add(fields...)
	}
	msgs.WriteByte(']')
	end := msgs.Len()

	c := &Chat{}
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
			writeObject(&tools, "type", "function", "function", object(fn...))
		}
		tools.WriteByte(']')
		c.Tools = tools.Bytes()
	}

	body := []any{"max_tokens", r.MaxTokens, "max_completion_tokens", r.MaxTokens}
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
		body = append(body, "stream", true, "stream_options", object("include_usage", true, "continuous_usage_stats", true))
	}
	if choice := r.chatToolChoice(); choice != nil {
		body = append(body, "tool_choice", choice)
	}
	if c.Tools != nil {
		body = append(body, "tools", c.Tools)
	}
	for i := 0; i+1 < len(body); i += 2 {
		msgs.WriteByte(',')
		writeJSON(&msgs, body[i])
		msgs.WriteByte(':')
		writeJSON(&msgs, body[i+1])
	}
	msgs.WriteByte('}')
	c.Body = msgs.Bytes()
	c.Messages = c.Body[start:end:end]
	return c, nil
}

// textLen is the length of the request's text, for sizing the converted messages.
func (r *Request) textLen() int {
	n := len(r.System.Text)
	for _, b := range r.System.Blocks {
		n += len(b.Text)
	}
	for _, m := range r.Messages {
		n += len(m.Text)
		for _, b := range m.Blocks {
			n += len(b.Text) + len(b.Input) + len(b.Content)
		}
	}
	return n
}

// text is the system message's content, nil when there is none (vLLM skips an empty
// system string).
func (s System) text() *string {
	if s.IsText {
		if s.Text == "" {
			return nil
		}
		return &s.Text
	}
	if len(s.Blocks) == 0 {
		return nil
	}
	var t string
	for _, b := range s.Blocks {
		t += b.Text
	}
	return &t
}

// resultText is a tool_result's content as vLLM's str(block.content) writes it: a string as
// is, blocks as Python's repr of the list, nothing (or an empty one) as "".
func (b Block) resultText() (string, error) {
	switch kind(b.Content) {
	case "a string":
		var s string
		_ = json.Unmarshal(b.Content, &s)
		return s, nil
	case "an array":
		if bytes.Equal(bytes.Join(bytes.Fields(b.Content), nil), []byte("[]")) {
			return "", nil
		}
		return pyStr(b.Content)
	}
	return "", nil
}

func (r *Request) chatToolChoice() json.RawMessage {
	if r.ToolChoice == nil {
		if r.Tools != nil {
			return json.RawMessage(`"auto"`)
		}
		return nil
	}
	switch r.ToolChoice.Type {
	case "auto":
		return json.RawMessage(`"auto"`)
	case "any":
		return json.RawMessage(`"required"`)
	case "none":
		return json.RawMessage(`"none"`)
	case "tool":
		return object("type", "function", "function", object("name", r.ToolChoice.Name))
	}
	return nil
}

// schemaWithType adds "type":"object" to a schema that has no type, at its end, as vLLM's
// validator does.
func schemaWithType(schema json.RawMessage) json.RawMessage {
	var probe map[string]json.RawMessage
	if json.Unmarshal(schema, &probe) != nil {
		return schema
	}
	if _, ok := probe["type"]; ok {
		return schema
	}
	s := bytes.TrimSpace(schema)
	if len(probe) == 0 {
		return json.RawMessage(`{"type":"object"}`)
	}
	out := append([]byte{}, s[:len(s)-1]...)
	return append(out, `,"type":"object"}`...)
}

// object writes a JSON object from key, value pairs in order; a json.RawMessage value is
// written as is, a []json.RawMessage as an array of them.
func object(kv ...any) json.RawMessage {
	var b bytes.Buffer
	writeObject(&b, kv...)
	return b.Bytes()
}

func writeObject(b *bytes.Buffer, kv ...any) {
	b.WriteByte('{')
	for i := 0; i+1 < len(kv); i += 2 {
		if i > 0 {
			b.WriteByte(',')
		}
		writeJSON(b, kv[i])
		b.WriteByte(':')
		writeJSON(b, kv[i+1])
	}
	b.WriteByte('}')
}

func writeJSON(b *bytes.Buffer, v any) {
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
	case string:
		b.Write(appendString(b.AvailableBuffer(), v))
	default:
		enc := json.NewEncoder(b)
		enc.SetEscapeHTML(false)
		_ = enc.Encode(v) // strings, floats, bools, []string: cannot fail
		b.Truncate(b.Len() - 1)
	}
}

// appendString appends s as a JSON string, byte for byte as encoding/json writes it with HTML
// escaping off: '"' and '\\' escaped, \b \f \n \r \t by name and other control bytes as
// \u00XX, invalid UTF-8 as \ufffd, U+2028 and U+2029 as \u2028 and \u2029.
func appendString(dst []byte, s string) []byte {
	const hex = "0123456789abcdef"
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); {
		if i+8 <= len(s) && ascii8([]byte(s[i:i+8])) {
			i += 8
			continue
		}
		if c := s[i]; c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' {
				i++
				continue
			}
			dst = append(dst, s[start:i]...)
			switch c {
			case '"', '\\':
				dst = append(dst, '\\', c)
			case '\b':
				dst = append(dst, '\\', 'b')
			case '\f':
				dst = append(dst, '\\', 'f')
			case '\n':
				dst = append(dst, '\\', 'n')
			case '\r':
				dst = append(dst, '\\', 'r')
			case '\t':
				dst = append(dst, '\\', 't')
			default:
				dst = append(dst, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xF])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			dst = append(dst, s[start:i]...)
			dst = append(dst, `\ufffd`...)
		case r == '\u2028' || r == '\u2029':
			dst = append(dst, s[start:i]...)
			dst = append(dst, '\\', 'u', '2', '0', '2', hex[r&0xF])
		default:
			i += size
			continue
		}
		i += size
		start = i
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}
