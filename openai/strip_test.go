package openai

import (
	"bytes"
	"testing"
)

func TestUsageStripper(t *testing.T) {
	const (
		a     = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a\"}}]}\n\n"
		b     = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"b\"}}],\"usage\":null}\n\n"
		usage = "data: {\"id\":\"x\",\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":2,\"total_tokens\":5}}\n\n"
		done  = "data: [DONE]\n\n"
	)
	cases := []struct {
		name   string
		pieces []string
		want   string
	}{
		{"whole", []string{a + b + usage + done}, a + b + done},
		{"byte by byte", split(a+usage+done, 1), a + done},
		{"crlf", []string{"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":1}}\r\n\r\n", done}, done},
		{"usage with choices stays", []string{"data: {\"choices\":[{\"index\":0}],\"usage\":{\"prompt_tokens\":1}}\n\n"}, "data: {\"choices\":[{\"index\":0}],\"usage\":{\"prompt_tokens\":1}}\n\n"},
		{"unterminated tail", []string{a, "data: {\"choi"}, a + "data: {\"choi"},
		{"unterminated usage tail dropped", []string{a, usage[:len(usage)-2]}, a},
		{"not json", []string{"data: usage\n\n"}, "data: usage\n\n"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var s UsageStripper
			var got []byte
			for _, p := range c.pieces {
				got = append(got, s.Write([]byte(p))...)
			}
			got = append(got, s.Flush()...)
			if string(got) != c.want {
				t.Errorf("got  %q\nwant %q", got, c.want)
			}
		})
	}
}

// TestUsageStripperPassesEventsAtOnce checks a complete event goes on with the piece that
// completes it.
func TestUsageStripperPassesEventsAtOnce(t *testing.T) {
	var s UsageStripper
	if out := s.Write([]byte("data: {\"choices\":[]}")); len(out) != 0 {
		t.Errorf("partial event passed: %q", out)
	}
	if out := s.Write([]byte("\n\ndata: x")); string(out) != "data: {\"choices\":[]}\n\n" {
		t.Errorf("completed event not passed: %q", out)
	}
}

func split(s string, n int) []string {
	var out []string
	for len(s) > n {
		out = append(out, s[:n])
		s = s[n:]
	}
	return append(out, s)
}

// FuzzUsageStripper checks the stripper never panics, only ever removes whole usage-only
// events, and gives the same output however the stream is cut.
func FuzzUsageStripper(f *testing.F) {
	f.Add([]byte("data: {\"choices\":[],\"usage\":{\"prompt_tokens\":1}}\n\ndata: [DONE]\n\n"), 5)
	f.Add([]byte("data: a\r\n\r\ndata: b\n\n"), 3)
	f.Fuzz(func(t *testing.T, in []byte, cut int) {
		if cut < 0 {
			cut = -cut
		}
		cut %= len(in) + 1
		var s1, s2 UsageStripper
		whole := append(s1.Write(in), s1.Flush()...)
		parts := append(s2.Write(in[:cut]), s2.Write(in[cut:])...)
		parts = append(parts, s2.Flush()...)
		if !bytes.Equal(whole, parts) {
			t.Fatalf("output depends on the cut:\n%q\n%q", whole, parts)
		}
		if len(whole) > len(in) {
			t.Fatalf("output longer than input")
		}
		if !bytes.Contains(in, []byte(`"usage"`)) && !bytes.Equal(whole, in) {
			t.Fatalf("a stream without usage was changed:\n%q\n%q", in, whole)
		}
	})
}
