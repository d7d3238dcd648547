// Package tokenserver serves llm-d's tokenization gRPC service (api/tokenization/v1) from
// kvgate's own tokenizer, so that llm-d's Endpoint Picker counts the same token ids as the
// engines kvgate simulates or fronts.
package tokenserver

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	tokenizationv1 "github.com/kvgate/kvgate/api/tokenization/v1"
	"github.com/kvgate/kvgate/tlsconfig"
	"github.com/kvgate/kvgate/tokenizer"
)

// maxMessage bounds a request: a conversation of a long context is a few MiB at most.
const maxMessage = 64 << 20

// Config is what New needs.
type Config struct {
	// Listen is "unix:///path/to.socket" (the socket file is replaced) or "host:port".
	Listen string
	// Tokenizer encodes and renders; nil means the embedded default (Qwen3).
	Tokenizer *tokenizer.Tokenizer
	// Models are the model names served; a request naming another fails. Empty serves any name.
	Models []string
	// TLS is used on a TCP listener when set.
	TLS tlsconfig.Files
}

// Server is the tokenization service. Its methods are safe for concurrent use.
type Server struct {
	tokenizationv1.UnimplementedTokenizationServiceServer
	cfg    Config
	tok    *tokenizer.Tokenizer
	models map[string]bool
	log    *slog.Logger
}

var _ tokenizationv1.TokenizationServiceServer = (*Server)(nil)

// New checks cfg and builds a server; Run or Serve starts it.
func New(cfg Config, log *slog.Logger) (*Server, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	tok := cfg.Tokenizer
	if tok == nil {
		var err error
		if tok, err = tokenizer.Default(); err != nil {
			return nil, err
		}
	}
	s := &Server{cfg: cfg, tok: tok, models: map[string]bool{}, log: log}
	for _, m := range cfg.Models {
		s.models[m] = true
	}
	return s, nil
}

// Run listens on cfg.Listen and serves until ctx ends.
func (s *Server) Run(ctx context.Context) error {
	lis, creds, err := s.listen()
	if err != nil {
		return err
	}
	var opts []grpc.ServerOption
	if creds != nil {
		opts = append(opts, grpc.Creds(creds))
	}
	s.log.Info("tokenization service listening", "addr", s.cfg.Listen)
	return s.Serve(ctx, lis, opts...)
}

// Serve serves on lis until ctx ends, then stops gracefully.
func (s *Server) Serve(ctx context.Context, lis net.Listener, opts ...grpc.ServerOption) error {
	opts = append(opts, grpc.MaxRecvMsgSize(maxMessage))
	g := grpc.NewServer(opts...)
	tokenizationv1.RegisterTokenizationServiceServer(g, s)
	stop := context.AfterFunc(ctx, g.GracefulStop)
	defer stop()
	if err := g.Serve(lis); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		return err
	}
	return nil
}

func (s *Server) listen() (net.Listener, credentials.TransportCredentials, error) {
	if path, ok := strings.CutPrefix(s.cfg.Listen, "unix://"); ok {
		if path == "" {
			return nil, nil, errors.New("tokenserver: unix:// needs a socket path")
		}
		if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, nil, fmt.Errorf("tokenserver: replacing %s: %w", path, err)
		}
		lis, err := net.Listen("unix", path)
		return lis, nil, err
	}
	tc, err := s.cfg.TLS.Server()
	if err != nil {
		return nil, nil, err
	}
	lis, err := net.Listen("tcp", s.cfg.Listen)
	if err != nil {
		return nil, nil, err
	}
	if tc == nil {
		return lis, nil, nil
	}
	return lis, credentials.NewTLS(tc), nil
}

// checkModel says why model is not served, or "".
func (s *Server) checkModel(model string) string {
	if len(s.models) == 0 || s.models[model] {
		return ""
	}
	return fmt.Sprintf("model %q is not served here (serving %s)", model, strings.Join(s.cfg.Models, ", "))
}

// InitializeTokenizer succeeds for every served model: the tokenizer is already loaded.
func (s *Server) InitializeTokenizer(_ context.Context, req *tokenizationv1.InitializeTokenizerRequest) (*tokenizationv1.InitializeTokenizerResponse, error) {
	if msg := s.checkModel(req.GetModelName()); msg != "" {
		return &tokenizationv1.InitializeTokenizerResponse{ErrorMessage: msg}, nil
	}
	return &tokenizationv1.InitializeTokenizerResponse{Success: true}, nil
}

// Tokenize encodes plain text, with each token's byte offsets in the input.
func (s *Server) Tokenize(_ context.Context, req *tokenizationv1.TokenizeRequest) (*tokenizationv1.TokenizeResponse, error) {
	if msg := s.checkModel(req.GetModelName()); msg != "" {
		return &tokenizationv1.TokenizeResponse{ErrorMessage: msg}, nil
	}
	ids := s.tok.Encode(req.GetInput())
	return &tokenizationv1.TokenizeResponse{Success: true, InputIds: ids, OffsetPairs: offsets(s.tok, ids, len(req.GetInput()))}, nil
}

// RenderCompletion encodes a completion prompt as the engine does (no template).
func (s *Server) RenderCompletion(_ context.Context, req *tokenizationv1.RenderCompletionRequest) (*tokenizationv1.RenderCompletionResponse, error) {
	if msg := s.checkModel(req.GetModelName()); msg != "" {
		return &tokenizationv1.RenderCompletionResponse{ErrorMessage: msg}, nil
	}
	return &tokenizationv1.RenderCompletionResponse{Success: true, TokenIds: s.tok.Encode(req.GetPrompt())}, nil
}

// RenderChatCompletion renders the messages with the model's chat template and encodes the
// prompt, as the engine does for /v1/chat/completions.
func (s *Server) RenderChatCompletion(_ context.Context, req *tokenizationv1.RenderChatCompletionRequest) (*tokenizationv1.RenderChatCompletionResponse, error) {
	if msg := s.checkModel(req.GetModelName()); msg != "" {
		return &tokenizationv1.RenderChatCompletionResponse{ErrorMessage: msg}, nil
	}
	in, err := chatInput(req)
	if err != nil {
		return &tokenizationv1.RenderChatCompletionResponse{ErrorMessage: err.Error()}, nil
	}
	text, err := s.tok.RenderChat(in)
	if err != nil {
		return &tokenizationv1.RenderChatCompletionResponse{ErrorMessage: "rendering the chat template: " + err.Error()}, nil
	}
	return &tokenizationv1.RenderChatCompletionResponse{Success: true, TokenIds: s.tok.Encode(text)}, nil
}

// RenderChatTemplate renders the older request shape to prompt text.
func (s *Server) RenderChatTemplate(_ context.Context, req *tokenizationv1.ChatTemplateRequest) (*tokenizationv1.ChatTemplateResponse, error) {
	if msg := s.checkModel(req.GetModelName()); msg != "" {
		return &tokenizationv1.ChatTemplateResponse{ErrorMessage: msg}, nil
	}
	var msgs []*tokenizationv1.ChatMessage
	for _, turn := range req.GetConversationTurns() {
		msgs = append(msgs, turn.GetMessages()...)
	}
	gen := req.GetAddGenerationPrompt()
	kwargs := map[string]any{}
	for k, v := range req.GetChatTemplateKwargs() {
		kwargs[k] = plainValue(v)
	}
	in, err := chatInput(&tokenizationv1.RenderChatCompletionRequest{Messages: msgs, AddGenerationPrompt: &gen, ChatTemplate: req.GetChatTemplate()})
	if err != nil {
		return &tokenizationv1.ChatTemplateResponse{ErrorMessage: err.Error()}, nil
	}
	for k, v := range kwargs {
		in.Extra[k] = v
	}
	text, err := s.tok.RenderChat(in)
	if err != nil {
		return &tokenizationv1.ChatTemplateResponse{ErrorMessage: "rendering the chat template: " + err.Error()}, nil
	}
	return &tokenizationv1.ChatTemplateResponse{Success: true, RenderedPrompt: text}, nil
}
