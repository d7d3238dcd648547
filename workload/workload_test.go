package workload_test

import (
	"bytes"
	"slices"
	"strings"
	"testing"

	"github.com/kvgate/kvgate/workload"
)

func TestReadMooncakeSharedTrace(t *testing.T) {
	tr, err := workload.ReadFile("testdata/mooncake_synthetic_trace.jsonl")
	if err != nil {
		t.Fatal(err)
	}
	if got := len(tr.Requests); got != 3993 {
		t.Fatalf("requests = %d, want 3993", got)
	}
	// Facts published with the trace: 43,924 distinct blocks, 64.0% of prompt blocks reused
	// with one infinite cache.
	seen := map[int]bool{}
	total, reused := 0, 0
	for _, r := range tr.Requests {
		for _, h := range r.HashIDs {
			total++
			if seen[h] {
				reused++
			}
			seen[h] = true
		}
	}
	if len(seen) != 43924 {
		t.Errorf("distinct blocks = %d, want 43924", len(seen))
	}
	if ratio := float64(reused) / float64(total); ratio < 0.635 || ratio > 0.645 {
		t.Errorf("infinite-cache reuse = %.4f, want 0.640", ratio)
	}
	last := tr.Requests[len(tr.Requests)-1]
	if last.Arrival.Seconds() < 1000 || last.Arrival.Seconds() > 1100 {
		t.Errorf("last arrival = %v, want about 1,022 s", last.Arrival)
	}
}

func TestMooncakeEqualHashIDsGiveEqualTokens(t *testing.T) {
	in := `{"timestamp": 0, "input_length": 1100, "output_length": 5, "hash_ids": [7, 8, 9]}
{"timestamp": 12.5, "input_length": 700, "output_length": 3, "hash_ids": [7, 10]}
{"timestamp": 20, "input_length": 600, "output_length": 3, "hash_ids": [11, 8]}
`
	tr, err := workload.ReadMooncake(strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	a, b, c := tr.Requests[0].Tokens(), tr.Requests[1].Tokens(), tr.Requests[2].Tokens()
	if len(a) != 1100 || len(b) != 700 || len(c) != 600 {
		t.Fatalf("lengths %d %d %d", len(a), len(b), len(c))
	}
	if !slices.Equal(a[:512], b[:512]) {
		t.Error("hash id 7 gave different tokens in two requests")
	}
	if slices.Equal(a[512:700], b[512:700]) {
		t.Error("hash ids 8 and 10 gave equal tokens")
	}
	// Same id at another position is still the same block of tokens.
	if !slices.Equal(a[512:600], c[512:600]) {
		t.Error("hash id 8 at position 1 gave different tokens")
	}
	if slices.Equal(a[:512], c[:512]) {
		t.Error("hash ids 7 and 11 gave equal tokens")
	}
	if tr.Requests[1].Arrival.Milliseconds() != 12 || tr.Requests[1].Arrival.Microseconds() != 12500 {
		t.Errorf("arrival = %v, want 12.5ms", tr.Requests[1].Arrival)
	}
	for _, tok := range a {
		if tok < 1000 || tok >= 100000 {
			t.Fatalf("token %d outside the ordinary vocabulary range", tok)
		}
	}
}

func TestReadMooncakeErrors(t *testing.T) {
	for _, tc := range []struct{ name, in, want string }{
		{"not json", "{oops", "line 1"},
		{"missing length", `{"timestamp": 0, "output_length": 1, "hash_ids": [1]}`, "missing input_length"},
		{"ids do not cover", `{"timestamp": 0, "input_length": 1024, "output_length": 1, "hash_ids": [1]}`, "needs 2 hash_ids"},
		{"negative id", `{"timestamp": 0, "input_length": 10, "output_length": 1, "hash_ids": [-1]}`, "negative hash id"},
		{"empty", "\n\n", "no requests"},
		{"second line", "{\"timestamp\": 0, \"input_length\": 1, \"output_length\": 1, \"hash_ids\": [1]}\n[]", "line 2"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := workload.ReadMooncake(strings.NewReader(tc.in))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want it to mention %q", err, tc.want)
			}
		})
	}
}

func TestSyntheticSharesSystemPromptAndHistory(t *testing.T) {
	cfg := workload.DefaultSynthetic()
	cfg.Conversations, cfg.Turns, cfg.SystemPrompts = 20, 3, 2
	tr, err := cfg.Generate()
	if err != nil {
		t.Fatal(err)
	}
	if len(tr.Requests) != 60 {
		t.Fatalf("requests = %d, want 60", len(tr.Requests))
	}
	tr2, _ := cfg.Generate()
	for i := range tr.Requests {
		if !slices.Equal(tr.Requests[i].Tokens(), tr2.Requests[i].Tokens()) || tr.Requests[i].Arrival != tr2.Requests[i].Arrival {
			t.Fatal("same configuration gave a different trace")
		}
	}
	bySession := map[int][]workload.Request{}
	for i, r := range tr.Requests {
		if i > 0 && r.Arrival < tr.Requests[i-1].Arrival {
			t.Fatal("requests not ordered by arrival")
		}
		bySession[r.Session] = append(bySession[r.Session], r)
	}
	sysPrefixes := map[string]bool{}
	for _, turns := range bySession {
		for k := 1; k < len(turns); k++ {
			prev, cur := turns[k-1].Tokens(), turns[k].Tokens()
			if turns[k].Turn != k || len(cur) <= len(prev) || !slices.Equal(cur[:len(prev)], prev) {
				t.Fatal("a turn does not extend the previous turn's prompt")
			}
		}
		first := turns[0].Tokens()
		sysPrefixes[string(u32bytes(first[:cfg.SystemTokens]))] = true
	}
	if len(sysPrefixes) != 2 {
		t.Errorf("distinct system prompts = %d, want 2", len(sysPrefixes))
	}
}

func TestSyntheticValidate(t *testing.T) {
	cfg := workload.DefaultSynthetic()
	cfg.Rate = 0
	if _, err := cfg.Generate(); err == nil {
		t.Fatal("rate 0 accepted")
	}
}

func TestScaleRate(t *testing.T) {
	tr, _ := workload.ReadMooncake(strings.NewReader(`{"timestamp": 1000, "input_length": 1, "output_length": 1, "hash_ids": [1]}`))
	if err := tr.ScaleRate(4); err != nil {
		t.Fatal(err)
	}
	if tr.Requests[0].Arrival.Milliseconds() != 250 {
		t.Fatalf("arrival = %v", tr.Requests[0].Arrival)
	}
	if tr.ScaleRate(0) == nil {
		t.Fatal("scale 0 accepted")
	}
}

func u32bytes(v []uint32) []byte {
	var b bytes.Buffer
	for _, x := range v {
		b.Write([]byte{byte(x), byte(x >> 8), byte(x >> 16), byte(x >> 24)})
	}
	return b.Bytes()
}

func FuzzReadMooncake(f *testing.F) {
	f.Add([]byte(`{"timestamp": 0, "input_length": 1100, "output_length": 5, "hash_ids": [7, 8, 9]}`))
	f.Add([]byte(`{"timestamp": -1}`))
	f.Add([]byte("{\"timestamp\": 1e300, \"input_length\": 1, \"output_length\": 1, \"hash_ids\": [1]}\n"))
	f.Fuzz(func(t *testing.T, in []byte) {
		tr, err := workload.ReadMooncake(bytes.NewReader(in))
		if err != nil {
			return
		}
		for _, r := range tr.Requests {
			if r.InputLength > 1<<20 {
				continue
			}
			if got := len(r.Tokens()); got != r.InputLength {
				t.Fatalf("tokens = %d, want input_length %d", got, r.InputLength)
			}
		}
	})
}
