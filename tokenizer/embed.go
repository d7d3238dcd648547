package tokenizer

import (
	"bytes"
	_ "embed"
	"sync"
)

// DefaultModel is the model name the embedded defaults serve.
const DefaultModel = "Qwen/Qwen3-8B"

//go:embed models/qwen3/tokenizer.json.gz
var qwen3TokenizerGz []byte

//go:embed models/qwen3/tokenizer_config.json
var qwen3Config []byte

var defaultOnce = sync.OnceValues(loadEmbedded)

// Default returns the embedded Qwen3 tokenizer, loaded on first use and shared afterwards.
func Default() (*Tokenizer, error) { return defaultOnce() }

// loadEmbedded builds a fresh copy of the embedded tokenizer.
func loadEmbedded() (*Tokenizer, error) {
	data, err := gunzip(bytes.NewReader(qwen3TokenizerGz))
	if err != nil {
		return nil, err
	}
	return FromBytes(data, qwen3Config)
}
