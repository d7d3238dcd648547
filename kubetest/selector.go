package kubetest

import (
	"fmt"
	"strings"
)

// requirement is one term of an equality-based label selector.
type requirement struct {
	key, value string
	op         string // "=", "!=", "exists", "!exists"
}

func (r requirement) holds(labels map[string]string) bool {
	v, ok := labels[r.key]
	switch r.op {
	case "=":
		return ok && v == r.value
	case "!=":
		return !ok || v != r.value
	case "exists":
		return ok
	default:
		return !ok
	}
}

// parseLabelSelector reads "a=b,c!=d,e,!f" (== is =). Set-based terms (in, notin) are not
// served: they are refused, not ignored.
func parseLabelSelector(s string) ([]requirement, error) {
	var out []requirement
	for term := range strings.SplitSeq(s, ",") {
		term = strings.TrimSpace(term)
		switch {
		case term == "":
			continue
		case strings.ContainsAny(term, "() "):
			return nil, fmt.Errorf("label selector %q: set-based terms are not supported", s)
		case strings.Contains(term, "!="):
			k, v, _ := strings.Cut(term, "!=")
			out = append(out, requirement{k, v, "!="})
		case strings.Contains(term, "="):
			k, v, _ := strings.Cut(term, "=")
			out = append(out, requirement{k, strings.TrimPrefix(v, "="), "="})
		case strings.HasPrefix(term, "!"):
			out = append(out, requirement{term[1:], "", "!exists"})
		default:
			out = append(out, requirement{term, "", "exists"})
		}
	}
	return out, nil
}

// parseFieldSelector reads "metadata.name=x,metadata.namespace=y"; other fields are refused.
func parseFieldSelector(s string) (map[string]string, error) {
	out := map[string]string{}
	for term := range strings.SplitSeq(s, ",") {
		if term == "" {
			continue
		}
		k, v, ok := strings.Cut(term, "=")
		v = strings.TrimPrefix(v, "=")
		if !ok || (k != "metadata.name" && k != "metadata.namespace") {
			return nil, fmt.Errorf("field selector %q: only metadata.name and metadata.namespace equality are supported", s)
		}
		out[k] = v
	}
	return out, nil
}
