package main

import (
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/kvgate/kvgate/router"
)

// loraFlags name the LoRA adapters the router may load onto engines (docs/LORA.md).
type loraFlags struct {
	adapters []string
	base     string
}

func (l *loraFlags) add(cmd *cobra.Command) {
	f := cmd.Flags()
	f.StringArrayVar(&l.adapters, "lora-adapter", nil, "LoRA adapter the router loads onto engines of its base model when none has it, as NAME=PATH (the lora_path engines load it from through /v1/load_lora_adapter; engines need VLLM_ALLOW_RUNTIME_LORA_UPDATING); repeatable")
	f.StringVar(&l.base, "lora-base-model", "", "base model of the --lora-adapter adapters (default: the first model of the model map)")
}

func (l *loraFlags) apply(cfg *router.Config) error {
	if len(l.adapters) == 0 {
		return nil
	}
	base := l.base
	if base == "" {
		models := cfg.Models.Models()
		if len(models) == 0 {
			return fmt.Errorf("--lora-adapter: no base model: pass --lora-base-model")
		}
		base = models[0].Name
	}
	if cfg.Adapters == nil {
		cfg.Adapters = map[string]string{}
	}
	cfg.LoRA.Paths = map[string]string{}
	for _, a := range l.adapters {
		name, path, ok := strings.Cut(a, "=")
		if !ok || name == "" || path == "" {
			return fmt.Errorf("--lora-adapter %q: want NAME=PATH", a)
		}
		cfg.Adapters[name], cfg.LoRA.Paths[name] = base, path
	}
	return nil
}
