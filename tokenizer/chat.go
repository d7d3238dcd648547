package tokenizer

import "encoding/json"

type chatTemplates struct{}

func parseChatTemplates(raw json.RawMessage) (*chatTemplates, error) { return nil, nil }
