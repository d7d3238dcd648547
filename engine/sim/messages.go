package sim

import (
	"bytes"
	"io"
	"net/http"

	"github.com/kvgate/kvgate/anthropic"
	"github.com/kvgate/kvgate/openai"
)

// handleMessages answers Anthropic's /v1/messages as vLLM does: the request is converted to
// a chat completion (anthropic.Request.ToChat) and served by the chat handler, whose answer
// is converted back (a message with text blocks, stop_reason and usage, or the event stream);
// the prefix cache is the chat's. Errors are in Anthropic's shape.
func (s *Server) handleMessages(w http.ResponseWriter, r *http.Request) {
	body, err := openai.ReadBody(r.Body, s.cfg.MaxBodyBytes)
	if err != nil {
		anthropic.WriteError(w, err)
		return
	}
	req, err := anthropic.Parse(body)
	if err != nil {
		anthropic.WriteError(w, err)
		return
	}
	chat, err := req.ToChat()
	if err != nil {
		anthropic.WriteError(w, openai.BadRequest("messages", "%v", err))
		return
	}
	cr := r.Clone(r.Context())
	cr.Body = io.NopCloser(bytes.NewReader(chat.Body))
	cr.ContentLength = int64(len(chat.Body))
	cw := anthropic.NewChatWriter(w)
	s.handleChat(cw, cr)
	cw.Close()
}
