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
