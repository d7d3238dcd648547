package sim

import (
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/http"
	"strconv"
	"time"

	"github.com/kvgate/kvgate/openai"
)

// handleResponses serves /v1/responses as vLLM does for a text model: the input converted to
// chat messages (openai.ResponsesRequest.ChatMessages), rendered with the chat template and
// run like a chat completion (same prefix cache), answered as a response object or as the
// Responses stream events.
func (s *Server) handleResponses(w http.ResponseWriter, r *http.Request) {
	body, err := openai.ReadBody(r.Body, s.cfg.MaxBodyBytes)
	if err != nil {
		openai.WriteError(w, err)
		return
	}
	req, err := openai.ParseResponsesRequest(body)
	if err != nil {
		openai.WriteError(w, err)
		return
	}
	lora, err := s.checkModel(req.Model)
	if err != nil {
		openai.WriteError(w, err)
		return
	}
	msgs, tools, err := req.ChatMessages()
	if errors.Is(err, openai.ErrUnrenderable) {
		openai.WriteError(w, openai.BadRequest("input", "The simulator serves text input and function tools only: %v.", err))
		return
	}
	if err != nil {
		openai.WriteError(w, err)
		return
	}
	text, err := s.renderChat(msgs, tools, true, nil)
	if err != nil {
		openai.WriteError(w, err)
		return
	}
	g := generation{chat: true, model: s.responseModel(req.Model), lora: lora, prompts: [][]uint32{s.tok.Encode(text)}, n: 1,
		stream: req.Stream, includeUsage: true}
	if req.MaxOutputTokens != nil {
		g.maxTokens = *req.MaxOutputTokens
	}
	if req.CacheSalt != nil {
		g.cacheSalt = *req.CacheSalt
	}
	g.answer = func(sw *streamWriter) answerWriter { return &responsesWriter{sw: sw, req: req} }
	s.generate(w, r, g)
}

// responsesWriter writes a generation as a Responses response: one output message with one
// output_text part.
type responsesWriter struct {
	sw  *streamWriter
	req *openai.ResponsesRequest
	seq int
}

var _ answerWriter = (*responsesWriter)(nil)

func (rw *responsesWriter) respID() string { return "resp_" + rw.sw.id }
func (rw *responsesWriter) itemID() string { return "msg_" + rw.sw.id }

// response is the response object with the text so far; status in_progress until c ends.
func (rw *responsesWriter) response(choices []*choice, done bool) *openai.Response {
	resp := &openai.Response{ID: rw.respID(), Object: openai.ObjectResponse, CreatedAt: rw.sw.created,
		Status: openai.ResponseStatusInProgress, Model: rw.sw.g.model, Output: []openai.OutputMessage{},
		Error: json.RawMessage("null"), Instructions: rw.req.Instructions, MaxOutputTokens: rw.req.MaxOutputTokens,
		ParallelToolCalls: true, ToolChoice: json.RawMessage(`"auto"`), Tools: json.RawMessage("[]")}
	if rw.req.ToolChoice != nil {
		resp.ToolChoice = rw.req.ToolChoice
	}
	if rw.req.Tools != nil {
		resp.Tools = rw.req.Tools
	}
	if !done {
		return resp
	}
	c := choices[0]
	resp.Status = openai.ResponseStatusCompleted
	if c.finish == "length" {
		resp.Status = openai.ResponseStatusIncomplete
		resp.IncompleteDetails = &struct {
			Reason string `json:"reason"`
		}{openai.ResponseReasonMaxTokens}
	}
	resp.Output = []openai.OutputMessage{rw.item(string(c.text), openai.ResponseStatusCompleted)}
	u := usage(choices)
	resp.Usage = &openai.ResponsesUsage{InputTokens: u.PromptTokens, OutputTokens: u.CompletionTokens, TotalTokens: u.TotalTokens,
		InputTokensDetails: openai.InputTokensDetails{CachedTokens: u.CachedTokens()}}
	return resp
}

func (rw *responsesWriter) item(text, status string) openai.OutputMessage {
	it := openai.OutputMessage{Type: openai.ResponseOutputTypeMessage, ID: rw.itemID(), Status: status, Role: "assistant", Content: []openai.OutputText{}}
	if status == openai.ResponseStatusCompleted {
		it.Content = []openai.OutputText{rw.part(text)}
	}
	return it
}

func (rw *responsesWriter) part(text string) openai.OutputText {
	return openai.OutputText{Type: openai.ResponseContentOutputText, Text: text, Annotations: []json.RawMessage{}}
}

// send writes one event "event: <type>" with its sequence number.
func (rw *responsesWriter) send(ev openai.ResponseEvent) error {
	sw := rw.sw
	if sw.err != nil {
		return sw.err
	}
	ev.SequenceNumber = rw.seq
	rw.seq++
	b, err := json.Marshal(ev)
	if err != nil {
		sw.err = err
		return err
	}
	if _, sw.err = fmt.Fprintf(sw.w, "event: %s\n", ev.Type); sw.err != nil {
		return sw.err
	}
	sw.err = openai.WriteSSE(sw.w, b)
	return sw.err
}

func (rw *responsesWriter) start(choices []*choice) {
	h := rw.sw.w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	rw.sw.w.WriteHeader(http.StatusOK)
	zero := 0
	item := rw.item("", openai.ResponseStatusInProgress)
	part := rw.part("")
	_ = rw.send(openai.ResponseEvent{Type: openai.EventResponseCreated, Response: rw.response(choices, false)})
	_ = rw.send(openai.ResponseEvent{Type: openai.EventResponseInProgress, Response: rw.response(choices, false)})
	_ = rw.send(openai.ResponseEvent{Type: openai.EventOutputItemAdded, OutputIndex: &zero, Item: &item})
	_ = rw.send(openai.ResponseEvent{Type: openai.EventContentPartAdded, OutputIndex: &zero, ContentIndex: &zero, ItemID: rw.itemID(), Part: &part})
}

func (rw *responsesWriter) token(c *choice, safe int, _ []*choice) error {
	if c.finish != "" {
		safe = len(c.text)
	}
	if safe <= c.emitted {
		return rw.sw.err
	}
	delta := string(c.text[c.emitted:safe])
	c.emitted = safe
	zero := 0
	return rw.send(openai.ResponseEvent{Type: openai.EventOutputTextDelta, OutputIndex: &zero, ContentIndex: &zero,
		ItemID: rw.itemID(), Delta: &delta, Logprobs: []any{}})
}

func (rw *responsesWriter) finish(choices []*choice) {
	zero := 0
	text := string(choices[0].text)
	part := rw.part(text)
	item := rw.item(text, openai.ResponseStatusCompleted)
	_ = rw.send(openai.ResponseEvent{Type: openai.EventOutputTextDone, OutputIndex: &zero, ContentIndex: &zero, ItemID: rw.itemID(), Text: &text, Logprobs: []any{}})
	_ = rw.send(openai.ResponseEvent{Type: openai.EventContentPartDone, OutputIndex: &zero, ContentIndex: &zero, ItemID: rw.itemID(), Part: &part})
	_ = rw.send(openai.ResponseEvent{Type: openai.EventOutputItemDone, OutputIndex: &zero, Item: &item})
	resp := rw.response(choices, true)
	typ := openai.EventResponseCompleted
	if resp.Status == openai.ResponseStatusIncomplete {
		typ = openai.EventResponseIncomplete
	}
	_ = rw.send(openai.ResponseEvent{Type: typ, Response: resp})
}

func (rw *responsesWriter) whole(choices []*choice) {
	writeJSON(rw.sw.w, http.StatusOK, rw.response(choices, true))
}

// EmbeddingDim is the length of the simulator's embedding vectors (before a request's
// dimensions cuts them).
const EmbeddingDim = 384

// handleEmbeddings serves /v1/embeddings: one deterministic unit vector per input, a function
// of its token ids alone, so equal inputs embed equally on every simulated engine. Nothing is
// generated and no KV cache is used.
func (s *Server) handleEmbeddings(w http.ResponseWriter, r *http.Request) {
	body, err := openai.ReadBody(r.Body, s.cfg.MaxBodyBytes)
	if err != nil {
		openai.WriteError(w, err)
		return
	}
	req, err := openai.ParseEmbeddingRequest(body)
	if err != nil {
		openai.WriteError(w, err)
		return
	}
	if _, err := s.checkModel(req.Model); err != nil {
		openai.WriteError(w, err)
		return
	}
	inputs := req.Input.Tokens
	for _, t := range req.Input.Texts {
		inputs = append(inputs, s.tok.Encode(t))
	}
	dim := EmbeddingDim
	if req.Dimensions != nil {
		if *req.Dimensions > EmbeddingDim {
			openai.WriteError(w, openai.BadRequest("dimensions", "Invalid value for 'dimensions': the model's embeddings have %d dimensions, got %d.", EmbeddingDim, *req.Dimensions))
			return
		}
		dim = *req.Dimensions
	}
	resp := openai.EmbeddingResponse{ID: "embd-sim-" + strconv.FormatUint(s.seq.Add(1), 36), Object: openai.ObjectList,
		Created: time.Now().Unix(), Model: s.responseModel(req.Model)}
	maxLen := s.maxModelLen()
	for i, ids := range inputs {
		if len(ids) == 0 {
			openai.WriteError(w, openai.BadRequest("input", "Invalid value for 'input': input %d is empty.", i))
			return
		}
		if len(ids) > maxLen {
			openai.WriteError(w, openai.BadRequest("input", "This model's maximum context length is %d tokens. However, you requested %d tokens in the input for embedding generation. Please reduce the length of the input.", maxLen, len(ids)))
			return
		}
		v := embed(ids, dim)
		e := openai.Embedding{Object: openai.ObjectEmbedding, Index: i, Embedding: v}
		if req.EncodingFormat == openai.EncodingBase64 {
			e.Embedding = base64Floats(v)
		}
		resp.Data = append(resp.Data, e)
		resp.Usage.PromptTokens += len(ids)
	}
	resp.Usage.TotalTokens = resp.Usage.PromptTokens
	writeJSON(w, http.StatusOK, resp)
}

// embed is a deterministic unit vector of dim components drawn from a seed of the token ids.
func embed(ids []uint32, dim int) []float32 {
	seed := promptSeed(ids, 0)
	v := make([]float32, dim)
	var norm float64
	for i := range v {
		x := float64(int64(splitmix(seed+uint64(i)))) / math.MaxInt64
		v[i] = float32(x)
		norm += x * x
	}
	if norm = math.Sqrt(norm); norm > 0 {
		for i := range v {
			v[i] = float32(float64(v[i]) / norm)
		}
	}
	return v
}

// base64Floats is v as little-endian float32 bytes in base64 (encoding_format base64).
func base64Floats(v []float32) string {
	b := make([]byte, 4*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(x))
	}
	return base64.StdEncoding.EncodeToString(b)
}
