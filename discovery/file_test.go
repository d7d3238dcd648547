package discovery_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kvgate/kvgate/configfile"
	"github.com/kvgate/kvgate/discovery"
	"github.com/kvgate/kvgate/polltest"
)

func TestParseEndpoints(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		want     []discovery.Endpoint
		warns    int
		err      string
	}{
		{name: "every key", in: `
- name: gpu0
  address: http://10.0.0.5:8000/
  models: [m, lora]
  role: prefill
  block_size: 32
  kv_events: tcp://10.0.0.5:5557
  kv_bind: true
  kv_replay: tcp://10.0.0.5:5558
  kv_topic: kv
  metrics_url: http://10.0.0.5:8000/metrics
  workerd: 10.0.0.5:7070
  healthy: false
`, want: []discovery.Endpoint{{Name: "gpu0", Address: "10.0.0.5:8000", Models: []string{"m", "lora"}, Role: "prefill",
			BlockSize: 32, KVEvents: "tcp://10.0.0.5:5557", KVBind: true, KVReplay: "tcp://10.0.0.5:5558", KVTopic: "kv",
			MetricsURL: "http://10.0.0.5:8000/metrics", Workerd: "10.0.0.5:7070"}}},
		{name: "defaults, sorted by name", in: "- {address: \"10.0.0.6:8000\", models: [m]}\n- {name: a, address: \"[::1]:8000\", models: [m]}\n",
			want: []discovery.Endpoint{
				{Name: "10.0.0.6:8000", Address: "10.0.0.6:8000", Models: []string{"m"}, Role: "aggregated", Healthy: true},
				{Name: "a", Address: "[::1]:8000", Models: []string{"m"}, Role: "aggregated", Healthy: true},
			}},
		{name: "json, wrapped", in: `{"endpoints":[{"address":"a:1","models":["m"],"block_size":8}]}`,
			want: []discovery.Endpoint{{Name: "a:1", Address: "a:1", Models: []string{"m"}, Role: "aggregated", BlockSize: 8, Healthy: true}}},
		{name: "old camelCase keys, warned", in: "- {address: \"a:1\", models: [m], blockSize: 8, kvEvents: \"tcp://a:2\", metricsURL: \"http://a:1/m\"}\n",
			want: []discovery.Endpoint{{Name: "a:1", Address: "a:1", Models: []string{"m"}, Role: "aggregated", BlockSize: 8,
				KVEvents: "tcp://a:2", MetricsURL: "http://a:1/m", Healthy: true}}, warns: 3},
		{name: "https address: the engine serves TLS", in: "- {address: \"HTTPS://a:1/\", models: [m]}\n- {address: \"http://b:1\", models: [m]}\n",
			want: []discovery.Endpoint{
				{Name: "a:1", Address: "a:1", Models: []string{"m"}, Role: "aggregated", TLS: true, Healthy: true},
				{Name: "b:1", Address: "b:1", Models: []string{"m"}, Role: "aggregated", Healthy: true},
			}},
		{name: "empty", in: "", want: []discovery.Endpoint{}},
		{name: "unknown key names its line", in: "- address: a:1\n  models: [m]\n- address: b:1\n  models: [m]\n  blok_size: 16\n", err: `line 5: [1]: unknown field "blok_size"`},
		{name: "no address", in: "- name: x\n  models: [m]\n", err: "line 1: [0]: address is required"},
		{name: "bad address", in: "- models: [m]\n  address: nowhere\n", err: `line 2: [0].address: address "nowhere": want host:port`},
		{name: "bad port", in: "- {models: [m], address: \"h:99999\"}\n", err: "port"},
		{name: "no models", in: "- address: a:1\n", err: "line 1: [0]: models is required"},
		{name: "duplicate name", in: "- {name: x, address: \"a:1\", models: [m]}\n- {name: x, address: \"b:1\", models: [m]}\n", err: `line 2: [1].name: name "x" is used twice`},
		{name: "bad role", in: "- {address: \"a:1\", models: [m], role: encoder}\n", err: `[0].role: role "encoder"`},
		{name: "negative block size", in: "- {address: \"a:1\", models: [m], block_size: -1}\n", err: "negative"},
		{name: "wrong type", in: "- {address: \"a:1\", models: [m], block_size: big}\n", err: `[0].block_size: want an integer, got "big"`},
		{name: "both spellings", in: "- {address: \"a:1\", models: [m], block_size: 8, blockSize: 16}\n", err: "given twice"},
		{name: "not a list", in: "42\n", err: "want a list"},
		{name: "wrapped, unknown key", in: "endpoints: []\nengines: []\n", err: `line 2: unknown field "engines"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, warns, err := discovery.ParseEndpoints([]byte(tc.in))
			if tc.err != "" {
				var ce *configfile.Error
				if err == nil || !strings.Contains(err.Error(), tc.err) || !errors.As(err, &ce) {
					t.Fatalf("err = %v, want a configfile.Error with %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("got  %+v\nwant %+v", got, tc.want)
			}
			if len(warns) != tc.warns {
				t.Errorf("warnings %q, want %d", warns, tc.warns)
			}
		})
	}
}

// logBuffer is a slog handler's sink that tests can read while the source writes.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *logBuffer) count(s string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Count(l.buf.String(), s)
}

func writeFile(t *testing.T, path, s string) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// TestFile: a bad file fails NewFile; the file's engines are reported at once and again after
// each edit; an invalid edit or a removed file keeps the last good set; deprecation warnings
// are logged once per load; the channel closes with the context.
func TestFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "engines.yaml")
	writeFile(t, path, "- {address: \"10.0.0.1:8000\", models: [m], blok: 1}\n")
	if _, err := discovery.NewFile(path, 0, nil); err == nil || !strings.Contains(err.Error(), "line 1") {
		t.Fatalf("NewFile on a bad file: %v", err)
	}
	if _, err := discovery.NewFile(filepath.Join(t.TempDir(), "missing.yaml"), 0, nil); err == nil {
		t.Fatal("NewFile on a missing file: no error")
	}

	writeFile(t, path, "- {address: \"10.0.0.1:8000\", models: [m], blockSize: 16}\n")
	var logs logBuffer
	src, err := discovery.NewFile(path, 10*time.Millisecond, slog.New(slog.NewTextHandler(&logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	if n := logs.count("uses a deprecated key"); n != 1 {
		t.Fatalf("deprecation logged %d times at load, want 1", n)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ch := src.Watch(ctx)
	if got := names(recv(t, ch, time.Second)); !reflect.DeepEqual(got, []string{"10.0.0.1:8000"}) {
		t.Fatalf("first set %v", got)
	}
	writeFile(t, path, "- {address: \"10.0.0.1:8000\", models: [m]}\n- {address: \"10.0.0.2:8000\", models: [m]}\n")
	if got := names(recv(t, ch, 5*time.Second)); len(got) != 2 {
		t.Fatalf("after the edit %v", got)
	}
	if n := logs.count("uses a deprecated key"); n != 1 {
		t.Fatalf("deprecation logged %d times after a load without old keys, want 1", n)
	}
	writeFile(t, path, "- {address: \"10.0.0.3:8000\"}\n") // invalid: no models
	waitLog(t, &logs, "endpoints file invalid")
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	waitLog(t, &logs, "endpoints file unreadable")
	quiet(t, ch, 50*time.Millisecond)
	writeFile(t, path, "- {address: \"10.0.0.3:8000\", models: [m], kvEvents: \"tcp://x:1\"}\n")
	if got := names(recv(t, ch, 5*time.Second)); !reflect.DeepEqual(got, []string{"10.0.0.3:8000"}) {
		t.Fatalf("after an invalid edit, a removal and a valid edit: %v", got)
	}
	if n := logs.count("uses a deprecated key"); n != 2 {
		t.Fatalf("deprecation logged %d times after a second load with old keys, want 2", n)
	}
	cancel()
	for range ch {
	}
}

func waitLog(t *testing.T, l *logBuffer, s string) {
	t.Helper()
	polltest.Until(t, 5*time.Second, "log line "+s, func() bool { return l.count(s) > 0 })
}

// FuzzParseEndpoints: any input gives engines or an error, never a panic, and every engine
// returned has the fields the router and xds rely on.
func FuzzParseEndpoints(f *testing.F) {
	f.Add([]byte("- address: a:1\n  models: [m]\n"))
	f.Add([]byte(`{"endpoints":[{"address":"http://a:1","models":["m"],"kv_bind":true,"block_size":-3}]}`))
	f.Add([]byte("- {name: x, address: \"[::1]:80\", models: [m], role: decode, blockSize: 8, healthy: false}\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		eps, _, err := discovery.ParseEndpoints(data)
		if err != nil {
			return
		}
		names := map[string]bool{}
		for _, e := range eps {
			if e.Name == "" || e.Address == "" || len(e.Models) == 0 || e.BlockSize < 0 || names[e.Name] {
				t.Fatalf("bad endpoint %+v", e)
			}
			switch e.Role {
			case discovery.RoleAggregated, discovery.RolePrefill, discovery.RoleDecode:
			default:
				t.Fatalf("role %q", e.Role)
			}
			names[e.Name] = true
		}
	})
}
