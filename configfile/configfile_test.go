package configfile_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/kvgate/kvgate/configfile"
)

type dur time.Duration

func (d *dur) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("want a duration such as \"2s\"")
	}
	v, err := time.ParseDuration(s)
	*d = dur(v)
	return err
}

type inner struct {
	ServerName string `json:"server_name"`
	CA         string `json:"ca"`
}

type sample struct {
	Name      string            `json:"name"`
	BlockSize int               `json:"block_size"`
	Healthy   *bool             `json:"healthy"`
	RouterTLS *inner            `json:"router_tls"`
	Pools     map[string][]item `json:"pools"`
	Timeout   dur               `json:"timeout"`
	Tags      []string          `json:"tags"`
}

type item struct {
	Address string `json:"address"`
	Weight  uint32 `json:"weight"`
}

func TestDecode(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		want     string // fmt %+v of the result, "" to skip
		warns    []string
		err      string
	}{
		{name: "snake case", in: "name: a\nblock_size: 32\nrouter_tls: {server_name: r, ca: /ca}\ntimeout: 2s\n",
			want: `{Name:a BlockSize:32 Healthy:<nil> RouterTLS:0x ServerName:r CA:/ca Timeout:2000000000}`},
		{name: "json", in: `{"name":"a","block_size":8,"pools":{"m":[{"address":"x:1","weight":3}]}}`,
			want: `{Name:a BlockSize:8 Pools:map[m:[{Address:x:1 Weight:3}]]}`},
		{name: "camel case read, warned", in: "name: a\nblockSize: 32\nrouterTLS:\n  serverName: r\n",
			want:  `{Name:a BlockSize:32 ServerName:r}`,
			warns: []string{`line 2: "blockSize" is deprecated, write "block_size"`, `line 3: "routerTLS" is deprecated, write "router_tls"`, `line 4: "router_tls.serverName" is deprecated, write "server_name"`}},
		{name: "renamed", in: "router_tls: {sni: r}\n", want: `{ServerName:r}`, warns: []string{`"router_tls.sni" is deprecated, write "server_name"`}},
		{name: "unknown key", in: "name: a\n\nblok_size: 3\n", err: `line 3: unknown field "blok_size" (known: block_size, healthy, name, pools, router_tls, tags, timeout)`},
		{name: "unknown nested", in: "pools:\n  m:\n  - address: x\n    wieght: 1\n", err: `line 4: pools.m[0]: unknown field "wieght"`},
		{name: "both spellings", in: "block_size: 1\nblockSize: 2\n", err: `line 2: block_size: given twice`},
		{name: "wrong type", in: "block_size: many\n", err: `line 1: block_size: want an integer, got "many"`},
		{name: "negative uint", in: "pools: {m: [{weight: -1}]}\n", err: `pools.m[0].weight: want a non-negative integer`},
		{name: "bad duration", in: "\ntimeout: 5\n", err: `line 2: timeout: want a duration`},
		{name: "list for mapping", in: "- a\n", err: `line 1: want a mapping, got a list`},
		{name: "scalar for list", in: "tags: x\n", err: `line 1: tags: want a list, got "x"`},
		{name: "alias", in: "name: &x a\ntags: [*x]\n", err: "aliases are not supported"},
		{name: "syntax", in: "name: [\n", err: "line 1: did not find"},
		{name: "empty", in: "", want: `{Name: BlockSize:0`},
		{name: "null value", in: "name: ~\nrouter_tls:\n", want: `{Name: BlockSize:0`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var s sample
			meta, err := configfile.Decode([]byte(tc.in), &s, map[string]string{"sni": "server_name"})
			if tc.err != "" {
				var ce *configfile.Error
				if err == nil || !strings.Contains(err.Error(), tc.err) || !errors.As(err, &ce) {
					t.Fatalf("err = %v, want an *Error containing %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got := fmt.Sprintf("%+v", s)
			if s.RouterTLS != nil {
				got = strings.Replace(got, fmt.Sprintf("%p", s.RouterTLS), fmt.Sprintf("0x %+v", *s.RouterTLS), 1)
			}
			for _, part := range strings.Fields(strings.Trim(tc.want, "{}")) {
				if !strings.Contains(got, part) {
					t.Errorf("got %s, want it to hold %s", got, part)
				}
			}
			if len(meta.Warnings) != len(tc.warns) {
				t.Fatalf("warnings %q, want %d", meta.Warnings, len(tc.warns))
			}
			for i, w := range tc.warns {
				if !strings.Contains(meta.Warnings[i], w) {
					t.Errorf("warning %q, want %q", meta.Warnings[i], w)
				}
			}
		})
	}
}

func TestLinesAndErrorf(t *testing.T) {
	var s []item
	meta, err := configfile.Decode([]byte("- address: a\n\n- address: b\n  weight: 2\n"), &s, nil)
	if err != nil {
		t.Fatal(err)
	}
	if meta.Line("[1]") != 3 || meta.Line("[1].weight") != 4 {
		t.Fatalf("lines [1]=%d [1].weight=%d, want 3 and 4", meta.Line("[1]"), meta.Line("[1].weight"))
	}
	if got := meta.Errorf("[1].weight", "too heavy").Error(); got != "line 4: [1].weight: too heavy" {
		t.Fatalf("Errorf = %q", got)
	}
}

func TestSnake(t *testing.T) {
	for in, want := range map[string]string{
		"blockSize": "block_size", "routerTLS": "router_tls", "metricsURL": "metrics_url",
		"kvEvents": "kv_events", "healthCheckInterval": "health_check_interval", "name": "name",
		"block_size": "block_size", "HTTPServer": "http_server", "x2Y": "x2_y",
	} {
		if got := configfile.Snake(in); got != want {
			t.Errorf("Snake(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestMapping(t *testing.T) {
	if !configfile.Mapping([]byte("a: 1")) || configfile.Mapping([]byte("- a")) || configfile.Mapping([]byte("")) {
		t.Fatal("Mapping wrong")
	}
}

// FuzzDecode: any input gives a value or an *Error, never a panic, and whatever decodes
// re-decodes from its JSON form to the same value.
func FuzzDecode(f *testing.F) {
	f.Add([]byte("name: a\nblockSize: 3\npools: {m: [{address: x, weight: 2}]}\ntimeout: 1s\n"))
	f.Add([]byte(`{"router_tls":{"sni":"x"},"tags":["a",1]}`))
	f.Add([]byte("name: &a x\nt: *a\n"))
	f.Add([]byte("pools:\n  1: []\n  ? [a]\n  : 2\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		var s sample
		_, err := configfile.Decode(data, &s, map[string]string{"sni": "server_name"})
		if err != nil {
			var ce *configfile.Error
			if !errors.As(err, &ce) {
				t.Fatalf("error %T %v is not an *Error", err, err)
			}
			return
		}
		js, err := json.Marshal(s)
		if err != nil {
			return // dur has no MarshalJSON of its own: numbers
		}
		var again sample
		if _, err := configfile.Decode(js, &again, nil); err != nil && !strings.Contains(err.Error(), "timeout") {
			t.Fatalf("re-decoding %s: %v", js, err)
		}
	})
}
