package anthropic_test

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/kvgate/kvgate/anthropic"
	"github.com/kvgate/kvgate/openai"
)

func TestErrorShape(t *testing.T) {
	for status, typ := range map[int]string{
		400: "invalid_request_error", 401: "authentication_error", 403: "permission_error", 404: "not_found_error",
		408: "invalid_request_error", 413: "request_too_large", 429: "rate_limit_error", 500: "api_error", 502: "api_error",
		503: "overloaded_error", 504: "timeout_error", 529: "overloaded_error",
	} {
		e := &openai.Error{Status: status, Message: "m", Type: openai.TypeInvalidRequest, Header: http.Header{"Retry-After": {"3"}}}
		w := httptest.NewRecorder()
		if got := anthropic.WriteError(w, e); got != status || w.Code != status {
			t.Errorf("%d: wrote %d", status, w.Code)
		}
		var b struct {
			Type  string `json:"type"`
			Error struct {
				Type    string `json:"type"`
				Message string `json:"message"`
			} `json:"error"`
		}
		if err := json.Unmarshal(w.Body.Bytes(), &b); err != nil || b.Type != "error" || b.Error.Type != typ || b.Error.Message != "m" {
			t.Errorf("%d: body %s, want type %s", status, w.Body, typ)
		}
		if w.Header().Get("Retry-After") != "3" || w.Header().Get("Content-Type") != "application/json" {
			t.Errorf("%d: headers %v", status, w.Header())
		}
	}
}

func TestConvertErrorBody(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{`{"error":{"message":"bad","type":"BadRequestError","param":null,"code":400}}`, `{"type":"error","error":{"type":"invalid_request_error","message":"bad"}}`},
		{`{"type":"error","error":{"type":"overloaded_error","message":"busy"}}`, `{"type":"error","error":{"type":"overloaded_error","message":"busy"}}`},
		{`Internal Server Error`, `Internal Server Error`},
		{`{"detail":"x"}`, `{"detail":"x"}`},
	} {
		if got := string(anthropic.ConvertErrorBody(400, []byte(tc.in))); got != tc.want {
			t.Errorf("%s -> %s, want %s", tc.in, got, tc.want)
		}
	}
}
