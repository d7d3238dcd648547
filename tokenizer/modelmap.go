package tokenizer

import (
	"fmt"
	"os"
	"sort"
	"sync"

	"github.com/kvgate/kvgate/configfile"
)

// Model configures one served model: its name as clients send it, the tokenizer directory
// ("" for the embedded default) and the engine's KV block size in tokens.
type Model struct {
	Name      string `json:"name"`
	Tokenizer string `json:"tokenizer"`
	BlockSize int    `json:"block_size"`
}

// DefaultBlockSize is the KV block size used when a model does not set one (vLLM's default).
const DefaultBlockSize = 16

// ModelMap maps model names to lazily loaded tokenizers and block sizes. It is safe for
// concurrent use; each tokenizer is loaded once, on first Lookup.
type ModelMap struct {
	names  []string
	models map[string]*modelEntry
}

type modelEntry struct {
	m    Model
	load func() (*Tokenizer, error)
}

// NewModelMap checks models (names unique and non-empty, block sizes >= 0) and returns the
// map. Tokenizers are not loaded until looked up.
func NewModelMap(models []Model) (*ModelMap, error) {
	mm := &ModelMap{models: make(map[string]*modelEntry, len(models))}
	for i, m := range models {
		if m.Name == "" {
			return nil, fmt.Errorf("tokenizer: model map entry %d has no name", i)
		}
		if _, dup := mm.models[m.Name]; dup {
			return nil, fmt.Errorf("tokenizer: model %q listed twice", m.Name)
		}
		if m.BlockSize < 0 {
			return nil, fmt.Errorf("tokenizer: model %q: block_size %d is negative", m.Name, m.BlockSize)
		}
		if m.BlockSize == 0 {
			m.BlockSize = DefaultBlockSize
		}
		e := &modelEntry{m: m}
		if m.Tokenizer == "" {
			e.load = Default
		} else {
			dir := m.Tokenizer
			e.load = sync.OnceValues(func() (*Tokenizer, error) { return Load(dir) })
		}
		mm.models[m.Name] = e
		mm.names = append(mm.names, m.Name)
	}
	sort.Strings(mm.names)
	return mm, nil
}

// LoadModelMap reads a YAML or JSON file holding a list of Model, as ParseModelMap.
func LoadModelMap(path string) (*ModelMap, []string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, fmt.Errorf("tokenizer: model map: %w", err)
	}
	return ParseModelMap(data)
}

// ParseModelMap parses YAML or JSON holding a list of Model by configfile's rule: snake_case
// keys, an unknown key is an error naming its line, and a camelCase key (blockSize) is still
// read with a deprecation warning (returned for the caller to log).
func ParseModelMap(data []byte) (*ModelMap, []string, error) {
	var models []Model
	meta, err := configfile.Decode(data, &models, nil)
	if err != nil {
		return nil, nil, fmt.Errorf("tokenizer: model map: %w", err)
	}
	if len(models) == 0 {
		return nil, nil, fmt.Errorf("tokenizer: model map lists no models")
	}
	mm, err := NewModelMap(models)
	return mm, meta.Warnings, err
}

// DefaultModelMap serves one model, DefaultModel, with the embedded Qwen3 tokenizer and block
// size 16.
func DefaultModelMap() *ModelMap {
	mm, err := NewModelMap([]Model{{Name: DefaultModel, BlockSize: DefaultBlockSize}})
	if err != nil {
		panic(err) // unreachable: the literal above is valid
	}
	return mm
}

// Lookup returns the tokenizer and block size of model name, loading the tokenizer on first
// use; an unknown name or a tokenizer that fails to load is an error.
func (mm *ModelMap) Lookup(name string) (*Tokenizer, int, error) {
	e, ok := mm.models[name]
	if !ok {
		return nil, 0, fmt.Errorf("tokenizer: unknown model %q", name)
	}
	t, err := e.load()
	if err != nil {
		return nil, 0, fmt.Errorf("tokenizer: model %q: %w", name, err)
	}
	return t, e.m.BlockSize, nil
}

// Models returns the configured models, sorted by name.
func (mm *ModelMap) Models() []Model {
	out := make([]Model, 0, len(mm.names))
	for _, n := range mm.names {
		out = append(out, mm.models[n].m)
	}
	return out
}

// Names returns the model names, sorted. The caller owns the returned slice.
func (mm *ModelMap) Names() []string { return append([]string(nil), mm.names...) }
