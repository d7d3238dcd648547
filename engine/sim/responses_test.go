package sim

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"math"
	"net/http"
	"strings"
	"testing"

	"github.com/kvgate/kvgate/openai"
)

// TestResponsesLikeChat: a Responses request runs as the equivalent chat request (the same
// prompt tokens) and shares its prefix cache; streamed, its events come in order with their
// sequence numbers and the deltas make the final text.
func TestResponsesLikeChat(t *testing.T) {
	s := testServer(t, ServerConfig{})
	c := client(t)
	text := longText(3, 300)
	ch := chat(t, c, s, map[string]any{"messages": []map[string]any{{"role": "system", "content": "Be brief."}, {"role": "user", "content": text}}, "max_tokens": 4})

	code, out := post(t, c, s, "/v1/responses", map[string]any{"instructions": "Be brief.", "input": text, "max_output_tokens": 4})
	if code != http.StatusOK {
		t.Fatalf("status %d: %s", code, out)
	}
	var r openai.Response
	if err := json.Unmarshal(out, &r); err != nil {
		t.Fatal(err)
	}
	if r.Object != openai.ObjectResponse || len(r.Output) != 1 || len(r.Output[0].Content) != 1 || r.Output[0].Content[0].Text == "" {
		t.Fatalf("response %s", out)
	}
	if r.Usage.InputTokens != ch.Usage.PromptTokens {
		t.Errorf("input_tokens %d, the chat's prompt_tokens %d", r.Usage.InputTokens, ch.Usage.PromptTokens)
	}
	if r.Usage.InputTokensDetails.CachedTokens < r.Usage.InputTokens-16 {
		t.Errorf("cached_tokens %d of %d: the chat's prefix was not reused", r.Usage.InputTokensDetails.CachedTokens, r.Usage.InputTokens)
	}
	if r.Status != openai.ResponseStatusIncomplete || r.IncompleteDetails == nil || r.IncompleteDetails.Reason != openai.ResponseReasonMaxTokens {
		if r.Usage.OutputTokens == 4 {
			t.Errorf("cut at max_output_tokens but status %q %+v", r.Status, r.IncompleteDetails)
		}
	}

	b, _ := json.Marshal(map[string]any{"input": []map[string]any{{"role": "user", "content": []map[string]string{{"type": "input_text", "text": text}}}}, "stream": true, "max_output_tokens": 8})
	resp, err := c.Post("http://"+s.Addr()+"/v1/responses", "application/json", bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Fatalf("content-type %q", ct)
	}
	var types []string
	var deltas strings.Builder
	var final *openai.Response
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 1<<20)
	name := ""
	for sc.Scan() {
		line := sc.Text()
		if n, ok := strings.CutPrefix(line, "event: "); ok {
			name = n
			continue
		}
		data, ok := strings.CutPrefix(line, "data: ")
		if !ok {
			continue
		}
		var ev openai.ResponseEvent
		if err := json.Unmarshal([]byte(data), &ev); err != nil {
			t.Fatalf("event %q: %v", data, err)
		}
		if ev.Type != name || ev.SequenceNumber != len(types) {
			t.Errorf("event %q (named %q) has sequence_number %d, want %d", ev.Type, name, ev.SequenceNumber, len(types))
		}
		types = append(types, ev.Type)
		if ev.Delta != nil {
			deltas.WriteString(*ev.Delta)
		}
		if ev.Type == openai.EventResponseCompleted || ev.Type == openai.EventResponseIncomplete {
			final = ev.Response
		}
	}
	want := []string{openai.EventResponseCreated, openai.EventResponseInProgress, openai.EventOutputItemAdded, openai.EventContentPartAdded}
	if len(types) < 9 || !equalStrings(types[:4], want) || final == nil {
		t.Fatalf("events %v", types)
	}
	if got := final.Output[0].Content[0].Text; got != deltas.String() {
		t.Errorf("deltas %q, final text %q", deltas.String(), got)
	}
	if final.Usage == nil || final.Usage.InputTokens < 300 || final.Usage.OutputTokens < 1 || final.Usage.OutputTokens > 8 {
		t.Errorf("streamed usage %+v", final.Usage)
	}
}

func equalStrings(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// TestEmbeddings: one unit vector per input, the same for the same tokens, base64 the same
// floats, dimensions cutting them, and vLLM's refusals.
func TestEmbeddings(t *testing.T) {
	s := testServer(t, ServerConfig{})
	c := client(t)
	embed := func(body map[string]any) openai.EmbeddingResponse {
		t.Helper()
		code, out := post(t, c, s, "/v1/embeddings", body)
		if code != http.StatusOK {
			t.Fatalf("status %d: %s", code, out)
		}
		var r openai.EmbeddingResponse
		if err := json.Unmarshal(out, &r); err != nil {
			t.Fatal(err)
		}
		return r
	}
	ids := s.tok.Encode("hello world")
	r := embed(map[string]any{"input": []any{"hello world", "another text"}})
	if len(r.Data) != 2 || r.Usage.PromptTokens != len(ids)+len(s.tok.Encode("another text")) || r.Usage.TotalTokens != r.Usage.PromptTokens {
		t.Fatalf("response %+v", r)
	}
	v := floats(t, r.Data[0].Embedding)
	if len(v) != EmbeddingDim {
		t.Fatalf("%d dimensions", len(v))
	}
	var norm float64
	for _, x := range v {
		norm += x * x
	}
	if math.Abs(norm-1) > 1e-3 {
		t.Errorf("norm² %v, want 1", norm)
	}
	byIDs := floats(t, embed(map[string]any{"input": ids}).Data[0].Embedding)
	if byIDs[0] != v[0] || byIDs[EmbeddingDim-1] != v[EmbeddingDim-1] {
		t.Error("token ids and their text embed differently")
	}
	if other := floats(t, r.Data[1].Embedding); other[0] == v[0] && other[1] == v[1] {
		t.Error("two texts embed the same")
	}
	if cut := floats(t, embed(map[string]any{"input": "hello world", "dimensions": 8}).Data[0].Embedding); len(cut) != 8 {
		t.Errorf("dimensions 8: %d", len(cut))
	}
	b64 := embed(map[string]any{"input": "hello world", "encoding_format": "base64"})
	raw, err := base64.StdEncoding.DecodeString(b64.Data[0].Embedding.(string))
	if err != nil || len(raw) != EmbeddingDim*4 {
		t.Fatalf("base64 %v, %d bytes", err, len(raw))
	}
	if got := math.Float32frombits(binary.LittleEndian.Uint32(raw)); got != float32(v[0]) {
		t.Errorf("base64 first component %v, float %v", got, v[0])
	}
	for _, bad := range []map[string]any{
		{"input": "x", "model": "nope"},
		{"input": "x", "dimensions": EmbeddingDim + 1},
		{"input": strings.Repeat("word ", s.maxModelLen()+10)},
	} {
		if code, out := post(t, c, s, "/v1/embeddings", bad); code < 400 || !json.Valid(out) {
			t.Errorf("%v: status %d %s", bad, code, out)
		}
	}
}

func floats(t *testing.T, v any) []float64 {
	t.Helper()
	list, ok := v.([]any)
	if !ok {
		t.Fatalf("embedding %T", v)
	}
	out := make([]float64, len(list))
	for i, x := range list {
		out[i], _ = x.(float64)
	}
	return out
}
