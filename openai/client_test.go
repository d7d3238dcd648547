package openai_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kvgate/kvgate/openai"
)

func TestListModels(t *testing.T) {
	for _, tc := range []struct {
		name, body string
		status     int
		want       []string
		err        string
	}{
		{name: "listed", status: 200, body: `{"object":"list","data":[{"id":"a"},{"id":"b"}]}`, want: []string{"a", "b"}},
		{name: "error body", status: 503, body: `{"error":{"message":"warming up","type":"x"}}`, err: "HTTP 503: warming up"},
		{name: "plain error", status: 404, body: "nope", err: "HTTP 404: nope"},
		{name: "none", status: 200, body: `{"data":[]}`, err: "lists none"},
		{name: "not json", status: 200, body: `<html>`, err: "listing models"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path != "/v1/models" || r.Header.Get("Authorization") != "Bearer k" {
					http.Error(w, "bad request "+r.URL.Path, 400)
					return
				}
				w.WriteHeader(tc.status)
				_, _ = w.Write([]byte(tc.body))
			}))
			defer srv.Close()
			got, err := openai.ListModels(context.Background(), srv.Client(), srv.URL+"/v1/", "k")
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err = %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil || !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("got %v, %v; want %v", got, err, tc.want)
			}
		})
	}
}

// TestWaitModels: a server that fails twice is asked again until it lists models; one that
// never does gives up with the context, naming the last failure.
func TestWaitModels(t *testing.T) {
	var calls atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		if calls.Add(1) <= 2 {
			http.Error(w, "starting", 503)
			return
		}
		_, _ = w.Write([]byte(`{"data":[{"id":"m"}]}`))
	}))
	defer srv.Close()
	got, err := openai.WaitModels(context.Background(), srv.Client(), srv.URL, "", time.Millisecond)
	if err != nil || !reflect.DeepEqual(got, []string{"m"}) || calls.Load() != 3 {
		t.Fatalf("got %v, %v after %d calls", got, err, calls.Load())
	}

	down := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { http.Error(w, "down", 502) }))
	defer down.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := openai.WaitModels(ctx, down.Client(), down.URL, "", time.Millisecond); err == nil || !strings.Contains(err.Error(), "HTTP 502: down") {
		t.Fatalf("err = %v", err)
	}
}
