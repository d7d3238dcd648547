package tokenizer

import (
	"encoding/json"
	"fmt"
	"sort"
	"strconv"
)

// configJSON is the part of tokenizer_config.json that kvgate reads.
type configJSON struct {
	ChatTemplate       json.RawMessage           `json:"chat_template"`
	BOSToken           json.RawMessage           `json:"bos_token"`
	EOSToken           json.RawMessage           `json:"eos_token"`
	AddedTokensDecoder map[string]addedTokenJSON `json:"added_tokens_decoder"`
}

// applyConfig reads tokenizer_config.json: chat templates, bos/eos and added tokens missing
// from tokenizer.json.
func (t *Tokenizer) applyConfig(data []byte) error {
	var c configJSON
	if err := json.Unmarshal(data, &c); err != nil {
		return fmt.Errorf("tokenizer: tokenizer_config.json: %w", err)
	}
	var err error
	if t.bosToken, err = tokenString(c.BOSToken); err != nil {
		return fmt.Errorf("tokenizer: tokenizer_config.json bos_token: %w", err)
	}
	if t.eosToken, err = tokenString(c.EOSToken); err != nil {
		return fmt.Errorf("tokenizer: tokenizer_config.json eos_token: %w", err)
	}
	// Added tokens only listed in the config (older models) join the added vocabulary.
	keys := make([]string, 0, len(c.AddedTokensDecoder))
	for k := range c.AddedTokensDecoder {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	grew := false
	for _, k := range keys {
		a := c.AddedTokensDecoder[k]
		id, err := strconv.ParseUint(k, 10, 32)
		if err != nil || a.Content == "" {
			return fmt.Errorf("tokenizer: tokenizer_config.json added_tokens_decoder %q: bad id or empty content", k)
		}
		if _, ok := t.added.byContent[a.Content]; ok {
			continue
		}
		if id > uint64(2*t.names.len()+1024) {
			return fmt.Errorf("tokenizer: tokenizer_config.json added token id %d is too large", id)
		}
		a.ID = uint32(id)
		for a.ID >= uint32(len(t.special)) {
			t.special = append(t.special, false)
		}
		if a.ID > t.maxID {
			t.maxID = a.ID
		}
		t.names.set([]uint32{a.ID}, []string{a.Content})
		t.special[a.ID] = true
		t.added.add(a, t.norm)
		grew = true
	}
	if grew {
		t.added.finish()
	}
	tm, err := parseChatTemplates(c.ChatTemplate)
	if err != nil {
		return err
	}
	t.tmpl = tm
	return nil
}

// tokenString reads a bos/eos entry: a string, null, or an AddedToken object with content.
func tokenString(raw json.RawMessage) (string, error) {
	if isNull(raw) {
		return "", nil
	}
	var s string
	if err := json.Unmarshal(raw, &s); err == nil {
		return s, nil
	}
	var o struct {
		Content string `json:"content"`
	}
	if err := json.Unmarshal(raw, &o); err != nil {
		return "", err
	}
	return o.Content, nil
}
