package e2e

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
	"github.com/openai/openai-go/v3/responses"
)

// TestUpServesResponsesAndEmbeddings checks the `kvgate up` binary answers the SDK's
// Responses (whole and streamed; a repeated long input served from the cache of the engine
// that saw it) and embeddings calls.
func TestUpServesResponsesAndEmbeddings(t *testing.T) {
	base, _ := up(t, "--engines", "2", "--sim-speed", "20")
	c := client(base)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	params := responses.ResponseNewParams{
		Model:           model,
		Instructions:    openai.String("Answer in one word."),
		Input:           responses.ResponseNewParamsInputUnion{OfString: openai.String(strings.Repeat("A long question about prefix caching in LLM serving. ", 40))},
		MaxOutputTokens: openai.Int(8),
	}
	var h1, h2 *http.Response
	r1, err := c.Responses.New(ctx, params, option.WithResponseInto(&h1))
	if err != nil {
		t.Fatal(err)
	}
	r2, err := c.Responses.New(ctx, params, option.WithResponseInto(&h2))
	if err != nil {
		t.Fatal(err)
	}
	if r1.OutputText() == "" || r1.Usage.InputTokens < 300 {
		t.Errorf("first response %q usage %+v", r1.OutputText(), r1.Usage)
	}
	if e1, e2 := h1.Header.Get("x-kvgate-endpoint"), h2.Header.Get("x-kvgate-endpoint"); e1 == "" || e1 != e2 {
		t.Errorf("repeated input served by %q then %q", e1, e2)
	}
	if r2.Usage.InputTokensDetails.CachedTokens == 0 {
		t.Errorf("repeated input: no cached tokens (%+v)", r2.Usage)
	}

	st := c.Responses.NewStreaming(ctx, params)
	var text strings.Builder
	done := false
	for st.Next() {
		ev := st.Current()
		switch ev.Type {
		case "response.output_text.delta":
			text.WriteString(ev.Delta)
		case "response.completed", "response.incomplete":
			done = ev.Response.OutputText() == text.String() && ev.Response.Usage.InputTokens > 0
		}
	}
	if err := st.Err(); err != nil || !done || text.Len() == 0 {
		t.Errorf("stream: err %v, final event consistent %v, text %q", err, done, text.String())
	}

	e, err := c.Embeddings.New(ctx, openai.EmbeddingNewParams{Model: model,
		Input: openai.EmbeddingNewParamsInputUnion{OfArrayOfStrings: []string{"one", "two"}}})
	if err != nil {
		t.Fatal(err)
	}
	if len(e.Data) != 2 || len(e.Data[0].Embedding) == 0 || e.Usage.PromptTokens == 0 {
		t.Errorf("embeddings %d vectors, usage %+v", len(e.Data), e.Usage)
	}
}
