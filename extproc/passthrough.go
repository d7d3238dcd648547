package extproc

import (
	"context"
	"strings"
	"time"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"

	"github.com/kvgate/kvgate/openai"
	"github.com/kvgate/kvgate/router"
)

// picksWithoutBody reports whether a request without a body on path is picked on its headers:
// any /v1/ path the router passes through (GET /v1/files/x, DELETE ...), but not /v1/models,
// which every endpoint answers alike and goes on unpicked as before.
func picksWithoutBody(path string) bool {
	return strings.HasPrefix(path, "/v1/") && len(path) > len("/v1/") && path != "/v1/models"
}

// pickOnHeaders routes a request that has no body (the router passes it through to the least
// loaded endpoint) and answers the request headers with the pick: header mutation and
// envoy.lb dynamic metadata, as the body response carries them for requests with a body.
func (st *stream) pickOnHeaders(ctx context.Context) ([]*extprocv3.ProcessingResponse, bool) {
	st.routed = true
	start := time.Now()
	d, err := st.s.router.Route(ctx, router.Request{Path: st.path, Headers: st.headers, Subset: st.subset})
	st.s.metrics.pick.Observe(time.Since(start).Seconds())
	if err != nil {
		return st.reject(openai.AsError(err)), true
	}
	st.decision, st.pickedAt = d, time.Now()
	var hdr headerSet
	decisionHeaders(&hdr, d)
	mut := hdr.mutation() // never nil: the destination is always set
	for _, k := range [...]string{router.HeaderPrefiller, router.HeaderKVCacheSource} {
		if st.headers.Get(k) != "" && hdr.get(k) == "" { // only the router names these
			mut.RemoveHeaders = append(mut.RemoveHeaders, k)
		}
	}
	st.s.log.Debug("picked on headers", "path", st.path, "endpoint", d.Endpoint.Address, "model", d.Model)
	hr := continueHeaders(false, mut, true)
	hr.DynamicMetadata = pickMetadata(hdr.get(router.HeaderDestination))
	return []*extprocv3.ProcessingResponse{hr}, false
}
