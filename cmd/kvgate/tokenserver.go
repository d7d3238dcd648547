package main

import (
	"github.com/spf13/cobra"

	"github.com/kvgate/kvgate/tokenizer"
	"github.com/kvgate/kvgate/tokenserver"
)

func init() { register(newTokenServerCmd) }

// newTokenServerCmd serves llm-d's tokenization gRPC API from kvgate's tokenizer.
func newTokenServerCmd(g *globals) *cobra.Command {
	var (
		cfg tokenserver.Config
		dir string
	)
	cmd := &cobra.Command{
		Use:   "tokenserver",
		Short: "Serve llm-d's tokenization gRPC service (for its precise prefix scorer) from kvgate's tokenizer",
		Long: `kvgate tokenserver serves the gRPC tokenization service that llm-d's Endpoint Picker
(llm-d-kv-cache v0.8.1's UDS tokenizer) dials, in place of llm-d's Python sidecar: chat templates
and BPE from the model's tokenizer.json, so the picker counts the same token ids as the engines.
It listens on a Unix socket by default (--listen unix:///PATH, the file is replaced), or on
host:port with optional TLS. See docs/LLMD.md.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			tok, err := loadTokenizer(dir)
			if err != nil {
				return err
			}
			cfg.Tokenizer = tok
			s, err := tokenserver.New(cfg, g.log)
			if err != nil {
				return err
			}
			return s.Run(cmd.Context())
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.Listen, "listen", "unix:///tmp/tokenizer/tokenizer-uds.socket", "unix:///PATH (the socket llm-d's EPP dials) or host:port")
	f.StringSliceVar(&cfg.Models, "model", []string{tokenizer.DefaultModel}, "model names served (repeatable; a request for another is refused)")
	f.StringVar(&dir, "tokenizer", "", "directory with tokenizer.json and tokenizer_config.json (default: the embedded Qwen3 tokenizer)")
	cfg.TLS.AddServerFlags(f, "", "the service (TCP only)")
	return cmd
}
