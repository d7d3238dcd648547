package openai

import (
	"encoding/json"
	"errors"
	"strings"
)

// EmbeddingRequest is a /v1/embeddings body. Input is one of the four prompt forms (a string,
// strings, token ids, arrays of token ids). Fields it does not know stay in Extra.
type EmbeddingRequest struct {
	Model          string          `json:"model,omitempty"`
	Input          Prompt          `json:"-"`
	EncodingFormat string          `json:"encoding_format,omitempty"`
	Dimensions     *int            `json:"dimensions,omitempty"`
	User           string          `json:"user,omitempty"`
	RawInput       json.RawMessage `json:"input"`

	// Extra holds the fields this type does not know, as they came.
	Extra map[string]json.RawMessage `json:"-"`
}

// Encoding formats of embeddings.
const (
	EncodingFloat   = "float"
	EncodingBase64  = "base64"
	ObjectEmbedding = "embedding"
)

// ParseEmbeddingRequest decodes and validates an embeddings body; every error is a 400 *Error
// naming its field.
func ParseEmbeddingRequest(body []byte) (*EmbeddingRequest, error) {
	r := &EmbeddingRequest{}
	extra, _, err := decodeObject(body, r, nil, false, false)
	if err != nil {
		return nil, err
	}
	r.Extra = extra
	if r.RawInput == nil {
		return nil, BadRequest("input", "Missing required parameter: 'input'.")
	}
	in, err := decodePrompt(r.RawInput)
	if err != nil {
		var e *Error
		if errors.As(err, &e) { // the prompt decoder names 'prompt'
			e2 := *e
			e2.Param = "input" + strings.TrimPrefix(e.Param, "prompt")
			e2.Message = strings.ReplaceAll(strings.ReplaceAll(e.Message, "'prompt", "'input"), "the prompt", "the input")
			return nil, &e2
		}
		return nil, BadRequest("input", "Invalid value for 'input': %v", err)
	}
	if in.Count() == 0 {
		return nil, BadRequest("input", "Invalid value for 'input': it must not be empty.")
	}
	for _, t := range in.Tokens {
		if len(t) == 0 {
			return nil, BadRequest("input", "Invalid value for 'input': a token id array must not be empty.")
		}
	}
	r.Input = in
	switch r.EncodingFormat {
	case "", EncodingFloat, EncodingBase64:
	default:
		return nil, BadRequest("encoding_format", "Invalid value for 'encoding_format': expected 'float' or 'base64', got '%s'.", r.EncodingFormat)
	}
	if r.Dimensions != nil && *r.Dimensions < 1 {
		return nil, BadRequest("dimensions", "Invalid value for 'dimensions': must be at least 1, got %d.", *r.Dimensions)
	}
	return r, nil
}

// Embedding is one vector of an embeddings response: a float array, or (base64) the
// little-endian float32 bytes in base64.
type Embedding struct {
	Object    string `json:"object"`
	Index     int    `json:"index"`
	Embedding any    `json:"embedding"`
}

// EmbeddingResponse is the /v1/embeddings response.
type EmbeddingResponse struct {
	ID      string      `json:"id,omitempty"`
	Object  string      `json:"object"`
	Created int64       `json:"created,omitempty"`
	Model   string      `json:"model"`
	Data    []Embedding `json:"data"`
	Usage   Usage       `json:"usage"`
}
