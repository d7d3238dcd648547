package discovery

import "context"

// FollowAddresses calls set with the addresses of the healthy endpoints of role that src
// reports, on every change, until ctx ends (a P/D sidecar follows the prefill engines the
// router can name this way).
func FollowAddresses(ctx context.Context, src Source, role string, set func([]string)) {
	for eps := range src.Watch(ctx) {
		set(Addresses(eps, role))
	}
}

// Addresses returns the addresses of the healthy endpoints of role in eps.
func Addresses(eps []Endpoint, role string) []string {
	var out []string
	for _, e := range eps {
		if e.Healthy && e.Role == role {
			out = append(out, e.Address)
		}
	}
	return out
}
