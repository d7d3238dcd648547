package workload

import (
	"strings"
	"testing"
	"time"
)

func TestRateProfile(t *testing.T) {
	p, err := ParseRateProfile("0:1,10:2,20:0.5")
	if err != nil {
		t.Fatal(err)
	}
	tr := &Trace{}
	for i := range 40 { // one request a second of trace time
		tr.Requests = append(tr.Requests, Request{Arrival: time.Duration(i) * time.Second})
	}
	tr.ApplyRateProfile(p)
	// 0-10 s: 10 requests at 1/s; 10-20 s: 20 requests at 2/s; then one each 2 s.
	for _, tc := range []struct {
		i    int
		want time.Duration
	}{{5, 5 * time.Second}, {10, 10 * time.Second}, {11, 10500 * time.Millisecond}, {29, 19500 * time.Millisecond}, {30, 20 * time.Second}, {31, 22 * time.Second}} {
		if got := tr.Requests[tc.i].Arrival; got != tc.want {
			t.Errorf("request %d arrives at %v, want %v", tc.i, got, tc.want)
		}
	}
	if m := p.Mean(40 * time.Second); m != (10*1+10*2+20*0.5)/40.0 {
		t.Errorf("mean %v", m)
	}
	if pk := p.Peak(40 * time.Second); pk != 2 {
		t.Errorf("peak %v", pk)
	}
}

func TestRateProfileErrors(t *testing.T) {
	for _, s := range []string{"", "0", "a:1", "0:0", "0:-1", "10:1,5:2", "0:1,0:2", "-1:1", "0:NaN"} {
		if _, err := ParseRateProfile(s); err == nil || !strings.Contains(err.Error(), "rate profile") {
			t.Errorf("ParseRateProfile(%q): %v, want an error", s, err)
		}
	}
}

func FuzzParseRateProfile(f *testing.F) {
	f.Add("0:1,600:3,1800:1")
	f.Fuzz(func(t *testing.T, s string) {
		p, err := ParseRateProfile(s)
		if err != nil {
			return
		}
		tr := &Trace{Requests: []Request{{Arrival: 0}, {Arrival: time.Hour}}}
		tr.ApplyRateProfile(p)
		if tr.Requests[1].Arrival < tr.Requests[0].Arrival {
			t.Fatalf("%q reordered arrivals", s)
		}
	})
}
