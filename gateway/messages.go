package gateway

import (
	"bytes"
	"net/http"
	"strconv"
	"strings"

	"github.com/kvgate/kvgate/anthropic"
)

// messages serves Anthropic's /v1/messages with the completion handler next (the request is
// routed like a chat and proxied to the engine's own /v1/messages): every error answer the
// gateway or the engine gives in OpenAI's shape reaches the client in Anthropic's, and so
// does the error event that ends a stream cut midway. Migration does not apply (newMigration
// knows only OpenAI streams).
func messages(next http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		mw := &messagesWriter{w: w}
		next(mw, r) // a cut response panics with http.ErrAbortHandler past this: nothing to finish
		mw.finish()
	}
}

// maxErrorBody bounds an error body held for conversion; a longer one goes out as it is.
const maxErrorBody = 1 << 20

// messagesWriter converts error answers to Anthropic's shape on their way to w.
type messagesWriter struct {
	w       http.ResponseWriter
	status  int
	holding bool // an error body is held for conversion
	sse     bool
	buf     []byte
}

var _ http.Flusher = (*messagesWriter)(nil)

func (m *messagesWriter) Header() http.Header { return m.w.Header() }

// Unwrap lets http.ResponseController reach the connection (read deadlines).
func (m *messagesWriter) Unwrap() http.ResponseWriter { return m.w }

func (m *messagesWriter) WriteHeader(status int) {
	if m.status != 0 {
		return
	}
	m.status = status
	ct := m.w.Header().Get("Content-Type")
	if status >= 400 && !strings.HasPrefix(ct, "text/event-stream") {
		m.holding = true
		return
	}
	m.sse = strings.HasPrefix(ct, "text/event-stream")
	m.w.WriteHeader(status)
}

func (m *messagesWriter) Write(p []byte) (int, error) {
	if m.status == 0 {
		m.WriteHeader(http.StatusOK)
	}
	if m.holding {
		if len(m.buf)+len(p) <= maxErrorBody {
			m.buf = append(m.buf, p...)
			return len(p), nil
		}
		m.holding = false // too long to convert: it goes as it came
		m.w.WriteHeader(m.status)
		if _, err := m.w.Write(m.buf); err != nil {
			return 0, err
		}
	}
	if m.sse {
		if ev, ok := cutEvent(p); ok {
			if _, err := m.w.Write(ev); err != nil {
				return 0, err
			}
			return len(p), nil
		}
	}
	return m.w.Write(p)
}

func (m *messagesWriter) Flush() {
	if !m.holding {
		_ = http.NewResponseController(m.w).Flush()
	}
}

// finish writes a held error body, converted.
func (m *messagesWriter) finish() {
	if !m.holding {
		return
	}
	body := anthropic.ConvertErrorBody(m.status, m.buf)
	m.w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	m.w.WriteHeader(m.status)
	_, _ = m.w.Write(body)
}

var openaiErrorEvent = []byte(`data: {"error":`)

// cutEvent converts the error event the gateway writes into a stream it cuts (errorEvent:
// blank lines that end the engine's partial event, then one OpenAI error as data) into
// Anthropic's error event. ok is false for anything else.
func cutEvent(p []byte) ([]byte, bool) {
	data := bytes.TrimLeft(p, "\r\n")
	if !bytes.HasPrefix(data, openaiErrorEvent) {
		return nil, false
	}
	lead := p[:len(p)-len(data)]
	data = bytes.TrimSpace(bytes.TrimPrefix(data, []byte("data:")))
	status := http.StatusBadGateway
	body := anthropic.ConvertErrorBody(status, data)
	return anthropic.AppendEvent(append([]byte{}, lead...), anthropic.EventError, body), true
}
