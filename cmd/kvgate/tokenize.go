package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"

	"github.com/kvgate/kvgate/tokenizer"
	"github.com/spf13/cobra"
)

func init() { register(newTokenizeCmd) }

// chatFile is the --chat input: the parts of an OpenAI chat request the template needs.
type chatFile struct {
	Messages            json.RawMessage `json:"messages"`
	Tools               json.RawMessage `json:"tools"`
	AddGenerationPrompt bool            `json:"add_generation_prompt"`
	Extra               map[string]any  `json:"extra"`
}

// tokenizeOutput is what kvgate tokenize prints.
type tokenizeOutput struct {
	IDs    []uint32 `json:"ids"`
	Prompt *string  `json:"prompt,omitempty"`
}

func newTokenizeCmd(g *globals) *cobra.Command {
	var dir, text, textFile, chat, template string
	cmd := &cobra.Command{
		Use:   "tokenize",
		Short: "Print the token ids of a text or a rendered chat (as JSON)",
		Long: `tokenize encodes text with a model's tokenizer.json, or renders a chat with the model's
chat template and encodes the prompt, and prints {"ids": [...], "prompt": "..."} (prompt only
with --chat). No special tokens are added; special tokens written in the text are recognised.
The --chat file is a JSON object with "messages", optional "tools", "add_generation_prompt"
and "extra" (template variables such as enable_thinking).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			n := 0
			for _, s := range []string{text, textFile, chat} {
				if s != "" {
					n++
				}
			}
			if cmd.Flags().Changed("text") && text == "" {
				n++ // an explicitly empty --text is a valid input
			}
			if n != 1 {
				return errors.New("give exactly one of --text, --text-file, --chat")
			}
			tok, err := loadTokenizer(dir)
			if err != nil {
				return err
			}
			var out tokenizeOutput
			switch {
			case textFile != "":
				b, err := os.ReadFile(textFile)
				if err != nil {
					return err
				}
				out.IDs = tok.Encode(string(b))
			case chat != "":
				b, err := os.ReadFile(chat)
				if err != nil {
					return err
				}
				var cf chatFile
				if err := json.Unmarshal(b, &cf); err != nil {
					return fmt.Errorf("--chat %s: %w", chat, err)
				}
				if len(cf.Messages) == 0 {
					return fmt.Errorf("--chat %s: no \"messages\"", chat)
				}
				prompt, err := tok.RenderChat(tokenizer.ChatInput{
					Messages:            cf.Messages,
					Tools:               cf.Tools,
					AddGenerationPrompt: cf.AddGenerationPrompt,
					Extra:               cf.Extra,
					Template:            template,
				})
				if err != nil {
					return err
				}
				out.IDs, out.Prompt = tok.Encode(prompt), &prompt
			default:
				out.IDs = tok.Encode(text)
			}
			if out.IDs == nil {
				out.IDs = []uint32{}
			}
			g.log.Debug("tokenized", "ids", len(out.IDs))
			enc := json.NewEncoder(cmd.OutOrStdout())
			enc.SetEscapeHTML(false)
			return enc.Encode(out)
		},
	}
	f := cmd.Flags()
	f.StringVar(&dir, "tokenizer", "", "directory with tokenizer.json[.gz] and tokenizer_config.json (default: the embedded "+tokenizer.DefaultModel+")")
	f.StringVar(&text, "text", "", "text to encode")
	f.StringVar(&textFile, "text-file", "", "file whose contents to encode")
	f.StringVar(&chat, "chat", "", "JSON file with messages, tools, add_generation_prompt, extra: render the chat template and encode")
	f.StringVar(&template, "template", "", "named chat template (default: the tokenizer's default template)")
	return cmd
}

func loadTokenizer(dir string) (*tokenizer.Tokenizer, error) {
	if dir == "" {
		return tokenizer.Default()
	}
	return tokenizer.Load(dir)
}
