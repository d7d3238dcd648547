package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/kvgate/kvgate/openai"
)

func init() { register(newChatCmd) }

type chatOptions struct {
	url       string
	model     string
	system    string
	maxTokens int
	apiKey    string
	timeout   time.Duration
}

func newChatCmd(g *globals) *cobra.Command {
	o := &chatOptions{}
	cmd := &cobra.Command{
		Use:   "chat",
		Short: "Chat with any OpenAI-compatible endpoint in the terminal, streaming",
		Long: `chat reads lines from standard input and sends each, with the conversation so far, to
URL/v1/chat/completions, printing the reply as it streams. The history is kept for the
session: each turn resends it, so a KV-aware router finds the prefix cached. Type /reset to
clear the history, /quit (or end of input) to leave.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runChat(cmd.Context(), o, cmd.InOrStdin(), cmd.OutOrStdout())
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.url, "url", "http://127.0.0.1:8000", "base URL of the OpenAI-compatible server (without /v1)")
	f.StringVar(&o.model, "model", "", "model to ask for (default: the first one /v1/models lists)")
	f.StringVar(&o.system, "system", "", "system prompt that starts the conversation")
	f.IntVar(&o.maxTokens, "max-tokens", 512, "most tokens per reply")
	f.StringVar(&o.apiKey, "api-key", "", "bearer token sent as Authorization (env OPENAI_API_KEY)")
	f.DurationVar(&o.timeout, "timeout", 5*time.Minute, "longest wait for one reply")
	return cmd
}

type chatMessage struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

func runChat(ctx context.Context, o *chatOptions, in io.Reader, out io.Writer) error {
	base := strings.TrimRight(o.url, "/")
	base = strings.TrimSuffix(base, "/v1")
	if o.apiKey == "" {
		o.apiKey = os.Getenv("OPENAI_API_KEY")
	}
	client := &http.Client{}
	if o.model == "" {
		m, err := openai.ListModels(ctx, client, base, o.apiKey)
		if err != nil {
			return fmt.Errorf("%w; pass --model", err)
		}
		o.model = m[0]
	}
	fmt.Fprintf(out, "chatting with %s at %s (/reset clears the history, /quit leaves)\n", o.model, base)
	var history []chatMessage
	if o.system != "" {
		history = append(history, chatMessage{Role: "system", Content: o.system})
	}
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for {
		fmt.Fprint(out, "> ")
		if !sc.Scan() {
			fmt.Fprintln(out)
			return sc.Err()
		}
		line := strings.TrimSpace(sc.Text())
		switch line {
		case "":
			continue
		case "/quit", "/exit":
			return nil
		case "/reset":
			history = history[:0]
			if o.system != "" {
				history = append(history, chatMessage{Role: "system", Content: o.system})
			}
			fmt.Fprintln(out, "(history cleared)")
			continue
		}
		history = append(history, chatMessage{Role: "user", Content: line})
		reply, err := chatTurn(ctx, client, base, o, history, out)
		fmt.Fprintln(out)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			fmt.Fprintln(out, "error:", err)
			history = history[:len(history)-1]
			continue
		}
		history = append(history, chatMessage{Role: "assistant", Content: reply})
	}
}

func chatTurn(ctx context.Context, client *http.Client, base string, o *chatOptions, history []chatMessage, out io.Writer) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()
	body, err := json.Marshal(map[string]any{
		"model": o.model, "messages": history, "stream": true, "max_tokens": o.maxTokens,
		"stream_options": map[string]bool{"include_usage": true},
	})
	if err != nil {
		return "", err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, base+"/v1/chat/completions", bytes.NewReader(body))
	if err != nil {
		return "", err
	}
	req.Header.Set("Content-Type", "application/json")
	if o.apiKey != "" {
		req.Header.Set("Authorization", "Bearer "+o.apiKey)
	}
	resp, err := client.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return "", fmt.Errorf("HTTP %d: %s", resp.StatusCode, strings.TrimSpace(string(b)))
	}
	var reply strings.Builder
	events := openai.NewSSEReader(resp.Body)
	done := false
	for !done {
		data, err := events.Next()
		if errors.Is(err, io.EOF) {
			return reply.String(), errors.New("the stream ended without [DONE]")
		}
		if err != nil {
			return reply.String(), err
		}
		if string(data) == openai.Done {
			done = true
			continue
		}
		var chunk struct {
			Choices []struct {
				Delta struct {
					Content string `json:"content"`
				} `json:"delta"`
			} `json:"choices"`
			Error *struct {
				Message string `json:"message"`
			} `json:"error"`
		}
		if err := json.Unmarshal(data, &chunk); err != nil {
			return reply.String(), fmt.Errorf("bad chunk: %w", err)
		}
		if chunk.Error != nil {
			return reply.String(), errors.New(chunk.Error.Message)
		}
		for _, c := range chunk.Choices {
			reply.WriteString(c.Delta.Content)
			fmt.Fprint(out, c.Delta.Content)
		}
	}
	if id := resp.Header.Get("x-kvgate-endpoint"); id != "" {
		fmt.Fprintf(out, "\n  [served by %s, cached blocks %s]", id, orDash(resp.Header.Get("x-kvgate-cached-blocks")))
	}
	return reply.String(), nil
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
