package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestChat drives runChat against a fake OpenAI server: the reply streams to the output, the
// history is resent on the next turn, /reset clears it, and an HTTP error is shown without
// ending the session, and a stream cut before [DONE] is an error, not a reply.
func TestChat(t *testing.T) {
	var mu sync.Mutex
	var got [][]chatMessage
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v1/models" {
			fmt.Fprint(w, `{"object":"list","data":[{"id":"m1","object":"model"}]}`)
			return
		}
		var req struct {
			Model    string        `json:"model"`
			Messages []chatMessage `json:"messages"`
			Stream   bool          `json:"stream"`
		}
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil || req.Model != "m1" || !req.Stream {
			http.Error(w, `{"error":{"message":"bad request"}}`, http.StatusBadRequest)
			return
		}
		mu.Lock()
		got = append(got, req.Messages)
		n := len(got)
		mu.Unlock()
		if strings.Contains(req.Messages[len(req.Messages)-1].Content, "fail") {
			http.Error(w, `{"error":{"message":"no capacity"}}`, http.StatusServiceUnavailable)
			return
		}
		w.Header().Set("Content-Type", "text/event-stream")
		w.Header().Set("x-kvgate-endpoint", "10.0.0.1:8000")
		if strings.Contains(req.Messages[len(req.Messages)-1].Content, "cut") {
			fmt.Fprint(w, "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"half\"}}]}\n\n")
			return // the stream ends without [DONE]: an engine died
		}
		for _, piece := range []string{"re", fmt.Sprint("ply", n)} {
			fmt.Fprintf(w, "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":%q}}]}\n\n", piece)
			w.(http.Flusher).Flush()
		}
		fmt.Fprint(w, "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":1}}\n\ndata: [DONE]\n\n")
	}))
	defer srv.Close()

	in := strings.NewReader("hello\n\nagain\nfail\ncut\n/reset\nfresh\n/quit\nnever sent\n")
	var out strings.Builder
	o := &chatOptions{url: srv.URL + "/v1", system: "be brief", maxTokens: 8, timeout: 10 * time.Second}
	if err := runChat(context.Background(), o, in, &out); err != nil {
		t.Fatal(err)
	}
	text := out.String()
	for _, want := range []string{"chatting with m1", "reply1", "reply2", "served by 10.0.0.1:8000", "error: HTTP 503", "error: the stream ended without [DONE]", "(history cleared)", "reply5"} {
		if !strings.Contains(text, want) {
			t.Errorf("output lacks %q:\n%s", want, text)
		}
	}
	roles := func(ms []chatMessage) string {
		var s []string
		for _, m := range ms {
			s = append(s, m.Role+":"+m.Content)
		}
		return strings.Join(s, "|")
	}
	want := []string{
		"system:be brief|user:hello",
		"system:be brief|user:hello|assistant:reply1|user:again",
		"system:be brief|user:hello|assistant:reply1|user:again|assistant:reply2|user:fail",
		"system:be brief|user:hello|assistant:reply1|user:again|assistant:reply2|user:cut",
		"system:be brief|user:fresh",
	}
	if len(got) != len(want) {
		t.Fatalf("%d requests, want %d", len(got), len(want))
	}
	for i := range want {
		if r := roles(got[i]); r != want[i] {
			t.Errorf("request %d history %q, want %q", i, r, want[i])
		}
	}
}
