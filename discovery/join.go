package discovery

import "context"

// Join is a Source over several sources: each set it sends holds the latest set of every
// source (sorted by Name), once each of them has sent one. The router uses it to follow an
// endpoints file and Consul at once.
type Join []Source

var _ Source = Join(nil)

// Watch implements Source.
func (j Join) Watch(ctx context.Context) <-chan []Endpoint {
	type report struct {
		i   int
		eps []Endpoint
	}
	in := make(chan report)
	for i, src := range j {
		go func() {
			for eps := range src.Watch(ctx) {
				select {
				case in <- report{i, eps}:
				case <-ctx.Done():
				}
			}
		}()
	}
	box := newLatest()
	go func() {
		sets := make([][]Endpoint, len(j))
		seen := make([]bool, len(j))
		missing := len(j)
		for {
			var r report
			select {
			case <-ctx.Done():
				return
			case r = <-in:
			}
			if !seen[r.i] {
				seen[r.i] = true
				missing--
			}
			sets[r.i] = r.eps
			if missing > 0 {
				continue
			}
			var all []Endpoint
			for _, s := range sets {
				all = append(all, s...)
			}
			box.put(sortedCopy(all))
		}
	}()
	return forward(ctx, box, nil)
}
