package openai

import (
	"bytes"
)

// BodyWatcher reads a response body as it streams past: it reports the first data event of
// an SSE stream (the first token) and finds the usage, in the final chunk of a stream or in
// a whole JSON body. It keeps at most limit bytes.
type BodyWatcher struct {
	sse      bool
	limit    int
	buf      []byte // SSE: the current partial line; JSON: the body so far
	skipping bool   // SSE: the current line overflowed limit and is being dropped
	overflow bool   // JSON: the body passed limit, usage unknown
	data     bool   // SSE: a data event was seen
	usage    *Usage
}

func NewBodyWatcher(sse bool, limit int) *BodyWatcher {
	return &BodyWatcher{sse: sse, limit: limit}
}

// Write feeds the next piece of the body. It returns true the first time the body shows a
// token: the first SSE data event, or the first byte of a non-streamed body.
func (w *BodyWatcher) Write(p []byte) (first bool) {
	if len(p) == 0 {
		return false
	}
	if !w.sse {
		first = !w.data
		w.data = true
		if w.overflow {
			return first
		}
		if len(w.buf)+len(p) > w.limit {
			w.overflow, w.buf = true, nil
			return first
		}
		w.buf = append(w.buf, p...)
		return first
	}
	for len(p) > 0 {
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			w.appendLine(p)
			return first
		}
		w.appendLine(p[:i])
		p = p[i+1:]
		if !w.skipping && w.line(bytes.TrimSuffix(w.buf, []byte("\r"))) {
			first = true
		}
		w.buf, w.skipping = w.buf[:0], false
	}
	return first
}

func (w *BodyWatcher) appendLine(p []byte) {
	if w.skipping {
		return
	}
	if len(w.buf)+len(p) > w.limit {
		w.skipping, w.buf = true, w.buf[:0]
		return
	}
	w.buf = append(w.buf, p...)
}

// line handles one complete SSE line and reports whether it was the first data event.
func (w *BodyWatcher) line(l []byte) bool {
	data, ok := bytes.CutPrefix(l, []byte("data:"))
	if !ok {
		return false
	}
	data = bytes.TrimPrefix(data, []byte(" "))
	if len(data) == 0 || string(data) == "[DONE]" {
		return false
	}
	if !w.data && responsesPreamble(data) { // a Responses stream's opening events carry no token
		return false
	}
	first := !w.data
	w.data = true
	if u, ok := usageOfEvent(data, w.usage); ok {
		w.usage = u
	}
	return first
}

// Close ends the body and returns its usage, nil when none was seen.
func (w *BodyWatcher) Close() *Usage {
	if w.sse {
		if !w.skipping && len(w.buf) > 0 {
			w.line(bytes.TrimSuffix(w.buf, []byte("\r")))
			w.buf = w.buf[:0]
		}
		return w.usage
	}
	if w.overflow || len(w.buf) == 0 {
		return nil
	}
	u, _ := usageOfEvent(w.buf, nil)
	return u
}
