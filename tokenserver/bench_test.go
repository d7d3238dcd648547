package tokenserver_test

import (
	"context"
	"path/filepath"
	"strings"
	"testing"

	tokenizationv1 "github.com/kvgate/kvgate/api/tokenization/v1"
	"github.com/kvgate/kvgate/tokenizer"
	"github.com/kvgate/kvgate/tokenserver"
)

// BenchmarkRenderChat times one RenderChatCompletion of a ~1,700-token chat: the method itself
// ("direct", what the service adds to the tokenizer), and the whole call over the Unix socket as
// llm-d's EPP makes it ("grpc").
func BenchmarkRenderChat(b *testing.B) {
	text := strings.Repeat("The precise scorer asks for the token ids of this conversation turn. ", 170)
	req := &tokenizationv1.RenderChatCompletionRequest{ModelName: tokenizer.DefaultModel, Messages: []*tokenizationv1.ChatMessage{
		{Role: "system", Content: str("You are a helpful assistant.")}, {Role: "user", Content: &text},
	}}
	b.Run("direct", func(b *testing.B) {
		s, err := tokenserver.New(tokenserver.Config{}, nil)
		if err != nil {
			b.Fatal(err)
		}
		b.ReportAllocs()
		for b.Loop() {
			resp, _ := s.RenderChatCompletion(context.Background(), req)
			if !resp.GetSuccess() {
				b.Fatal(resp.GetErrorMessage())
			}
		}
	})
	b.Run("grpc", func(b *testing.B) {
		sock := filepath.Join(b.TempDir(), "tok.sock")
		c := serveB(b, sock)
		b.ReportAllocs()
		for b.Loop() {
			resp, err := c.RenderChatCompletion(context.Background(), req)
			if err != nil || !resp.GetSuccess() {
				b.Fatal(err, resp.GetErrorMessage())
			}
		}
	})
}
