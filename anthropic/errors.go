package anthropic

import (
	"encoding/json"
	"net/http"
	"strconv"

	"github.com/kvgate/kvgate/openai"
)

// Anthropic's error types.
const (
	TypeInvalidRequest  = "invalid_request_error"
	TypeAuthentication  = "authentication_error"
	TypePermission      = "permission_error"
	TypeNotFound        = "not_found_error"
	TypeRequestTooLarge = "request_too_large"
	TypeRateLimit       = "rate_limit_error"
	TypeAPI             = "api_error"
	TypeTimeout         = "timeout_error"
	TypeOverloaded      = "overloaded_error"
)

// StatusOverloaded is Anthropic's own status for an overloaded API.
const StatusOverloaded = 529

// TypeForStatus is the Anthropic error type of an HTTP status.
func TypeForStatus(status int) string {
	switch status {
	case http.StatusBadRequest:
		return TypeInvalidRequest
	case http.StatusUnauthorized:
		return TypeAuthentication
	case http.StatusForbidden:
		return TypePermission
	case http.StatusNotFound:
		return TypeNotFound
	case http.StatusRequestEntityTooLarge:
		return TypeRequestTooLarge
	case http.StatusTooManyRequests:
		return TypeRateLimit
	case http.StatusServiceUnavailable, StatusOverloaded:
		return TypeOverloaded
	case http.StatusGatewayTimeout:
		return TypeTimeout
	}
	if status >= 500 {
		return TypeAPI
	}
	return TypeInvalidRequest
}

// errorBody is {"type":"error","error":{"type":...,"message":...}}.
type errorBody struct {
	Type  string     `json:"type"`
	Error errorInner `json:"error"`
}

type errorInner struct {
	Type    string `json:"type"`
	Message string `json:"message"`
}

// ErrorBody is e in Anthropic's shape, its type from e's status.
func ErrorBody(e *openai.Error) []byte {
	b, err := json.Marshal(errorBody{Type: "error", Error: errorInner{Type: TypeForStatus(e.Status), Message: e.Message}})
	if err != nil { // only strings: cannot happen
		return []byte(`{"type":"error","error":{"type":"api_error","message":"internal error"}}`)
	}
	return b
}

// WriteError writes err as an Anthropic error response (a non-*openai.Error as a 500
// api_error), with e's extra headers (Retry-After).
func WriteError(w http.ResponseWriter, err error) int {
	e := openai.AsError(err)
	body := ErrorBody(e)
	h := w.Header()
	for k, v := range e.Header {
		h[http.CanonicalHeaderKey(k)] = v
	}
	h.Set("Content-Type", "application/json")
	h.Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(e.Status)
	_, _ = w.Write(body)
	return e.Status
}

// ConvertErrorBody rewrites an error response body for the Messages API: an OpenAI-shaped
// body ({"error":{"message","type",...}}) becomes Anthropic's shape with status's type; a
// body already in Anthropic's shape, or one that is neither, is returned as is, so nothing
// the engine said is lost.
func ConvertErrorBody(status int, body []byte) []byte {
	var v struct {
		Type  *string `json:"type"`
		Error *struct {
			Message *string `json:"message"`
		} `json:"error"`
	}
	if json.Unmarshal(body, &v) != nil || v.Type != nil || v.Error == nil || v.Error.Message == nil {
		return body
	}
	return ErrorBody(&openai.Error{Status: status, Message: *v.Error.Message})
}
