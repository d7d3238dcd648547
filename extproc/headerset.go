package extproc

import (
	"strconv"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"

	"github.com/kvgate/kvgate/router"
)

// headerSet gathers the headers an answer sets, lower-case keys and one value each, for a
// header mutation built in four allocations. It stands in for an http.Header, whose keys
// would be canonicalized and lower-cased again (an allocation each). At most maxSet headers;
// more are dropped (the server never sets that many).
type headerSet struct {
	n  int
	kv [maxSet][2]string
}

const maxSet = 10

// set sets key (lower-case) to v, replacing an earlier value.
func (h *headerSet) set(key, v string) {
	for i := range h.n {
		if h.kv[i][0] == key {
			h.kv[i][1] = v
			return
		}
	}
	if h.n < maxSet {
		h.kv[h.n] = [2]string{key, v}
		h.n++
	}
}

// get returns key's value, "" when unset.
func (h *headerSet) get(key string) string {
	for i := range h.n {
		if h.kv[i][0] == key {
			return h.kv[i][1]
		}
	}
	return ""
}

// del removes key.
func (h *headerSet) del(key string) {
	for i := range h.n {
		if h.kv[i][0] == key {
			copy(h.kv[i:h.n], h.kv[i+1:h.n])
			h.n--
			return
		}
	}
}

// Get, Set and Keys make a headerSet an OpenTelemetry TextMapCarrier (trace context
// propagation writes lower-case keys).
func (h *headerSet) Get(key string) string { return h.get(key) }
func (h *headerSet) Set(key, v string)     { h.set(key, v) }
func (h *headerSet) Keys() []string {
	keys := make([]string, h.n)
	for i := range h.n {
		keys[i] = h.kv[i][0]
	}
	return keys
}

// headerOption is one set header with its value, allocated together.
type headerOption struct {
	opt corev3.HeaderValueOption
	val corev3.HeaderValue
}

// mutation is the header mutation setting every header of h, replacing what is there, keys
// in sorted order (deterministic); nil when h is empty.
func (h *headerSet) mutation() *extprocv3.HeaderMutation {
	if h.n == 0 {
		return nil
	}
	kv := h.kv[:h.n]
	for i := 1; i < len(kv); i++ { // insertion sort: a handful of keys
		for j := i; j > 0 && kv[j][0] < kv[j-1][0]; j-- {
			kv[j], kv[j-1] = kv[j-1], kv[j]
		}
	}
	size := 0
	for _, p := range kv {
		size += len(p[1])
	}
	opts := make([]headerOption, len(kv))
	mut := &extprocv3.HeaderMutation{SetHeaders: make([]*corev3.HeaderValueOption, len(kv))}
	buf := make([]byte, 0, size)
	for i, p := range kv {
		start := len(buf)
		buf = append(buf, p[1]...)
		o := &opts[i]
		o.val.Key = p[0]
		o.val.RawValue = buf[start:len(buf):len(buf)]
		o.opt.Header = &o.val
		o.opt.AppendAction = corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD
		mut.SetHeaders[i] = &o.opt
	}
	return mut
}

// decisionHeaders sets the headers of d.Header() into h: HeaderDestination (target, then
// fallbacks, comma-separated), HeaderEndpoint, HeaderCachedBlocks, for disaggregation
// HeaderPrefiller and HeaderPrefillEndpoint, for a P2P pull HeaderKVCacheSource.
// TestDecisionHeaders keeps the two equal.
func decisionHeaders(h *headerSet, d *router.Decision) {
	dest := d.Endpoint.Address
	if len(d.Fallbacks) > 0 {
		n := len(dest)
		for _, f := range d.Fallbacks {
			n += 1 + len(f.Address)
		}
		b := make([]byte, 0, n)
		b = append(b, dest...)
		for _, f := range d.Fallbacks {
			b = append(b, ',')
			b = append(b, f.Address...)
		}
		dest = string(b)
	}
	h.set(router.HeaderDestination, dest)
	h.set(router.HeaderEndpoint, d.Endpoint.Address)
	h.set(router.HeaderCachedBlocks, strconv.Itoa(d.CachedBlocks))
	if d.Prefill != nil {
		h.set(router.HeaderPrefiller, d.Prefill.Address)
		h.set(router.HeaderPrefillEndpoint, d.Prefill.Address)
	}
	if d.Pull != nil {
		h.set(router.HeaderKVCacheSource, d.Pull.From.Address)
	}
}
