package openai_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/kvgate/kvgate/openai"
)

func TestErrorBody(t *testing.T) {
	tests := []struct {
		name string
		err  *openai.Error
		want string
	}{
		{"param", openai.BadRequest("max_tokens", "bad %d", 0),
			`{"error":{"message":"bad 0","type":"invalid_request_error","param":"max_tokens","code":null}}`},
		{"model", openai.ModelNotFound("x"),
			"{\"error\":{\"message\":\"The model `x` does not exist.\",\"type\":\"invalid_request_error\",\"param\":\"model\",\"code\":\"model_not_found\"}}"},
		{"no param", openai.Unavailable("none"),
			`{"error":{"message":"none","type":"service_unavailable_error","param":null,"code":"no_capacity"}}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := string(tt.err.Body()); got != tt.want {
				t.Errorf("Body() = %s\nwant      %s", got, tt.want)
			}
		})
	}
}

func TestWriteError(t *testing.T) {
	tests := []struct {
		name   string
		err    error
		status int
		typ    string
	}{
		{"bad request", openai.BadRequest("n", "n"), 400, "invalid_request_error"},
		{"wrapped", fmt.Errorf("route: %w", openai.ModelNotFound("m")), 404, "invalid_request_error"},
		{"too large", openai.TooLarge(10), 413, "invalid_request_error"},
		{"overloaded", openai.Overloaded("busy"), 429, "rate_limit_error"},
		{"unavailable", openai.Unavailable("down"), 503, "service_unavailable_error"},
		{"plain", errors.New("boom"), 500, "internal_error"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
				openai.WriteError(w, tt.err)
			}))
			defer srv.Close()
			resp, err := http.Get(srv.URL)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			var body struct {
				Error struct {
					Message string  `json:"message"`
					Type    string  `json:"type"`
					Param   *string `json:"param"`
					Code    *string `json:"code"`
				} `json:"error"`
			}
			if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode != tt.status || body.Error.Type != tt.typ || body.Error.Message == "" {
				t.Errorf("got %d %+v", resp.StatusCode, body.Error)
			}
			if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
				t.Errorf("content-type %q", ct)
			}
		})
	}
}

func TestReadBody(t *testing.T) {
	b, err := openai.ReadBody(strings.NewReader("12345"), 5)
	if err != nil || string(b) != "12345" {
		t.Fatalf("at limit: %q %v", b, err)
	}
	_, err = openai.ReadBody(strings.NewReader("123456"), 5)
	var e *openai.Error
	if !errors.As(err, &e) || e.Status != http.StatusRequestEntityTooLarge {
		t.Fatalf("over limit: %v", err)
	}
	b, err = openai.ReadBody(io.LimitReader(strings.NewReader("abc"), 3), 0)
	if err != nil || string(b) != "abc" {
		t.Fatalf("no limit: %q %v", b, err)
	}
}
