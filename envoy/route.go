package envoy

import (
	"fmt"
	"net/http"
	"strings"

	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	matcher "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
)

// MatchRoute returns the route of vh that Envoy picks for a request to path (the query is
// ignored) with headers h: the first, in order, whose match holds; nil when none does. It
// knows the matchers kvgate's configs use — path, prefix and path_separated_prefix (case
// sensitive or not), header exact/prefix string matches and present_match, each optionally
// inverted — and returns an error on any other, so a check built on it never passes by not
// understanding a route.
func MatchRoute(vh *route.VirtualHost, path string, h http.Header) (*route.Route, error) {
	if i := strings.IndexByte(path, '?'); i >= 0 {
		path = path[:i]
	}
	for _, r := range vh.GetRoutes() {
		ok, err := routeMatches(r.GetMatch(), path, h)
		if err != nil {
			return nil, fmt.Errorf("route %q: %w", r.GetName(), err)
		}
		if ok {
			return r, nil
		}
	}
	return nil, nil
}

func routeMatches(m *route.RouteMatch, path string, h http.Header) (bool, error) {
	if m.GetQueryParameters() != nil || m.GetGrpc() != nil || m.GetTlsContext() != nil ||
		m.GetRuntimeFraction() != nil || len(m.GetDynamicMetadata()) > 0 || m.GetFilterState() != nil {
		return false, fmt.Errorf("match %v: unsupported matcher", m)
	}
	fold := m.GetCaseSensitive() != nil && !m.GetCaseSensitive().GetValue()
	p, want := path, ""
	var ok bool
	switch s := m.GetPathSpecifier().(type) {
	case *route.RouteMatch_Path:
		want = s.Path
		ok = p == want || fold && strings.EqualFold(p, want)
	case *route.RouteMatch_Prefix:
		want = s.Prefix
		ok = strings.HasPrefix(p, want) || fold && len(p) >= len(want) && strings.EqualFold(p[:len(want)], want)
	case *route.RouteMatch_PathSeparatedPrefix:
		want = s.PathSeparatedPrefix
		ok = (p == want || strings.HasPrefix(p, want+"/")) ||
			fold && (strings.EqualFold(p, want) || len(p) > len(want) && p[len(want)] == '/' && strings.EqualFold(p[:len(want)], want))
	default:
		return false, fmt.Errorf("path specifier %T: unsupported", s)
	}
	if !ok {
		return false, nil
	}
	for _, hm := range m.GetHeaders() {
		hit, err := headerMatches(hm, h)
		if err != nil || !hit {
			return false, err
		}
	}
	return true, nil
}

func headerMatches(hm *route.HeaderMatcher, h http.Header) (bool, error) {
	if hm.GetTreatMissingHeaderAsEmpty() {
		return false, fmt.Errorf("header %s: treat_missing_header_as_empty unsupported", hm.GetName())
	}
	vals, present := h[http.CanonicalHeaderKey(hm.GetName())]
	v := strings.Join(vals, ",")
	var hit bool
	switch s := hm.GetHeaderMatchSpecifier().(type) {
	case *route.HeaderMatcher_PresentMatch:
		hit = present == s.PresentMatch
	case *route.HeaderMatcher_StringMatch:
		if s.StringMatch.GetIgnoreCase() {
			return false, fmt.Errorf("header %s: ignore_case unsupported", hm.GetName())
		}
		switch p := s.StringMatch.GetMatchPattern().(type) {
		case *matcher.StringMatcher_Exact:
			hit = present && v == p.Exact
		case *matcher.StringMatcher_Prefix:
			hit = present && strings.HasPrefix(v, p.Prefix)
		default:
			return false, fmt.Errorf("header %s: string matcher %T unsupported", hm.GetName(), p)
		}
	default:
		return false, fmt.Errorf("header %s: matcher %T unsupported", hm.GetName(), s)
	}
	// Envoy: an inverted matcher on an absent header matches (unless present_match itself).
	return hit != hm.GetInvertMatch(), nil
}
