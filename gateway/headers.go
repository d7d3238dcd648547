package gateway

import (
	"net"
	"net/http"
	"strings"

	"github.com/kvgate/kvgate/router"
)

// Header names the gateway reads or sets itself.
const (
	HeaderForwardedFor = "X-Forwarded-For"
	headerConnection   = "Connection"
)

// hopHeaders are connection-level headers a proxy does not forward (RFC 9110 7.6.1), besides
// those a Connection header names.
var hopHeaders = [...]string{
	"Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization",
	"Te", "Trailer", "Transfer-Encoding", "Upgrade",
}

// echoHeaders are the decision's headers reported to the client on the response.
var echoHeaders = [...]string{router.HeaderCachedBlocks, router.HeaderPrefillEndpoint}

// removeHopHeaders deletes from h the hop-by-hop headers and every header its Connection
// header names (RFC 9110 7.6.1).
func removeHopHeaders(h http.Header) {
	for _, v := range h[headerConnection] {
		for name := range strings.SplitSeq(v, ",") {
			if name = strings.TrimSpace(name); name != "" {
				h.Del(name)
			}
		}
	}
	for _, k := range hopHeaders {
		h.Del(k)
	}
}

// addForwardedFor appends the client's IP (from remoteAddr, "ip:port") to h's
// X-Forwarded-For, after what earlier proxies put there.
func addForwardedFor(h http.Header, remoteAddr string) {
	ip, _, err := net.SplitHostPort(remoteAddr)
	if err != nil || ip == "" {
		return
	}
	if prior := h.Values(HeaderForwardedFor); len(prior) > 0 {
		ip = strings.Join(prior, ", ") + ", " + ip
	}
	h.Set(HeaderForwardedFor, ip)
}

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
