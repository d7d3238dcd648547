package kvindex_test

import (
	"bytes"
	"fmt"
	"sync"
	"testing"

	"github.com/kvgate/kvgate/kvindex"
)

// TestConcurrentReadersAndAppliers runs readers, two appliers and a
// snapshot writer at once (meant for -race). A pinned endpoint's prefix,
// stored before the start and never touched, must match in full on every
// read; answers must stay well formed; and when everyone is done the index
// must equal the model fed the same per-endpoint event streams.
func TestConcurrentReadersAndAppliers(t *testing.T) {
	x := kvindex.New(nil)
	m := newModel()
	pinned := x.Endpoint("pinned")
	m.ep("pinned")
	pinEv := chain(0, 40, kvindex.TierGPU)
	x.ApplyStored(pinned, pinEv)
	m.stored("pinned", pinEv)
	pinQ := query(40)

	// Each applier owns two endpoints and a deterministic script, so the
	// final state does not depend on interleaving.
	type step struct {
		name string
		do   func(x *kvindex.Index, ep kvindex.EndpointID)
		mdo  func(m *model, name string)
	}
	script := func(base int) []step {
		var s []step
		for i := range 300 {
			name := fmt.Sprint("w", base, "-", i%2)
			switch i % 6 {
			case 0, 1, 2:
				n := 5 + i%30
				if i%50 == 0 {
					n = 700 // spans several write-lock chunks
				}
				ev := chain(0, n, kvindex.Tier(i%3))
				s = append(s, step{name, func(x *kvindex.Index, ep kvindex.EndpointID) { x.ApplyStored(ep, ev) },
					func(m *model, n string) { m.stored(n, ev) }})
			case 3:
				ev := kvindex.Removed{Hashes: []kvindex.ExternalHash{kvindex.ExternalHash(i % 7), 3}, Tier: kvindex.Tier(i % 3)}
				s = append(s, step{name, func(x *kvindex.Index, ep kvindex.EndpointID) { x.ApplyRemoved(ep, ev) },
					func(m *model, n string) { m.removed(n, ev) }})
			case 4:
				s = append(s, step{name, func(x *kvindex.Index, ep kvindex.EndpointID) { x.ApplyCleared(ep) },
					func(m *model, n string) { m.cleared(n) }})
			case 5:
				s = append(s, step{name, func(x *kvindex.Index, ep kvindex.EndpointID) { x.RemoveEndpoint(ep) },
					func(m *model, n string) { m.removeEndpoint(n) }})
			}
		}
		return s
	}
	scripts := [][]step{script(0), script(1)}

	stop := make(chan struct{})
	var readers, appliers sync.WaitGroup
	errs := make(chan error, 8)
	for r := range 3 {
		readers.Add(1)
		go func() {
			defer readers.Done()
			var out kvindex.Matches
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				x.FindMatches(pinQ[:1+(i+r)%40], &out)
				found := false
				for j, mt := range out.Endpoints {
					if j > 0 && out.Endpoints[j-1].Endpoint >= mt.Endpoint {
						errs <- fmt.Errorf("unsorted endpoints %+v", out.Endpoints)
						return
					}
					if mt.Tiers[0]+mt.Tiers[1]+mt.Tiers[2] != mt.Blocks || mt.Blocks > out.Depth || mt.Blocks <= 0 {
						errs <- fmt.Errorf("malformed match %+v depth %d", mt, out.Depth)
						return
					}
					if mt.Endpoint == pinned {
						found = mt.Blocks == 1+(i+r)%40
					}
				}
				if !found {
					errs <- fmt.Errorf("pinned prefix not fully matched: %+v", out.Endpoints)
					return
				}
				_ = x.Blocks(pinned)
				_ = x.EndpointName(pinned)
			}
		}()
	}
	readers.Add(1)
	go func() {
		defer readers.Done()
		var buf bytes.Buffer
		for {
			select {
			case <-stop:
				return
			default:
			}
			buf.Reset()
			if err := x.WriteSnapshot(&buf); err != nil {
				errs <- err
				return
			}
			y := kvindex.New(nil)
			if err := y.ReadSnapshot(&buf); err != nil {
				errs <- err
				return
			}
			if y.Blocks(y.Endpoint("pinned")) != 40 {
				errs <- fmt.Errorf("snapshot lost the pinned endpoint")
				return
			}
		}
	}()
	for _, s := range scripts {
		appliers.Add(1)
		go func() {
			defer appliers.Done()
			for _, st := range s {
				st.do(x, x.Endpoint(st.name))
			}
		}()
	}
	appliers.Wait()
	close(stop)
	readers.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	for _, s := range scripts {
		for _, st := range s {
			m.ep(st.name)
			st.mdo(m, st.name)
		}
	}
	// Endpoints removed last exist in the index only if re-interned; make
	// both sides agree on the set of names before comparing.
	for name := range m.eps {
		x.Endpoint(name)
	}
	var rnd = newRand(1)
	checkAll(t, x, m, rnd)
}
