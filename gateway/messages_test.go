package gateway_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	sdk "github.com/anthropics/anthropic-sdk-go/v2"
	"github.com/anthropics/anthropic-sdk-go/v2/option"

	"github.com/kvgate/kvgate/anthropic"
	"github.com/kvgate/kvgate/gateway"
	"github.com/kvgate/kvgate/router"
	"github.com/kvgate/kvgate/tokenizer"
)

// messagesClient is Anthropic's official SDK pointed at the gateway, without retries (an
// error must surface as it is).
func messagesClient(url string) sdk.Client {
	return sdk.NewClient(option.WithBaseURL(url), option.WithAPIKey("test"), option.WithMaxRetries(0))
}

// promptTokens is the number of tokens of chat messages rendered with the default template.
func promptTokens(t *testing.T, messages string) int {
	t.Helper()
	tok, err := tokenizer.Default()
	if err != nil {
		t.Fatal(err)
	}
	text, err := tok.RenderChat(tokenizer.ChatInput{Messages: json.RawMessage(messages), AddGenerationPrompt: true})
	if err != nil {
		t.Fatal(err)
	}
	return len(tok.Encode(text))
}

// TestMessagesSDK: Anthropic's Go SDK against the gateway in front of two simulated engines:
// a message, the same streamed, a system prompt with tools and a tool round trip, and a long
// prompt repeated that is routed to the engine holding it and read from its cache.
func TestMessagesSDK(t *testing.T) {
	a, _ := simEngine(t)
	b, _ := simEngine(t)
	f := startPolicy(t, "kv", gateway.Config{}, a.Addr(), b.Addr())
	c := messagesClient(f.url)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	params := sdk.MessageNewParams{
		Model:     model,
		MaxTokens: 16,
		Messages:  []sdk.MessageParam{sdk.NewUserMessage(sdk.NewTextBlock("What is a quaternion?"))},
	}
	var hr *http.Response
	msg, err := c.Messages.New(ctx, params, option.WithResponseInto(&hr))
	if err != nil {
		t.Fatal(err)
	}
	if msg.Type != "message" || msg.Role != "assistant" || len(msg.Content) != 1 || msg.Content[0].Type != "text" || msg.Content[0].Text == "" {
		t.Fatalf("message %s", msg.RawJSON())
	}
	if msg.StopReason != sdk.StopReasonEndTurn && msg.StopReason != sdk.StopReasonMaxTokens {
		t.Errorf("stop_reason %q", msg.StopReason)
	}
	want := promptTokens(t, `[{"role":"user","content":"What is a quaternion?"}]`)
	if got := msg.Usage.InputTokens + msg.Usage.CacheReadInputTokens; got != int64(want) || msg.Usage.OutputTokens < 1 {
		t.Errorf("usage %s: prompt %d, want %d", msg.Usage.RawJSON(), got, want)
	}
	if hr.Header.Get(router.HeaderEndpoint) == "" {
		t.Error("no endpoint header")
	}
	waitReleased(t, f)

	// The same request streamed: the same answer, event by event.
	stream := c.Messages.NewStreaming(ctx, params)
	var acc sdk.Message
	var types []string
	for stream.Next() {
		ev := stream.Current()
		types = append(types, ev.Type)
		if err := acc.Accumulate(ev); err != nil {
			t.Fatal(err)
		}
	}
	if err := stream.Err(); err != nil {
		t.Fatal(err)
	}
	if len(types) < 5 || types[0] != "message_start" || types[1] != "content_block_start" || types[len(types)-3] != "content_block_stop" ||
		types[len(types)-2] != "message_delta" || types[len(types)-1] != "message_stop" {
		t.Errorf("events %v", types)
	}
	if len(acc.Content) != 1 || acc.Content[0].Text != msg.Content[0].Text || acc.StopReason != msg.StopReason || acc.Usage.OutputTokens != msg.Usage.OutputTokens {
		t.Errorf("streamed %s, whole %s", acc.RawJSON(), msg.RawJSON())
	}
	waitReleased(t, f)

	// System prompt, tools, a tool call and its result.
	tool := sdk.ToolParam{Name: "get_weather", Description: sdk.String("The weather in a city."),
		InputSchema: sdk.ToolInputSchemaParam{Properties: map[string]any{"city": map[string]any{"type": "string"}}, Required: []string{"city"}}}
	msg, err = c.Messages.New(ctx, sdk.MessageNewParams{
		Model: model, MaxTokens: 8,
		System:     []sdk.TextBlockParam{{Text: "You answer briefly."}},
		Tools:      []sdk.ToolUnionParam{{OfTool: &tool}},
		ToolChoice: sdk.ToolChoiceUnionParam{OfAuto: &sdk.ToolChoiceAutoParam{}},
		Messages: []sdk.MessageParam{
			sdk.NewUserMessage(sdk.NewTextBlock("Weather in Paris?")),
			sdk.NewAssistantMessage(sdk.NewToolUseBlock("toolu_01", map[string]any{"city": "Paris"}, "get_weather")),
			sdk.NewUserMessage(sdk.NewToolResultBlock("toolu_01", "18 C and sunny", false)),
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	if msg.Content[0].Text == "" || msg.Usage.InputTokens+msg.Usage.CacheReadInputTokens < 20 {
		t.Fatalf("tool round trip: %s", msg.RawJSON())
	}
	waitReleased(t, f)

	// A long prompt twice: the second goes where the first went and reads its prefix there.
	long := strings.Repeat("The quick brown fox jumps over the lazy dog. ", 100)
	lp := sdk.MessageNewParams{Model: model, MaxTokens: 4, Messages: []sdk.MessageParam{sdk.NewUserMessage(sdk.NewTextBlock(long))}}
	var h1, h2 *http.Response
	first, err := c.Messages.New(ctx, lp, option.WithResponseInto(&h1))
	if err != nil {
		t.Fatal(err)
	}
	waitReleased(t, f)
	second, err := c.Messages.New(ctx, lp, option.WithResponseInto(&h2))
	if err != nil {
		t.Fatal(err)
	}
	if first.Usage.CacheReadInputTokens != 0 {
		t.Errorf("first long prompt read %d tokens from a cache", first.Usage.CacheReadInputTokens)
	}
	if second.Usage.CacheReadInputTokens == 0 {
		t.Errorf("repeated long prompt: no cache read (%s)", second.Usage.RawJSON())
	}
	if e1, e2 := h1.Header.Get(router.HeaderEndpoint), h2.Header.Get(router.HeaderEndpoint); e1 != e2 {
		t.Errorf("repeated prompt went to %s, then %s", e1, e2)
	}
	if n, _ := strconv.Atoi(h2.Header.Get(router.HeaderCachedBlocks)); n == 0 {
		t.Error("the router saw no cached blocks for the repeated prompt")
	}
	waitReleased(t, f)
}

// TestMessagesErrors: refusals surface through the SDK as its error type with Anthropic's
// status and type, whoever refused (router, gateway, engine).
func TestMessagesErrors(t *testing.T) {
	a, _ := simEngine(t)
	openaiErr := newEngine(t, func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusBadRequest)
		io.WriteString(w, `{"error":{"message":"the engine refuses","type":"BadRequestError","param":null,"code":400}}`)
	})
	f := start(t, gateway.Config{MaxBodyBytes: 64 << 10}, a.Addr())
	g := start(t, gateway.Config{}, openaiErr.addr())
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	user := []sdk.MessageParam{sdk.NewUserMessage(sdk.NewTextBlock("hi"))}
	for _, tc := range []struct {
		name   string
		url    string
		params sdk.MessageNewParams
		status int
		typ    string
		msg    string
	}{
		{"unknown model", f.url, sdk.MessageNewParams{Model: "nope", MaxTokens: 5, Messages: user}, 404, anthropic.TypeNotFound, "nope"},
		{"max_tokens 0", f.url, sdk.MessageNewParams{Model: model, MaxTokens: 0, Messages: user}, 400, anthropic.TypeInvalidRequest, "max_tokens"},
		{"no messages", f.url, sdk.MessageNewParams{Model: model, MaxTokens: 5}, 400, anthropic.TypeInvalidRequest, "messages"},
		{"too large", f.url, sdk.MessageNewParams{Model: model, MaxTokens: 5,
			Messages: []sdk.MessageParam{sdk.NewUserMessage(sdk.NewTextBlock(strings.Repeat("x", 70<<10)))}}, 413, anthropic.TypeRequestTooLarge, "exceeds"},
		{"engine's OpenAI error", g.url, sdk.MessageNewParams{Model: model, MaxTokens: 5, Messages: user}, 400, anthropic.TypeInvalidRequest, "the engine refuses"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := messagesClient(tc.url)
			_, err := c.Messages.New(ctx, tc.params)
			var e *sdk.Error
			if !errors.As(err, &e) {
				t.Fatalf("err %v is not the SDK's error", err)
			}
			if e.StatusCode != tc.status || string(e.Type()) != tc.typ || !strings.Contains(e.Message, tc.msg) {
				t.Fatalf("got %d %q %q, want %d %q containing %q (%s)", e.StatusCode, e.Type(), e.Message, tc.status, tc.typ, tc.msg, e.RawJSON())
			}
		})
	}
	waitReleased(t, f)
	waitReleased(t, g)
}

// TestMessagesStreamCut: an engine that dies mid-stream leaves the client an Anthropic error
// event (not OpenAI's) and an aborted response, which the SDK reports as an error.
func TestMessagesStreamCut(t *testing.T) {
	e := newEngine(t, func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "text/event-stream")
		w.WriteHeader(http.StatusOK)
		io.WriteString(w, "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"m\",\"content\":[],\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":3,\"output_tokens\":0}}}\n\nevent: content_block_start\ndata: {\"type\":\"content_bl")
		w.(http.Flusher).Flush()
		panic(http.ErrAbortHandler)
	})
	f := start(t, gateway.Config{MigrationLimit: -1}, e.addr())
	resp, err := http.Post(f.url+anthropic.Path, "application/json", strings.NewReader(`{"model":"`+model+`","max_tokens":5,"stream":true,"messages":[{"role":"user","content":"hi"}]}`))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body) // the aborted response ends in an error
	resp.Body.Close()
	er := anthropic.NewEventReader(strings.NewReader(string(body)))
	var last anthropic.Event
	for {
		ev, err := er.Next()
		if err != nil {
			break
		}
		last = anthropic.Event{Name: ev.Name, Data: append([]byte{}, ev.Data...)}
	}
	var eb struct {
		Type  string `json:"type"`
		Error struct {
			Type    string `json:"type"`
			Message string `json:"message"`
		} `json:"error"`
	}
	if last.Name != anthropic.EventError || json.Unmarshal(last.Data, &eb) != nil || eb.Type != "error" || eb.Error.Type != anthropic.TypeAPI || eb.Error.Message == "" {
		t.Fatalf("last event %q %s; body %q", last.Name, last.Data, body)
	}
	waitReleased(t, f)
}
