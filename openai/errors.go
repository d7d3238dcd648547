// Package openai holds the OpenAI-compatible request and response types, their validation,
// error bodies and SSE framing, as vLLM's OpenAI server shapes them.
// In a request's path it owns R2 (parse and validate the body; the error bodies of every
// step); it owns no step of a KV event.
package openai

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
)

// Error types and codes used in error bodies.
const (
	TypeInvalidRequest = "invalid_request_error"
	TypeNotFound       = "not_found_error"
	TypeRateLimit      = "rate_limit_error"
	TypeUnavailable    = "service_unavailable_error"
	TypeInternal       = "internal_error"

	CodeModelNotFound     = "model_not_found"
	CodeRequestTooLarge   = "request_too_large"
	CodeRateLimitExceeded = "rate_limit_exceeded"
	CodeNoCapacity        = "no_capacity"
	CodeRequestTimeout    = "request_timeout"
	CodeHeadersTooLarge   = "request_header_fields_too_large"
	CodeMethodNotAllowed  = "method_not_allowed"
	CodeUpstreamFailed    = "upstream_failed"
)

// Error is an OpenAI-shaped error with its HTTP status. It is what every validation failure in
// this package returns, and what the router returns for requests it refuses.
type Error struct {
	Status  int
	Message string
	Type    string
	Param   string // the offending request field, "" when none
	Code    string // machine-readable code, "" when none
	// Header holds extra response headers (Retry-After, a rejection reason); nil when none.
	// WriteError and the ext_proc server's immediate responses send them.
	Header http.Header
}

// Error returns the message.
func (e *Error) Error() string { return e.Message }

// Body returns the JSON body {"error":{"message","type","param","code"}}; an empty Param or
// Code is written as null, as OpenAI does.
func (e *Error) Body() []byte {
	type inner struct {
		Message string  `json:"message"`
		Type    string  `json:"type"`
		Param   *string `json:"param"`
		Code    *string `json:"code"`
	}
	in := inner{Message: e.Message, Type: e.Type}
	if e.Param != "" {
		in.Param = &e.Param
	}
	if e.Code != "" {
		in.Code = &e.Code
	}
	b, err := json.Marshal(struct {
		Error inner `json:"error"`
	}{in})
	if err != nil { // cannot happen: only strings
		return []byte(`{"error":{"message":"internal error","type":"internal_error","param":null,"code":null}}`)
	}
	return b
}

// Errorf builds an *Error with the given status, type and param.
func Errorf(status int, typ, param, format string, args ...any) *Error {
	return &Error{Status: status, Type: typ, Param: param, Message: fmt.Sprintf(format, args...)}
}

// BadRequest is a 400 invalid_request_error naming param.
func BadRequest(param, format string, args ...any) *Error {
	return Errorf(http.StatusBadRequest, TypeInvalidRequest, param, format, args...)
}

// ModelNotFound is the 404 for a model no endpoint serves.
func ModelNotFound(model string) *Error {
	e := Errorf(http.StatusNotFound, TypeInvalidRequest, "model", "The model `%s` does not exist.", model)
	e.Code = CodeModelNotFound
	return e
}

// TooLarge is the 413 for a body over limit bytes.
func TooLarge(limit int64) *Error {
	e := Errorf(http.StatusRequestEntityTooLarge, TypeInvalidRequest, "", "Request body exceeds the limit of %d bytes.", limit)
	e.Code = CodeRequestTooLarge
	return e
}

// Overloaded is the 429 returned when every endpoint is saturated and shedding is on.
func Overloaded(format string, args ...any) *Error {
	e := Errorf(http.StatusTooManyRequests, TypeRateLimit, "", format, args...)
	e.Code = CodeRateLimitExceeded
	return e
}

// Unavailable is the 503 returned when no endpoint can take the request.
func Unavailable(format string, args ...any) *Error {
	e := Errorf(http.StatusServiceUnavailable, TypeUnavailable, "", format, args...)
	e.Code = CodeNoCapacity
	return e
}

// AsError returns err as an *Error: itself when it is one (or wraps one), otherwise a 500
// internal_error carrying err's message.
func AsError(err error) *Error {
	var e *Error
	if errors.As(err, &e) {
		return e
	}
	msg := "internal error"
	if err != nil {
		msg = err.Error()
	}
	return Errorf(http.StatusInternalServerError, TypeInternal, "", "%s", msg)
}

// WriteError writes err as an OpenAI error response: an *Error as is, anything else as a 500
// internal_error.
func WriteError(w http.ResponseWriter, err error) {
	e := AsError(err)
	body := e.Body()
	h := w.Header()
	for k, v := range e.Header {
		h[http.CanonicalHeaderKey(k)] = v
	}
	h.Set("Content-Type", "application/json")
	h.Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(e.Status)
	_, _ = w.Write(body)
}
