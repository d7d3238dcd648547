package router_test

import (
	"net/http"
	"testing"

	"github.com/kvgate/kvgate/router"
)

// BenchmarkAdmission times what the admission queue adds to a decision when there is room
// (the common case): ClassOf on a request's headers and Submit (lock, empty-queue check,
// pick), then Done, against Pick and Done alone, over 8 endpoints and a 1,024-token prompt.
func BenchmarkAdmission(b *testing.B) {
	tokens := make([]uint32, 1024)
	for i := range tokens {
		tokens[i] = uint32(i * 7919 % 150000)
	}
	h := http.Header{}
	h.Set(router.HeaderPriority, "3")
	h.Set("Authorization", "Bearer sk-0123456789abcdef")
	for _, bc := range []struct {
		name  string
		admit bool
	}{{"pick", false}, {"submit", true}} {
		b.Run(bc.name, func(b *testing.B) {
			r, _ := newRouter(b, endpoints(8), func(c *router.Config) { c.Seed = 1 })
			p := router.Prompt{Model: model, Tokens: tokens}
			b.ReportAllocs()
			for b.Loop() {
				var d *router.Decision
				var err error
				if bc.admit {
					var c router.Class
					if c, err = r.ClassOf(model, h); err == nil {
						d, _, err = r.Submit(p, c)
					}
				} else {
					d, err = r.Pick(p)
				}
				if err != nil {
					b.Fatal(err)
				}
				d.Done(nil, nil)
			}
		})
	}
}
