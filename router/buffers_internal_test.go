package router

import (
	"bytes"
	"math/rand/v2"
	"testing"
)

// TestContainsOutside compares containsOutside with bytes.Contains on bodies whose key
// occurrences sit before, inside and after the inner slice: it must find exactly those
// outside, and fall back to the whole body when inner is not a part of it.
func TestContainsOutside(t *testing.T) {
	key := []byte(`"stream_options"`)
	rng := rand.New(rand.NewPCG(18, 3))
	pieces := []string{`"stream_options"`, `"stream_`, `options"`, `x`, `,`, `"`, `{`, `}`}
	gen := func() string {
		var b bytes.Buffer
		for range rng.IntN(6) {
			b.WriteString(pieces[rng.IntN(len(pieces))])
		}
		return b.String()
	}
	for range 20000 {
		pre, in, post := gen(), "["+gen()+"]", gen()
		body := []byte(pre + in + post)
		inner := body[len(pre) : len(pre)+len(in)]
		want := bytes.Contains([]byte(pre), key) || bytes.Contains([]byte(post), key)
		if got := containsOutside(body, inner, key); got != want {
			t.Fatalf("containsOutside(%q, [%d:%d]) = %v, want %v", body, len(pre), len(pre)+len(in), got, want)
		}
		if got, want := containsOutside(body, []byte(in), key), bytes.Contains(body, key); got != want {
			t.Fatalf("inner not of body: containsOutside(%q) = %v, want %v", body, got, want)
		}
		if got, want := containsOutside(body, nil, key), bytes.Contains(body, key); got != want {
			t.Fatalf("no inner: containsOutside(%q) = %v, want %v", body, got, want)
		}
	}
}
