package planner_test

import (
	"bytes"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kvgate/kvgate/engine/sim"
	"github.com/kvgate/kvgate/planner"
)

const profileYAML = `name: test
gpus_per_engine: 1
prefill:
  - prompt_tokens: 4000
    points:
      - {ttft_ms: 400, tokens_per_s: 4000}
      - {ttft_ms: 200, tokens_per_s: 1000}
  - prompt_tokens: 1000
    points:
      - {ttft_ms: 100, tokens_per_s: 2000}
      - {ttft_ms: 300, tokens_per_s: 8000}
decode:
  - context_tokens: 1000
    points:
      - {itl_ms: 10, tokens_per_s: 100}
      - {itl_ms: 50, tokens_per_s: 2100}
`

func TestProfileLookup(t *testing.T) {
	p, err := planner.ParseProfile([]byte(profileYAML))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		got  float64
		want float64
	}{
		{"on a point", p.PrefillThroughput(1000, 100*time.Millisecond), 2000},
		{"between points", p.PrefillThroughput(1000, 200*time.Millisecond), 5000},
		{"past the last point", p.PrefillThroughput(1000, time.Hour), 8000},
		{"target unreachable: lightest level", p.PrefillThroughput(1000, time.Millisecond), 2000},
		{"between lengths", p.PrefillThroughput(2500, 300*time.Millisecond), (8000 + 2500) / 2},
		{"past the longest", p.PrefillThroughput(1e6, 400*time.Millisecond), 4000},
		{"below the shortest", p.PrefillThroughput(10, 300*time.Millisecond), 8000},
		{"decode", p.DecodeThroughput(500, 30*time.Millisecond), 1100},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if math.Abs(tc.got-tc.want) > 1e-6 {
				t.Fatalf("got %v, want %v", tc.got, tc.want)
			}
		})
	}
}

func TestProfileErrors(t *testing.T) {
	for _, tc := range []struct{ name, doc, want string }{
		{"unknown key", "prefil: []\n", "line 1"},
		{"no decode", "prefill: [{prompt_tokens: 1, points: [{ttft_ms: 1, tokens_per_s: 1}]}]\n", "needs prefill and decode"},
		{"zero throughput", strings.Replace(profileYAML, "tokens_per_s: 100}", "tokens_per_s: 0}", 1), "decode[0].points[0]"},
		{"not yaml", "{", "profile"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := planner.ParseProfile([]byte(tc.doc))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("ParseProfile: %v, want an error with %q", err, tc.want)
			}
		})
	}
}

func TestProfileFileRoundTrip(t *testing.T) {
	p := planner.ProfileFromSim(sim.Config{})
	var buf bytes.Buffer
	if err := p.Write(&buf); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "profile.json")
	if err := os.WriteFile(path, buf.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	q, err := planner.LoadProfile(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range []float64{100, 3000, 50000} {
		if a, b := p.PrefillThroughput(l, 3*time.Second), q.PrefillThroughput(l, 3*time.Second); a != b {
			t.Fatalf("prefill at %v tokens: %v before, %v after the file", l, a, b)
		}
	}
}

// The derived profile behaves like an engine: more latency allowed buys more throughput, and
// longer prompts and contexts cost more.
func TestProfileFromSimShape(t *testing.T) {
	p := planner.ProfileFromSim(sim.Config{})
	if err := p.Validate(); err != nil {
		t.Fatal(err)
	}
	if a, b := p.PrefillThroughput(2048, time.Second), p.PrefillThroughput(2048, 3*time.Second); !(b > a) {
		t.Fatalf("prefill throughput at 1s %v, at 3s %v: want more with a looser target", a, b)
	}
	if a, b := p.DecodeThroughput(2048, 20*time.Millisecond), p.DecodeThroughput(2048, 60*time.Millisecond); !(b > a) {
		t.Fatalf("decode throughput at 20ms %v, at 60ms %v", a, b)
	}
	if a, b := p.DecodeThroughput(1000, 50*time.Millisecond), p.DecodeThroughput(30000, 50*time.Millisecond); !(a > b) {
		t.Fatalf("decode throughput at 1k context %v, at 30k %v: want less with more context", a, b)
	}
}

func FuzzParseProfile(f *testing.F) {
	f.Add([]byte(profileYAML))
	f.Add([]byte(`{"prefill": [{"prompt_tokens": 1, "points": []}], "decode": null}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := planner.ParseProfile(data)
		if err != nil {
			return
		}
		for _, x := range []float64{0, 1, 1e3, 1e9} {
			a := p.PrefillThroughput(x, time.Second)
			b := p.DecodeThroughput(x, time.Millisecond)
			if !(a > 0) || !(b > 0) || math.IsInf(a, 0) || math.IsInf(b, 0) {
				t.Fatalf("valid profile gave throughput %v, %v", a, b)
			}
		}
	})
}
