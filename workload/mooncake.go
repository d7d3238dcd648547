package workload

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"time"
)

// MooncakeBlockTokens is the number of prompt tokens one Mooncake hash id stands for.
const MooncakeBlockTokens = 512

// maxMooncakeLine bounds one trace line (the longest prompt in the published trace has a few
// hundred hash ids).
const maxMooncakeLine = 16 << 20

type mooncakeLine struct {
	Timestamp    *float64 `json:"timestamp"`
	InputLength  *int     `json:"input_length"`
	OutputLength *int     `json:"output_length"`
	HashIDs      []int    `json:"hash_ids"`
}

// ReadMooncake parses a trace in the Mooncake format: one JSON object a line with
// timestamp (ms), input_length, output_length and hash_ids (one per 512-token block). Each hash
// id becomes a fixed, distinct 512-token block, so equal ids give equal tokens; the last block
// is cut to input_length.
func ReadMooncake(r io.Reader) (*Trace, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), maxMooncakeLine)
	t := &Trace{Name: "mooncake"}
	line := 0
	for sc.Scan() {
		line++
		b := sc.Bytes()
		if len(trimSpace(b)) == 0 {
			continue
		}
		var m mooncakeLine
		if err := json.Unmarshal(b, &m); err != nil {
			return nil, fmt.Errorf("mooncake trace line %d: %w", line, err)
		}
		req, err := m.request(len(t.Requests))
		if err != nil {
			return nil, fmt.Errorf("mooncake trace line %d: %w", line, err)
		}
		t.Requests = append(t.Requests, req)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("mooncake trace line %d: %w", line+1, err)
	}
	if len(t.Requests) == 0 {
		return nil, fmt.Errorf("mooncake trace: no requests")
	}
	return t, nil
}

func (m *mooncakeLine) request(id int) (Request, error) {
	switch {
	case m.Timestamp == nil:
		return Request{}, fmt.Errorf("missing timestamp")
	case m.InputLength == nil:
		return Request{}, fmt.Errorf("missing input_length")
	case m.OutputLength == nil:
		return Request{}, fmt.Errorf("missing output_length")
	case *m.Timestamp < 0 || *m.Timestamp > 1e12:
		return Request{}, fmt.Errorf("timestamp %v out of range", *m.Timestamp)
	case *m.InputLength < 1:
		return Request{}, fmt.Errorf("input_length %d must be >= 1", *m.InputLength)
	case *m.OutputLength < 0:
		return Request{}, fmt.Errorf("output_length %d must be >= 0", *m.OutputLength)
	}
	n := *m.InputLength
	if need := (n + MooncakeBlockTokens - 1) / MooncakeBlockTokens; len(m.HashIDs) != need {
		return Request{}, fmt.Errorf("input_length %d needs %d hash_ids, got %d", n, need, len(m.HashIDs))
	}
	req := Request{
		ID:           id,
		Arrival:      time.Duration(*m.Timestamp * float64(time.Millisecond)),
		InputLength:  n,
		OutputLength: *m.OutputLength,
		Session:      -1,
		HashIDs:      m.HashIDs,
		segments:     make([]segment, 0, len(m.HashIDs)),
	}
	left := n
	for _, h := range m.HashIDs {
		if h < 0 {
			return Request{}, fmt.Errorf("negative hash id %d", h)
		}
		k := min(left, MooncakeBlockTokens)
		req.segments = append(req.segments, segment{seed: mooncakeSeed(h), n: k})
		left -= k
	}
	return req, nil
}

// mooncakeSeed keeps Mooncake block streams apart from the synthetic generator's.
func mooncakeSeed(h int) uint64 { return uint64(h)<<1 | 1 }

func trimSpace(b []byte) []byte {
	for len(b) > 0 && (b[0] == ' ' || b[0] == '\t' || b[0] == '\r' || b[0] == '\n') {
		b = b[1:]
	}
	for len(b) > 0 && (b[len(b)-1] == ' ' || b[len(b)-1] == '\t' || b[len(b)-1] == '\r' || b[len(b)-1] == '\n') {
		b = b[:len(b)-1]
	}
	return b
}

// ReadFile reads a trace file in the Mooncake format.
func ReadFile(path string) (*Trace, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	t, err := ReadMooncake(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return t, nil
}
