package router

import (
	"github.com/kvgate/kvgate/anthropic"
	"github.com/kvgate/kvgate/openai"
	"github.com/kvgate/kvgate/tokenizer"
)

// messagesPrompt fills p from an Anthropic Messages body (/v1/messages): it parses and
// validates it, converts it to chat messages as vLLM's Anthropic server does, and renders and
// tokenizes them with the model's chat template, so the overlap is computed on the tokens the
// engine will see. It reports whether the request streams. Errors are *openai.Error; the
// front door writes them in Anthropic's shape.
func (r *Router) messagesPrompt(body []byte, p *Prompt) (stream bool, err error) {
	mr, err := anthropic.Parse(body)
	if err != nil {
		return false, err
	}
	model, err := r.resolveModel(mr.Model)
	if err != nil {
		return false, err
	}
	p.Model = model
	chat, err := mr.ToChat()
	if err != nil {
		return false, openai.BadRequest("messages", "The messages cannot be converted: %v", err)
	}
	tok := r.tokenizer(model)
	if tok == nil {
		p.Text = string(chat.Messages)
		return mr.Stream, nil
	}
	text, err := tok.RenderChat(tokenizer.ChatInput{Messages: chat.Messages, Tools: chat.Tools, AddGenerationPrompt: true})
	if err != nil {
		return false, openai.BadRequest("messages", "The chat template cannot render these messages: %v", err)
	}
	if err := r.checkTextLen(tok, model, text); err != nil {
		return false, err
	}
	p.Text, p.Tokens = text, tok.Encode(text)
	if err := r.checkTokens(model, len(p.Tokens), mr.MaxTokens, true); err != nil {
		return false, err
	}
	return mr.Stream, nil
}
