package gateway

import "github.com/kvgate/kvgate/openai"

// usageFromChunk returns the usage one streamed chunk carries, nil when none.
func usageFromChunk(data []byte) *openai.Usage {
	u, ok := openai.UsageFromChunk(data)
	if !ok {
		return nil
	}
	return u
}

// usageFromBody returns the usage of a whole JSON response, nil when none.
func usageFromBody(body []byte) *openai.Usage {
	u, ok := openai.UsageFromBody(body)
	if !ok {
		return nil
	}
	return u
}
