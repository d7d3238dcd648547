package tokenserver

import (
	"encoding/json"
	"errors"
	"fmt"
	"unicode/utf8"

	tokenizationv1 "github.com/kvgate/kvgate/api/tokenization/v1"
	"github.com/kvgate/kvgate/tokenizer"
)

// message is one OpenAI chat message as the template sees it (field order as OpenAI's).
type message struct {
	Role      string          `json:"role"`
	Content   any             `json:"content"` // string, []part, or nil
	ToolCalls json.RawMessage `json:"tool_calls,omitempty"`
}

type part struct {
	Type     string    `json:"type"`
	Text     *string   `json:"text,omitempty"`
	ImageURL *imageURL `json:"image_url,omitempty"`
}

type imageURL struct {
	URL string `json:"url"`
}

// chatInput turns a render request into the tokenizer's chat input.
func chatInput(req *tokenizationv1.RenderChatCompletionRequest) (tokenizer.ChatInput, error) {
	if req.GetChatTemplate() != "" {
		return tokenizer.ChatInput{}, errors.New("a chat_template override is not supported: the model's own template is used")
	}
	msgs := make([]message, 0, len(req.GetMessages()))
	for i, m := range req.GetMessages() {
		out := message{Role: m.GetRole()}
		switch {
		case m.Content != nil:
			out.Content = m.GetContent()
		case len(m.GetContentParts()) > 0:
			parts := make([]part, 0, len(m.GetContentParts()))
			for _, p := range m.GetContentParts() {
				q := part{Type: p.GetType(), Text: p.Text}
				if p.GetImageUrl() != nil {
					q.ImageURL = &imageURL{URL: p.GetImageUrl().GetUrl()}
				}
				parts = append(parts, q)
			}
			out.Content = parts
		}
		if tc := m.GetToolCallsJson(); tc != "" {
			if !json.Valid([]byte(tc)) {
				return tokenizer.ChatInput{}, fmt.Errorf("messages[%d].tool_calls_json is not JSON", i)
			}
			out.ToolCalls = json.RawMessage(tc)
		}
		msgs = append(msgs, out)
	}
	raw, err := json.Marshal(msgs)
	if err != nil {
		return tokenizer.ChatInput{}, fmt.Errorf("messages: %w", err) // invalid UTF-8 is replaced, so only a bug lands here
	}
	in := tokenizer.ChatInput{Messages: raw, AddGenerationPrompt: true, Extra: map[string]any{}}
	if req.AddGenerationPrompt != nil {
		in.AddGenerationPrompt = req.GetAddGenerationPrompt()
	}
	if t := req.GetToolsJson(); t != "" {
		if !json.Valid([]byte(t)) {
			return tokenizer.ChatInput{}, errors.New("tools_json is not JSON")
		}
		in.Tools = json.RawMessage(t)
	}
	if kw := req.GetChatTemplateKwargs(); kw != "" {
		var m map[string]json.RawMessage
		if err := json.Unmarshal([]byte(kw), &m); err != nil {
			return tokenizer.ChatInput{}, fmt.Errorf("chat_template_kwargs: %w", err)
		}
		for k, v := range m {
			var x any
			if err := json.Unmarshal(v, &x); err != nil {
				return tokenizer.ChatInput{}, fmt.Errorf("chat_template_kwargs.%s: %w", k, err)
			}
			if _, isObj := x.(map[string]any); isObj {
				in.Extra[k] = v // keeps the key order for tojson
				continue
			}
			in.Extra[k] = x
		}
	}
	return in, nil
}

// plainValue turns a Value into the Go value a template reads.
func plainValue(v *tokenizationv1.Value) any {
	switch x := v.GetValue().(type) {
	case *tokenizationv1.Value_StringValue:
		return x.StringValue
	case *tokenizationv1.Value_NumberValue:
		return x.NumberValue
	case *tokenizationv1.Value_BoolValue:
		return x.BoolValue
	case *tokenizationv1.Value_ListValue:
		out := make([]any, 0, len(x.ListValue.GetValues()))
		for _, e := range x.ListValue.GetValues() {
			out = append(out, plainValue(e))
		}
		return out
	case *tokenizationv1.Value_StructValue:
		out := make(map[string]any, len(x.StructValue.GetFields()))
		for k, e := range x.StructValue.GetFields() {
			out[k] = plainValue(e)
		}
		return out
	}
	return nil
}

// offsets returns each token's [start, end) byte range in the encoded text, flattened. A
// byte-level BPE token stands for exact bytes, so each token's length is that of its own bytes;
// for other tokenizers the decoded text of the token is the best measure there is. Ranges are
// clipped to n, the input's length.
func offsets(tok *tokenizer.Tokenizer, ids []uint32, n int) []uint32 {
	out := make([]uint32, 0, 2*len(ids))
	pos := 0
	for _, id := range ids {
		size := 0
		if s, ok := tok.IDToken(id); ok {
			if b, ok := fromByteLevel(s); ok && !tok.IsAdded(id) {
				size = b
			} else {
				size = len(tok.Decode([]uint32{id}))
			}
		}
		end := min(pos+size, n)
		out = append(out, uint32(pos), uint32(end))
		pos = end
	}
	return out
}

// fromByteLevel returns how many bytes a byte-level token stands for: the byte-level alphabet
// maps each of the 256 byte values to one printable code point (the printable Latin-1 bytes to
// themselves, the others to U+0100 and up), so it is one byte per code point, provided every
// code point is in that alphabet.
func fromByteLevel(s string) (int, bool) {
	n := 0
	for len(s) > 0 {
		r, size := utf8.DecodeRuneInString(s)
		if r == utf8.RuneError && size <= 1 {
			return 0, false
		}
		if r > 0x143 { // 256 + 67 non-printable bytes is the alphabet's last code point
			return 0, false
		}
		s = s[size:]
		n++
	}
	return n, true
}
