package kvindex

import (
	"math/rand/v2"
	"testing"
)

// TestExtTableModel drives the open-addressing table and a Go map with the
// same random puts and deletes over a small key space (so probe runs wrap
// and collide) and compares every key after each step.
func TestExtTableModel(t *testing.T) {
	for _, keys := range []int{8, 100, 3000} {
		rnd := rand.New(rand.NewPCG(uint64(keys), 9))
		var tb extTable
		m := map[ExternalHash]extRef{}
		for step := range 20000 {
			k := ExternalHash(rnd.IntN(keys))
			if rnd.IntN(3) == 0 {
				k = ExternalHash(rnd.Uint64()) // random wide keys too
			}
			if rnd.IntN(5) < 2 {
				tb.del(k)
				delete(m, k)
			} else {
				r := extRef{node: uint32(1 + rnd.IntN(1000)), gen: uint32(step)}
				old, had := tb.put(k, r)
				mo, mhad := m[k]
				if had != mhad || old != mo {
					t.Fatalf("keys %d step %d: put(%d) old %v %v, want %v %v", keys, step, k, old, had, mo, mhad)
				}
				m[k] = r
			}
			if tb.Len() != len(m) {
				t.Fatalf("keys %d step %d: Len %d, want %d", keys, step, tb.Len(), len(m))
			}
			if step%97 == 0 {
				for k, want := range m {
					if got, ok := tb.get(k); !ok || got != want {
						t.Fatalf("keys %d step %d: get(%d) = %v %v, want %v", keys, step, k, got, ok, want)
					}
				}
				n := 0
				tb.all(func(k ExternalHash, r extRef) {
					n++
					if m[k] != r {
						t.Fatalf("all yields %d=%v, map has %v", k, r, m[k])
					}
				})
				if n != len(m) {
					t.Fatalf("all yields %d entries, want %d", n, len(m))
				}
			}
		}
	}
}
