package anthropic

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"io"
)

// Stream event names (the "event:" field, equal to the data's "type").
const (
	EventMessageStart      = "message_start"
	EventContentBlockStart = "content_block_start"
	EventContentBlockDelta = "content_block_delta"
	EventContentBlockStop  = "content_block_stop"
	EventMessageDelta      = "message_delta"
	EventMessageStop       = "message_stop"
	EventPing              = "ping"
	EventError             = "error"
)

// MaxEvent bounds one event's data in EventReader.
const MaxEvent = 16 << 20

// ErrEventTooLong is EventReader.Next's error for an event over MaxEvent bytes.
var ErrEventTooLong = errors.New("anthropic: SSE event too long")

// Event is one server-sent event of a Messages stream.
type Event struct {
	Name string // the event field; "" when absent
	Data []byte // the data lines joined with "\n"
}

// AppendEvent appends "event: name\ndata: data\n\n" to dst. data must be one line (JSON).
func AppendEvent(dst []byte, name string, data []byte) []byte {
	dst = append(dst, "event: "...)
	dst = append(dst, name...)
	dst = append(dst, "\ndata: "...)
	dst = append(dst, data...)
	return append(dst, "\n\n"...)
}

// ErrorEvent is the error event carrying e's message with typ, as Anthropic ends a stream
// that failed midway.
func ErrorEvent(typ, message string) []byte {
	b, err := json.Marshal(errorBody{Type: "error", Error: errorInner{Type: typ, Message: message}})
	if err != nil {
		b = []byte(`{"type":"error","error":{"type":"api_error","message":"internal error"}}`)
	}
	return AppendEvent(nil, EventError, b)
}

// EventReader reads the events of a stream: "event:" and "data:" fields (one optional space
// after the colon), dispatched at a blank line; comments, id and retry are skipped; lines end
// in "\n", "\r\n" or "\r". An event left unterminated at EOF is still returned. Not safe for
// concurrent use.
type EventReader struct {
	r     *bufio.Reader
	ev    Event
	has   bool
	ndata int  // data lines in the current event
	cr    bool // the last line ended in '\r': a following '\n' belongs to it
	line  []byte
}

// NewEventReader reads events from r.
func NewEventReader(r io.Reader) *EventReader {
	return &EventReader{r: bufio.NewReaderSize(r, 32<<10)}
}

// Next returns the next event (its Data valid until the next call), io.EOF at the end.
func (er *EventReader) Next() (Event, error) {
	for {
		line, err := er.readLine()
		if err != nil {
			if errors.Is(err, io.EOF) && er.has {
				er.has = false
				return er.ev, nil
			}
			return Event{}, err
		}
		if len(line) == 0 {
			if er.has {
				er.has = false
				return er.ev, nil
			}
			continue
		}
		if line[0] == ':' {
			continue
		}
		field, value, _ := bytes.Cut(line, []byte{':'})
		value = bytes.TrimPrefix(value, []byte{' '})
		if !er.has {
			er.ev, er.ndata = Event{Data: er.ev.Data[:0]}, 0
		}
		switch string(field) {
		case "event":
			er.ev.Name, er.has = string(value), true
		case "data":
			if er.ndata > 0 {
				er.ev.Data = append(er.ev.Data, '\n')
			}
			if len(er.ev.Data)+len(value) > MaxEvent {
				return Event{}, ErrEventTooLong
			}
			er.ev.Data = append(er.ev.Data, value...)
			er.has = true
			er.ndata++
		}
	}
}

func (er *EventReader) readLine() ([]byte, error) {
	er.line = er.line[:0]
	for {
		c, err := er.r.ReadByte()
		if err != nil {
			if errors.Is(err, io.EOF) && len(er.line) > 0 {
				return er.line, nil
			}
			return nil, err
		}
		if er.cr {
			er.cr = false
			if c == '\n' {
				continue
			}
		}
		switch c {
		case '\n':
			return er.line, nil
		case '\r':
			er.cr = true
			return er.line, nil
		}
		if len(er.line) >= MaxEvent {
			return nil, ErrEventTooLong
		}
		er.line = append(er.line, c)
	}
}
