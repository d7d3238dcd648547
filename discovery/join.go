package discovery

import "context"

// Join is a Source over several sources: each set it sends holds the latest set of every
// source that has reported (sorted by Name), sent on every report, so that one source that
// cannot report yet (a Consul agent down) never holds back the others. The router uses it to
// follow an endpoints file and Consul at once.
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
		for {
			var r report
			select {
			case <-ctx.Done():
				return
			case r = <-in:
			}
			sets[r.i] = r.eps
			var all []Endpoint
			for _, s := range sets {
				all = append(all, s...)
			}
			box.put(sortedCopy(all))
		}
	}()
	return forward(ctx, box, nil)
}
