// Package httpproxy is what kvgate's two HTTP proxies (the gateway and the P/D sidecar)
// share: the header rules for what they pass on (hop-by-hop headers dropped, the client
// appended to X-Forwarded-For) and serving until shutdown.
package httpproxy

import (
	"net"
	"net/http"
	"net/textproto"
	"strings"
)

// ForwardedFor is the header naming the clients a request passed through proxies for.
const ForwardedFor = "X-Forwarded-For"

// hop are connection-level headers a proxy does not forward (RFC 9110 7.6.1), besides those
// a Connection header names.
var hop = [...]string{
	"Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization",
	"Te", "Trailer", "Transfer-Encoding", "Upgrade",
}

// RemoveHopByHop deletes from h the hop-by-hop headers and every header its Connection
// header names.
func RemoveHopByHop(h http.Header) {
	for _, v := range h["Connection"] {
		for name := range strings.SplitSeq(v, ",") {
			if name = textproto.TrimString(name); name != "" {
				h.Del(name)
			}
		}
	}
	for _, k := range hop {
		h.Del(k)
	}
}

// AddForwardedFor appends the client's IP (from remoteAddr, "ip:port") to h's
// X-Forwarded-For, after what earlier proxies put there.
func AddForwardedFor(h http.Header, remoteAddr string) {
	ip, _, err := net.SplitHostPort(remoteAddr)
	if err != nil || ip == "" {
		return
	}
	if prior := h.Values(ForwardedFor); len(prior) > 0 {
		ip = strings.Join(prior, ", ") + ", " + ip
	}
	h.Set(ForwardedFor, ip)
}
