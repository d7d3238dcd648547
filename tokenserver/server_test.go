package tokenserver_test

import (
	"context"
	"encoding/json"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	tokenizationv1 "github.com/kvgate/kvgate/api/tokenization/v1"
	"github.com/kvgate/kvgate/porttest"
	"github.com/kvgate/kvgate/tlsconfig/tlsconfigtest"
	"github.com/kvgate/kvgate/tokenizer"
	"github.com/kvgate/kvgate/tokenserver"
)

const model = tokenizer.DefaultModel

// serve starts the service on listen and returns a client of it.
func serve(t testing.TB, cfg tokenserver.Config, target string, creds credentials.TransportCredentials) tokenizationv1.TokenizationServiceClient {
	t.Helper()
	s, err := tokenserver.New(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	if creds == nil {
		creds = insecure.NewCredentials()
	}
	conn, err := grpc.NewClient(target, grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	c := tokenizationv1.NewTokenizationServiceClient(conn)
	// The listener is up once an RPC gets through (the client waits for it).
	if _, err := c.InitializeTokenizer(ctx, &tokenizationv1.InitializeTokenizerRequest{ModelName: model}, grpc.WaitForReady(true)); err != nil {
		t.Fatal(err)
	}
	return c
}

// serveB is serve on a Unix socket for benchmarks.
func serveB(b *testing.B, sock string) tokenizationv1.TokenizationServiceClient {
	return serve(b, tokenserver.Config{Listen: "unix://" + sock}, "unix://"+sock, nil)
}

func unixClient(t *testing.T, models ...string) tokenizationv1.TokenizationServiceClient {
	sock := filepath.Join(t.TempDir(), "tok.sock")
	return serve(t, tokenserver.Config{Listen: "unix://" + sock, Models: models}, "unix://"+sock, nil)
}

func str(s string) *string { return &s }

// TestRenderChatMatchesEngine: the ids of a rendered chat are the ones the engines count: the
// model's chat template, then the tokenizer, exactly as the simulated engine does it.
func TestRenderChatMatchesEngine(t *testing.T) {
	t.Cleanup(func() { goleak.VerifyNone(t, goleak.IgnoreCurrent()) }) // runs after the server and client are closed
	c := unixClient(t, model)
	tok, err := tokenizer.Default()
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name     string
		messages []*tokenizationv1.ChatMessage
		tools    *string
		gen      *bool
		openai   string // the same messages as an OpenAI request carries them
		wantGen  bool
	}{
		{
			name: "system and user",
			messages: []*tokenizationv1.ChatMessage{
				{Role: "system", Content: str("You are terse.")},
				{Role: "user", Content: str("Hello, \"world\" <tag>\n\tcafé 日本")},
			},
			openai:  `[{"role":"system","content":"You are terse."},{"role":"user","content":"Hello, \"world\" <tag>\n\tcafé 日本"}]`,
			wantGen: true,
		},
		{
			name: "multi-turn without generation prompt",
			messages: []*tokenizationv1.ChatMessage{
				{Role: "user", Content: str("one")},
				{Role: "assistant", Content: str("two")},
				{Role: "user", Content: str("three")},
			},
			gen:    new(bool),
			openai: `[{"role":"user","content":"one"},{"role":"assistant","content":"two"},{"role":"user","content":"three"}]`,
		},
		{
			name: "content parts",
			messages: []*tokenizationv1.ChatMessage{
				{Role: "user", ContentParts: []*tokenizationv1.ContentPart{{Type: "text", Text: str("part a")}, {Type: "text", Text: str("part b")}}},
			},
			openai:  `[{"role":"user","content":[{"type":"text","text":"part a"},{"type":"text","text":"part b"}]}]`,
			wantGen: true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, err := c.RenderChatCompletion(context.Background(), &tokenizationv1.RenderChatCompletionRequest{
				ModelName: model, Messages: tt.messages, ToolsJson: tt.tools, AddGenerationPrompt: tt.gen,
			})
			if err != nil {
				t.Fatal(err)
			}
			if !resp.GetSuccess() {
				t.Fatalf("success=false: %s", resp.GetErrorMessage())
			}
			text, err := tok.RenderChat(tokenizer.ChatInput{Messages: json.RawMessage(tt.openai), AddGenerationPrompt: tt.wantGen})
			if err != nil {
				t.Fatal(err)
			}
			if want := tok.Encode(text); !slices.Equal(resp.GetTokenIds(), want) {
				t.Errorf("ids differ from the engine's:\n got %v\nwant %v\nprompt %q", resp.GetTokenIds(), want, text)
			}
		})
	}
}

// TestTokenizeOffsets: Tokenize's offsets cover the input exactly, token by token.
func TestTokenizeOffsets(t *testing.T) {
	c := unixClient(t)
	for _, in := range []string{"", "plain words", "café 日本語 🙂 mixed", "<|im_start|>user\nhi<|im_end|>"} {
		resp, err := c.Tokenize(context.Background(), &tokenizationv1.TokenizeRequest{Input: in, ModelName: model})
		if err != nil || !resp.GetSuccess() {
			t.Fatalf("%q: %v %s", in, err, resp.GetErrorMessage())
		}
		off := resp.GetOffsetPairs()
		if len(off) != 2*len(resp.GetInputIds()) {
			t.Fatalf("%q: %d offsets for %d ids", in, len(off), len(resp.GetInputIds()))
		}
		var b strings.Builder
		for i := 0; i < len(off); i += 2 {
			if i > 0 && off[i] != off[i-1] {
				t.Errorf("%q: token %d starts at %d, the previous ended at %d", in, i/2, off[i], off[i-1])
			}
			b.WriteString(in[off[i]:off[i+1]])
		}
		if b.String() != in {
			t.Errorf("offsets rebuild %q, want %q", b.String(), in)
		}
	}
}

// TestRefusals: what the service cannot serve answers success=false with the reason.
func TestRefusals(t *testing.T) {
	c := unixClient(t, model)
	ctx := context.Background()
	init, err := c.InitializeTokenizer(ctx, &tokenizationv1.InitializeTokenizerRequest{ModelName: "other/model"})
	if err != nil || init.GetSuccess() || !strings.Contains(init.GetErrorMessage(), "other/model") {
		t.Errorf("unknown model: %v %+v", err, init)
	}
	rc, err := c.RenderCompletion(ctx, &tokenizationv1.RenderCompletionRequest{ModelName: "other/model", Prompt: "x"})
	if err != nil || rc.GetSuccess() {
		t.Errorf("unknown model completion: %v %+v", err, rc)
	}
	for name, req := range map[string]*tokenizationv1.RenderChatCompletionRequest{
		"template override": {ModelName: model, ChatTemplate: "{{ messages }}", Messages: []*tokenizationv1.ChatMessage{{Role: "user", Content: str("x")}}},
		"bad tool calls":    {ModelName: model, Messages: []*tokenizationv1.ChatMessage{{Role: "assistant", ToolCallsJson: str("[{")}}},
		"bad kwargs":        {ModelName: model, ChatTemplateKwargs: str("nope"), Messages: []*tokenizationv1.ChatMessage{{Role: "user", Content: str("x")}}},
	} {
		resp, err := c.RenderChatCompletion(ctx, req)
		if err != nil || resp.GetSuccess() || resp.GetErrorMessage() == "" {
			t.Errorf("%s: %v %+v", name, err, resp)
		}
	}
	ok, err := c.RenderCompletion(ctx, &tokenizationv1.RenderCompletionRequest{ModelName: model, Prompt: "hello"})
	if err != nil || !ok.GetSuccess() || len(ok.GetTokenIds()) == 0 {
		t.Errorf("a good request after refusals: %v %+v", err, ok)
	}
}

// TestTLS: on TCP the service speaks TLS when given certificates.
func TestTLS(t *testing.T) {
	pki := tlsconfigtest.New(t)
	addr := porttest.Addr(t)
	cli, err := pki.Client.Client()
	if err != nil {
		t.Fatal(err)
	}
	c := serve(t, tokenserver.Config{Listen: addr, TLS: pki.Server}, addr, credentials.NewTLS(cli))
	resp, err := c.RenderCompletion(context.Background(), &tokenizationv1.RenderCompletionRequest{ModelName: model, Prompt: "secure"})
	if err != nil || !resp.GetSuccess() {
		t.Fatalf("%v %+v", err, resp)
	}
}
