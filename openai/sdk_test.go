package openai_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/kvgate/kvgate/openai"
	sdk "github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
)

// fakeEngine answers /v1/chat/completions and /v1/models with this package's types only, so
// that the official OpenAI Go SDK proves the request parsing and the response shapes.
func fakeEngine(t *testing.T, seen chan<- *openai.ChatRequest) *httptest.Server {
	t.Helper()
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/chat/completions", func(w http.ResponseWriter, r *http.Request) {
		body, err := openai.ReadBody(r.Body, 1<<20)
		if err != nil {
			openai.WriteError(w, err)
			return
		}
		req, err := openai.ParseChatRequest(body)
		if err != nil {
			openai.WriteError(w, err)
			return
		}
		if req.Model != "m" {
			openai.WriteError(w, openai.ModelNotFound(req.Model))
			return
		}
		seen <- req
		stop := "stop"
		usage := &openai.Usage{PromptTokens: 7, CompletionTokens: 2, TotalTokens: 9, PromptTokensDetails: &openai.PromptTokensDetails{CachedTokens: 4}}
		if !req.Stream {
			text := "hello world"
			w.Header().Set("Content-Type", "application/json")
			_ = json.NewEncoder(w).Encode(openai.ChatCompletion{
				ID: "chatcmpl-1", Object: openai.ObjectChatCompletion, Created: 1, Model: req.Model,
				Choices: []openai.ChatChoice{{Message: openai.Message{Role: "assistant", Content: &text}, FinishReason: &stop}},
				Usage:   usage,
			})
			return
		}
		w.Header().Set("Content-Type", "text/event-stream")
		for i, piece := range []string{"hello", " world"} {
			c := openai.ChatCompletionChunk{ID: "chatcmpl-1", Object: openai.ObjectChatCompletionChunk, Created: 1, Model: req.Model,
				Choices: []openai.ChunkChoice{{Delta: openai.Delta{Content: &piece}}}}
			if i == 0 {
				c.Choices[0].Delta.Role = "assistant"
			} else {
				c.Choices[0].FinishReason = &stop
			}
			b, _ := json.Marshal(c)
			_ = openai.WriteSSE(w, b)
		}
		if req.IncludeUsage() {
			b, _ := json.Marshal(openai.ChatCompletionChunk{ID: "chatcmpl-1", Object: openai.ObjectChatCompletionChunk, Created: 1, Model: req.Model, Choices: []openai.ChunkChoice{}, Usage: usage})
			_ = openai.WriteSSE(w, b)
		}
		_ = openai.WriteSSEDone(w)
	})
	mux.HandleFunc("GET /v1/models", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(openai.ModelList{Object: openai.ObjectList, Data: []openai.Model{{ID: "m", Object: openai.ObjectModel, Created: 1, OwnedBy: "kvgate"}}})
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv
}

func TestOfficialSDK(t *testing.T) {
	seen := make(chan *openai.ChatRequest, 4)
	srv := fakeEngine(t, seen)
	client := sdk.NewClient(option.WithBaseURL(srv.URL+"/v1"), option.WithAPIKey("k"), option.WithMaxRetries(0))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	params := sdk.ChatCompletionNewParams{
		Model:     "m",
		Messages:  []sdk.ChatCompletionMessageParamUnion{sdk.SystemMessage("be brief"), sdk.UserMessage("hi")},
		MaxTokens: sdk.Int(5),
		Stop:      sdk.ChatCompletionNewParamsStopUnion{OfStringArray: []string{"x", "y"}},
	}

	t.Run("non-streaming", func(t *testing.T) {
		res, err := client.Chat.Completions.New(ctx, params)
		if err != nil {
			t.Fatal(err)
		}
		req := <-seen
		if *req.MaxTokens != 5 || len(req.Stop) != 2 || req.Stream {
			t.Errorf("parsed request %+v", req)
		}
		if res.Choices[0].Message.Content != "hello world" || res.Usage.TotalTokens != 9 || res.Usage.PromptTokensDetails.CachedTokens != 4 {
			t.Errorf("response %+v", res)
		}
	})

	t.Run("streaming with usage", func(t *testing.T) {
		p := params
		p.StreamOptions = sdk.ChatCompletionStreamOptionsParam{IncludeUsage: sdk.Bool(true)}
		stream := client.Chat.Completions.NewStreaming(ctx, p)
		acc := sdk.ChatCompletionAccumulator{}
		for stream.Next() {
			acc.AddChunk(stream.Current())
		}
		if err := stream.Err(); err != nil {
			t.Fatal(err)
		}
		if req := <-seen; !req.Stream || !req.IncludeUsage() {
			t.Errorf("parsed request %+v", req)
		}
		if acc.Choices[0].Message.Content != "hello world" || acc.Usage.TotalTokens != 9 {
			t.Errorf("accumulated %+v", acc.ChatCompletion)
		}
	})

	t.Run("errors", func(t *testing.T) {
		p := params
		p.Model = "nope"
		_, err := client.Chat.Completions.New(ctx, p)
		var apiErr *sdk.Error
		if !errors.As(err, &apiErr) || apiErr.StatusCode != 404 || apiErr.Code != openai.CodeModelNotFound {
			t.Fatalf("unknown model: %v", err)
		}
		p = params
		p.Temperature = sdk.Float(-1)
		_, err = client.Chat.Completions.New(ctx, p)
		if !errors.As(err, &apiErr) || apiErr.StatusCode != 400 || apiErr.Param != "temperature" {
			t.Fatalf("bad temperature: %v", err)
		}
	})

	t.Run("models", func(t *testing.T) {
		page, err := client.Models.List(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(page.Data) != 1 || page.Data[0].ID != "m" {
			t.Errorf("models %+v", page.Data)
		}
	})
}
