package router_test

import (
	"net/http"
	"testing"

	"github.com/kvgate/kvgate/router"
)

// FuzzClassOf: any header values give a class within bounds (or a 400), never a panic, and a
// fairness ID short enough to be a queue key and a label.
func FuzzClassOf(f *testing.F) {
	r, _ := newRouter(f, endpoints(1), nil)
	f.Add("5", "tenant-a", "Bearer sk-1")
	f.Add("-1", "", "")
	f.Add("99999999999999999999", "\x00\xff", "x")
	f.Add(" 7 ", string(make([]byte, 300)), "")
	f.Fuzz(func(t *testing.T, prio, fairness, auth string) {
		h := http.Header{}
		h.Set(router.HeaderPriority, prio)
		h.Set(router.HeaderFairnessID, fairness)
		h.Set("Authorization", auth)
		c, err := r.ClassOf(model, h)
		if err != nil {
			if router.RejectedReason(err) != "" {
				t.Fatalf("a malformed header is not a rejection: %v", err)
			}
			return
		}
		if c.Priority < router.MinPriority || c.Priority > router.MaxPriority {
			t.Fatalf("priority %d out of bounds", c.Priority)
		}
		if c.FairnessID == "" || len(c.FairnessID) > 64 {
			t.Fatalf("fairness ID %q", c.FairnessID)
		}
	})
}
