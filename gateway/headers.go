package gateway

import (
	"net/http"

	"github.com/kvgate/kvgate/httpproxy"
	"github.com/kvgate/kvgate/router"
)

// Header names the gateway reads or sets itself.
const (
	HeaderForwardedFor = httpproxy.ForwardedFor
	headerConnection   = "Connection"
)

// echoHeaders are the decision's headers reported to the client on the response.
var echoHeaders = [...]string{router.HeaderCachedBlocks, router.HeaderPrefillEndpoint}

// headerBytes is the size of h as it arrived, approximately: names, values and separators.
func headerBytes(h http.Header) int {
	n := 0
	for k, vs := range h {
		for _, v := range vs {
			n += len(k) + len(v) + 4
		}
	}
	return n
}
