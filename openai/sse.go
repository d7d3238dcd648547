package openai

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net/http"
)

// MaxSSEEvent bounds one event's data; a longer event is an error rather than unbounded memory.
const MaxSSEEvent = DefaultMaxBodyBytes

// ErrSSETooLong is returned by SSEReader.Next for an event over MaxSSEEvent bytes.
var ErrSSETooLong = errors.New("openai: SSE event too long")

// Done is the data of the event that ends an OpenAI stream.
const Done = "[DONE]"

// SSEReader reads the data of server-sent events: "data:" lines (one optional space after the
// colon), several joined with "\n", dispatched at a blank line; comments and the event, id
// and retry fields are skipped. Lines may end in "\n", "\r\n" or "\r". Not safe for
// concurrent use.
type SSEReader struct {
	r       *bufio.Reader
	data    []byte
	hasData bool
	pending [][]byte // lines split out of one read at lone '\r's
	err     error
}

// NewSSEReader reads events from r.
func NewSSEReader(r io.Reader) *SSEReader {
	return &SSEReader{r: bufio.NewReaderSize(r, 32<<10)}
}

// Next returns the next event's data (valid until the next call), io.EOF at the end of the
// stream. "[DONE]" is returned as is. An event left unterminated at EOF is still returned.
func (s *SSEReader) Next() ([]byte, error) {
	for {
		line, err := s.line()
		if err != nil {
			if errors.Is(err, io.EOF) && s.hasData {
				s.hasData = false
				return s.data, nil
			}
			return nil, err
		}
		if len(line) == 0 {
			if s.hasData {
				s.hasData = false
				return s.data, nil
			}
			continue
		}
		if line[0] == ':' {
			continue
		}
		field, value, ok := bytes.Cut(line, []byte{':'})
		if ok && len(value) > 0 && value[0] == ' ' {
			value = value[1:]
		}
		if string(field) != "data" {
			continue
		}
		if !s.hasData {
			s.data = s.data[:0]
			s.hasData = true
		} else {
			s.data = append(s.data, '\n')
		}
		if len(s.data)+len(value) > MaxSSEEvent {
			s.err = ErrSSETooLong
			return nil, s.err
		}
		s.data = append(s.data, value...)
	}
}

// line returns the next line without its terminator.
func (s *SSEReader) line() ([]byte, error) {
	if len(s.pending) > 0 {
		l := s.pending[0]
		s.pending = s.pending[1:]
		return l, nil
	}
	if s.err != nil {
		return nil, s.err
	}
	var buf []byte
	for {
		chunk, err := s.r.ReadSlice('\n')
		if len(buf)+len(chunk) > MaxSSEEvent+64 {
			s.err = ErrSSETooLong
			return nil, s.err
		}
		if errors.Is(err, bufio.ErrBufferFull) {
			buf = append(buf, chunk...)
			continue
		}
		if buf != nil {
			buf = append(buf, chunk...)
			chunk = buf
		}
		if err != nil {
			s.err = err
			if len(chunk) == 0 {
				return nil, err
			}
		}
		chunk = bytes.TrimSuffix(chunk, []byte{'\n'})
		chunk = bytes.TrimSuffix(chunk, []byte{'\r'})
		if bytes.IndexByte(chunk, '\r') < 0 {
			return chunk, nil
		}
		parts := bytes.Split(chunk, []byte{'\r'})
		s.pending = append(s.pending, parts[1:]...)
		return parts[0], nil
	}
}

// WriteSSE writes one event "data: <data>\n\n" (a data line per line of data) and flushes w
// when it is an http.Flusher.
func WriteSSE(w io.Writer, data []byte) error {
	var buf bytes.Buffer
	buf.Grow(len(data) + 8)
	for {
		line, rest, more := bytes.Cut(data, []byte{'\n'})
		buf.WriteString("data: ")
		buf.Write(bytes.TrimSuffix(line, []byte{'\r'}))
		buf.WriteByte('\n')
		if !more {
			break
		}
		data = rest
	}
	buf.WriteByte('\n')
	if _, err := w.Write(buf.Bytes()); err != nil {
		return err
	}
	if f, ok := w.(http.Flusher); ok {
		f.Flush()
	}
	return nil
}

// WriteSSEDone writes the "data: [DONE]" event that ends an OpenAI stream.
func WriteSSEDone(w io.Writer) error { return WriteSSE(w, []byte(Done)) }
