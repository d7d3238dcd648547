package gateway

import (
	"net/http"
)

// patternPassthrough is the mux pattern of every /v1/ path the gateway has no handler of its
// own for: the router picks an engine by load (and the body's model) and the request goes
// there as it came, with its method and query.
const patternPassthrough = "/v1/"

// passthrough wraps the proxy handler for patternPassthrough: a path the gateway serves with
// other methods is answered 405 here, as before passthrough existed, instead of reaching an
// engine.
func (g *Gateway) passthrough(proxy http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		for _, m := range [...]string{http.MethodPost, http.MethodGet} {
			if m == r.Method {
				continue
			}
			if _, p := g.mux.Handler(&http.Request{Method: m, URL: r.URL, Host: r.Host}); p != "" && p != patternPassthrough {
				w.Header().Set("Allow", m)
				writeErr(w, methodNotAllowed(r.Method, r.URL.Path))
				return
			}
		}
		r.Pattern = patternPassthrough // the gateway's ServeHTTP dispatches without setting it
		proxy(w, r)
	}
}

// migrates reports whether a streamed request on path may move to another engine mid-stream:
// only chat and text completions, whose streams openai.Stitch knows how to join.
func migrates(path string) bool {
	return path == "/v1/chat/completions" || path == "/v1/completions"
}

// labelPassthrough is the path label of the gateway's metrics for every passed-through
// request: the paths themselves are the client's to choose, and a label per path would grow
// without bound.
const labelPassthrough = "/v1/*"

// metricPath is the path label of r in the gateway's metrics.
func metricPath(r *http.Request) string {
	if r.Pattern == patternPassthrough {
		return labelPassthrough
	}
	return r.URL.Path
}
