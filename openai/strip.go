package openai

import (
	"bytes"
	"encoding/json"
)

// maxPendingEvent bounds how much of one unfinished SSE event UsageStripper holds; a longer
// event is passed on as it comes.
const maxPendingEvent = 1 << 20

// UsageStripper removes the usage-only chunk (no choices, a usage object) from an SSE stream
// whose client did not ask for it (the router forced stream_options.include_usage to account
// the request). Every other event passes on as soon as its terminating blank line arrives.
type UsageStripper struct {
	pending  []byte
	passThru bool // the current event overflowed maxPendingEvent
}

// Write takes the next piece of the stream and returns what may go on now.
func (s *UsageStripper) Write(p []byte) []byte {
	var out []byte
	for len(p) > 0 {
		if s.passThru {
			i, n := eventEnd(p)
			if i < 0 {
				return append(out, p...)
			}
			out = append(out, p[:i+n]...)
			p = p[i+n:]
			s.passThru = false
			continue
		}
		s.pending = append(s.pending, p...)
		p = nil
		for {
			i, n := eventEnd(s.pending)
			if i < 0 {
				break
			}
			if ev := s.pending[:i+n]; !usageOnly(ev) {
				out = append(out, ev...)
			}
			s.pending = s.pending[i+n:]
		}
		if len(s.pending) > maxPendingEvent {
			out = append(out, s.pending...)
			s.pending, s.passThru = nil, true
		}
	}
	if len(s.pending) == 0 {
		s.pending = nil
	}
	return out
}

// Flush returns what is left at the end of the stream.
func (s *UsageStripper) Flush() []byte {
	out := s.pending
	s.pending = nil
	if usageOnly(out) {
		return nil
	}
	return out
}

// eventEnd finds the blank line that ends the first event of b: its index and length, or
// -1 when b holds no complete event.
func eventEnd(b []byte) (int, int) {
	i := bytes.Index(b, []byte("\n\n"))
	j := bytes.Index(b, []byte("\r\n\r\n"))
	switch {
	case j >= 0 && (i < 0 || j < i):
		return j, 4
	case i >= 0:
		return i, 2
	}
	return -1, 0
}

// usageOnly reports whether ev is one SSE event whose data is a chunk with an empty choices
// list and a usage object.
func usageOnly(ev []byte) bool {
	var data []byte
	for _, line := range bytes.Split(ev, []byte("\n")) {
		line = bytes.TrimSuffix(line, []byte("\r"))
		if d, ok := bytes.CutPrefix(line, []byte("data:")); ok {
			data = append(data, bytes.TrimPrefix(d, []byte(" "))...)
		}
	}
	if !bytes.Contains(data, []byte(`"usage"`)) {
		return false
	}
	var chunk struct {
		Choices []json.RawMessage `json:"choices"`
		Usage   json.RawMessage   `json:"usage"`
	}
	if json.Unmarshal(data, &chunk) != nil {
		return false
	}
	return len(chunk.Choices) == 0 && len(chunk.Usage) > 0 && string(chunk.Usage) != "null"
}
