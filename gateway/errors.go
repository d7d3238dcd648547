package gateway

import (
	"net/http"
	"time"

	"github.com/kvgate/kvgate/openai"
)

// The gateway's own error answers, each OpenAI-shaped. None names an engine's address: the
// log does.

func requestTimeout(limit time.Duration) *openai.Error {
	e := openai.Errorf(http.StatusRequestTimeout, openai.TypeInvalidRequest, "", "The request body did not arrive within %s.", limit)
	e.Code = openai.CodeRequestTimeout
	return e
}

func headersTooLarge(limit int) *openai.Error {
	e := openai.Errorf(http.StatusRequestHeaderFieldsTooLarge, openai.TypeInvalidRequest, "", "The request headers exceed the limit of %d bytes.", limit)
	e.Code = openai.CodeHeadersTooLarge
	return e
}

func methodNotAllowed(method, path string) *openai.Error {
	e := openai.Errorf(http.StatusMethodNotAllowed, openai.TypeInvalidRequest, "", "Method %s is not allowed on %s.", method, path)
	e.Code = openai.CodeMethodNotAllowed
	return e
}

func notFound(method, path string) *openai.Error {
	return openai.Errorf(http.StatusNotFound, openai.TypeNotFound, "", "No route for %s %s.", method, path)
}

// upstreamFailed is the 502 for a request no engine answered: every endpoint tried failed
// before its first byte.
func upstreamFailed() *openai.Error {
	e := openai.Errorf(http.StatusBadGateway, openai.TypeUnavailable, "", "The inference engine failed before answering; try again.")
	e.Code = openai.CodeUpstreamFailed
	return e
}

// streamCut is the error event sent into a stream whose engine failed midway.
func streamCut() *openai.Error {
	e := openai.Errorf(http.StatusBadGateway, openai.TypeUnavailable, "", "The inference engine failed while streaming; the response is incomplete.")
	e.Code = openai.CodeUpstreamFailed
	return e
}

// codeEPPUnavailable is the error code of a request the endpoint picker could not pick for.
const codeEPPUnavailable = "endpoint_picker_unavailable"

// eppUnavailable is the 503 of FailClose: the endpoint picker could not pick.
func eppUnavailable() *openai.Error {
	e := openai.Errorf(http.StatusServiceUnavailable, openai.TypeUnavailable, "", "The endpoint picker is unavailable; try again.")
	e.Code = codeEPPUnavailable
	return e
}

// eppNoEndpoint is the 503 for a pick that names no endpoint of the pool.
func eppNoEndpoint() *openai.Error {
	e := openai.Errorf(http.StatusServiceUnavailable, openai.TypeUnavailable, "", "The endpoint picker chose no endpoint of the pool; try again.")
	e.Code = openai.CodeNoCapacity
	return e
}

// eppResponseFailed is the 502 for a response the endpoint picker failed to process before
// its headers reached the client.
func eppResponseFailed() *openai.Error {
	e := openai.Errorf(http.StatusBadGateway, openai.TypeUnavailable, "", "The endpoint picker failed while processing the response; try again.")
	e.Code = openai.CodeUpstreamFailed
	return e
}

// eppRefused is the body of an ImmediateResponse that came without one.
func eppRefused(status int, details string) *openai.Error {
	msg := "The endpoint picker refused the request"
	if details != "" {
		msg += ": " + details
	}
	return openai.Errorf(status, typeForStatus(status), "", "%s.", msg)
}

// eppBadImmediate is the 502 for an ImmediateResponse whose status is not an HTTP status.
func eppBadImmediate(code int) *openai.Error {
	e := openai.Errorf(http.StatusBadGateway, openai.TypeUnavailable, "", "The endpoint picker answered with an invalid HTTP status %d.", code)
	e.Code = openai.CodeUpstreamFailed
	return e
}

func typeForStatus(status int) string {
	switch {
	case status == http.StatusTooManyRequests:
		return openai.TypeRateLimit
	case status >= 500:
		return openai.TypeUnavailable
	case status == http.StatusNotFound:
		return openai.TypeNotFound
	}
	return openai.TypeInvalidRequest
}
