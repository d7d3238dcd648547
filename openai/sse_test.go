package openai_test

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/kvgate/kvgate/openai"
)

func readAll(t *testing.T, r io.Reader) ([]string, error) {
	t.Helper()
	s := openai.NewSSEReader(r)
	var out []string
	for {
		d, err := s.Next()
		if err != nil {
			if errors.Is(err, io.EOF) {
				return out, nil
			}
			return out, err
		}
		out = append(out, string(d))
	}
}

func TestSSEReader(t *testing.T) {
	tests := []struct {
		name, in string
		want     []string
	}{
		{"openai stream", "data: {\"a\":1}\n\ndata: [DONE]\n\n", []string{`{"a":1}`, "[DONE]"}},
		{"crlf", "data: x\r\n\r\ndata: y\r\n\r\n", []string{"x", "y"}},
		{"lone cr", "data: x\r\rdata: y\r\r", []string{"x", "y"}},
		{"no space", "data:x\n\n", []string{"x"}},
		{"two spaces keep one", "data:  x\n\n", []string{" x"}},
		{"multi-line", "data: a\ndata: b\n\n", []string{"a\nb"}},
		{"comments and fields", ": keepalive\nevent: message\nid: 3\nretry: 10\ndata: x\n\n", []string{"x"}},
		{"field without colon", "data\n\n", []string{""}},
		{"blank lines only", "\n\n\n", nil},
		{"event without data", "event: ping\n\n", nil},
		{"unterminated at eof", "data: tail", []string{"tail"}},
		{"empty", "", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// One byte at a time, so that events straddle reads.
			got, err := readAll(t, iotest.OneByteReader(strings.NewReader(tt.in)))
			if err != nil {
				t.Fatal(err)
			}
			if fmt.Sprint(got) != fmt.Sprint(tt.want) || len(got) != len(tt.want) {
				t.Errorf("got %q, want %q", got, tt.want)
			}
		})
	}
}

func TestSSEReaderLongAndTooLong(t *testing.T) {
	long := strings.Repeat("x", 100<<10) // longer than the reader's buffer
	got, err := readAll(t, strings.NewReader("data: "+long+"\n\ndata: [DONE]\n\n"))
	if err != nil || len(got) != 2 || got[0] != long {
		t.Fatalf("long event: %d events, %v", len(got), err)
	}
	huge := strings.NewReader("data: " + strings.Repeat("y", openai.MaxSSEEvent+10) + "\n\n")
	if _, err := readAll(t, huge); !errors.Is(err, openai.ErrSSETooLong) {
		t.Fatalf("huge event: %v", err)
	}
}

func TestSSEReaderPropagatesErrors(t *testing.T) {
	boom := errors.New("boom")
	r := io.MultiReader(strings.NewReader("data: a\n\n"), iotest.ErrReader(boom))
	got, err := readAll(t, r)
	if !errors.Is(err, boom) || len(got) != 1 {
		t.Fatalf("got %q %v", got, err)
	}
}

// TestSSEOverHTTP writes events with WriteSSE from a real HTTP handler and reads them back
// with SSEReader from the streamed response, event by event as they are flushed.
func TestSSEOverHTTP(t *testing.T) {
	events := []string{`{"id":"1","choices":[]}`, "line1\nline2", `{"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}`}
	next := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		for _, e := range events {
			if err := openai.WriteSSE(w, []byte(e)); err != nil {
				return
			}
			<-next // the client must see this event before the next is written
		}
		_ = openai.WriteSSEDone(w)
	}))
	defer srv.Close()
	resp, err := http.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	r := openai.NewSSEReader(resp.Body)
	for i, want := range events {
		got, err := r.Next()
		if err != nil || string(got) != want {
			t.Fatalf("event %d = %q %v, want %q", i, got, err, want)
		}
		if i == len(events)-1 {
			u, ok := openai.UsageFromChunk(got)
			if !ok || u.TotalTokens != 5 {
				t.Errorf("usage %+v %v", u, ok)
			}
		}
		next <- struct{}{}
	}
	if d, err := r.Next(); err != nil || string(d) != openai.Done {
		t.Fatalf("done = %q %v", d, err)
	}
	if _, err := r.Next(); !errors.Is(err, io.EOF) {
		t.Fatalf("after done: %v", err)
	}
}

func TestUsageFrom(t *testing.T) {
	tests := []struct {
		name, in     string
		ok           bool
		total, cache int
	}{
		{"body", `{"id":"x","choices":[],"usage":{"prompt_tokens":10,"completion_tokens":2,"total_tokens":12,"prompt_tokens_details":{"cached_tokens":8}}}`, true, 12, 8},
		{"details null", `{"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2,"prompt_tokens_details":null}}`, true, 2, 0},
		{"usage null", `{"choices":[{"delta":{"content":"usage"}}],"usage":null}`, false, 0, 0},
		{"no usage", `{"choices":[]}`, false, 0, 0},
		{"done", `[DONE]`, false, 0, 0},
		{"garbage", `{"usage":`, false, 0, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			u, ok := openai.UsageFromBody([]byte(tt.in))
			if ok != tt.ok {
				t.Fatalf("ok = %v", ok)
			}
			if ok && (u.TotalTokens != tt.total || u.CachedTokens() != tt.cache) {
				t.Errorf("usage %+v", u)
			}
		})
	}
}
