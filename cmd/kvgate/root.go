package main

import (
	"fmt"
	"log/slog"
	"os"
	"strings"

	"github.com/spf13/cobra"
)

// globals holds what every subcommand shares: the logger built from --log-level.
type globals struct {
	logLevel  string
	logFormat string
	log       *slog.Logger
}

func newRootCmd() *cobra.Command {
	g := &globals{}
	root := &cobra.Command{
		Use:   "kvgate",
		Short: "KV-cache-aware gateway that makes a fleet of LLM engines behave like one",
		Long: `kvgate puts a fleet of vLLM/SGLang engines behind one OpenAI-compatible endpoint.
Requests go to the engine that already holds their prompt's KV cache, unless load says
otherwise. Start everything on one machine with 'kvgate up'.`,
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			l, err := newLogger(g.logLevel, g.logFormat)
			if err != nil {
				return err
			}
			g.log = l
			return nil
		},
	}
	level := os.Getenv("KVGATE_LOG")
	if level == "" {
		level = "info"
	}
	root.PersistentFlags().StringVar(&g.logLevel, "log-level", level, "log level: debug, info, warn, error (env KVGATE_LOG)")
	root.PersistentFlags().StringVar(&g.logFormat, "log-format", "text", "log format: text or json")

	root.AddCommand(
		newVersionCmd(),
	)
	for _, add := range subcommands {
		root.AddCommand(add(g))
	}
	return root
}

// subcommands are registered by each subcommand's file in init, so that every command lives
// in a file of its own.
var subcommands []func(*globals) *cobra.Command

func register(f func(*globals) *cobra.Command) { subcommands = append(subcommands, f) }

func newLogger(level, format string) (*slog.Logger, error) {
	var lv slog.Level
	switch strings.ToLower(level) {
	case "debug":
		lv = slog.LevelDebug
	case "info", "":
		lv = slog.LevelInfo
	case "warn", "warning":
		lv = slog.LevelWarn
	case "error":
		lv = slog.LevelError
	default:
		return nil, fmt.Errorf("unknown log level %q (want debug, info, warn or error)", level)
	}
	opts := &slog.HandlerOptions{Level: lv}
	switch format {
	case "text", "":
		return slog.New(slog.NewTextHandler(os.Stderr, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(os.Stderr, opts)), nil
	}
	return nil, fmt.Errorf("unknown log format %q (want text or json)", format)
}

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func newVersionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the kvgate version",
		Args:  cobra.NoArgs,
		Run: func(cmd *cobra.Command, _ []string) {
			fmt.Fprintln(cmd.OutOrStdout(), "kvgate", version)
		},
	}
}
