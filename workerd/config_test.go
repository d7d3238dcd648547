package workerd

import (
	"strings"
	"testing"
	"time"
)

func TestParseConfigExample(t *testing.T) {
	c, warnings, err := LoadConfig("testdata/workerd.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if len(warnings) != 0 {
		t.Errorf("warnings for a snake_case file: %v", warnings)
	}
	if c.Listen != "0.0.0.0:7070" || c.Node != "gpu-node-12" || c.Consul == nil || c.Consul.Address != "127.0.0.1:8500" {
		t.Fatalf("config = %+v", c)
	}
	if time.Duration(c.Consul.DeregisterAfter) != 10*time.Minute || time.Duration(c.DrainTimeout) != 30*time.Second {
		t.Fatalf("durations: %v %v", c.Consul.DeregisterAfter, c.DrainTimeout)
	}
	if len(c.Engines) != 3 {
		t.Fatalf("%d engines", len(c.Engines))
	}
	e := c.Engines[1]
	if e.Kind != KindSGLang || e.Role != "prefill" || e.GPUs != 2 || e.Env["SGLANG_LOG_LEVEL"] != "info" {
		t.Fatalf("engine 1 = %+v", e)
	}
	if got := c.Engines[0].Args; len(got) != 4 || got[1] != "16384" {
		t.Fatalf("args = %v", got)
	}
}

func TestParseConfigTemplates(t *testing.T) {
	c, warnings, err := LoadConfig("testdata/fleet.yaml")
	if err != nil || len(warnings) != 0 {
		t.Fatal(err, warnings)
	}
	if c.GPUs != 4 || len(c.Engines) != 0 || len(c.Templates) != 3 {
		t.Fatalf("config = %+v", c)
	}
	p, d, s := c.Templates[0], c.Templates[1], c.Templates[2]
	if p.Name != "qwen-prefill" || p.Kind != KindVLLM || p.Role != "prefill" || p.GPUs != 1 || p.MinReplicas != 1 || p.MaxReplicas != 2 {
		t.Fatalf("template 0 = %+v", p)
	}
	if d.Role != "decode" || d.GPUs != 2 || len(d.Args) != 2 || d.gpusPerEngine() != 2 {
		t.Fatalf("template 1 = %+v", d)
	}
	if s.role() != "aggregated" || s.MaxReplicas != 0 || s.spec(3).Name != "sim-3" || s.spec(3).Model != "qwen3-8b" {
		t.Fatalf("template 2 = %+v", s)
	}
}

// TestParseConfigCamelCase: a camelCase key is still read, with a deprecation warning.
func TestParseConfigCamelCase(t *testing.T) {
	c, warnings, err := ParseConfig([]byte("drainTimeout: 5s\nengines:\n  - kind: sim\n    blockSize: 8\n"))
	if err != nil {
		t.Fatal(err)
	}
	if time.Duration(c.DrainTimeout) != 5*time.Second || c.Engines[0].BlockSize != 8 {
		t.Fatalf("config = %+v", c)
	}
	if len(warnings) != 2 || !strings.Contains(warnings[0], "drain_timeout") || !strings.Contains(warnings[1], "block_size") {
		t.Fatalf("warnings = %q, want one for drainTimeout and one for blockSize", warnings)
	}
}

func TestParseConfigRejects(t *testing.T) {
	tests := []struct {
		name, yaml, want string
	}{
		{"unknown field", "engines: []\nlisten_addr: x\n", `line 2: unknown field "listen_addr"`},
		{"unknown engine field", "engines:\n  - kind: sim\n    gpu: 1\n", `line 3: engines[0]: unknown field "gpu"`},
		{"unknown kind", "engines: [{kind: tgi, model: m}]", `unknown kind "tgi"`},
		{"no kind", "engines: [{model: m}]", "kind missing"},
		{"no model", "engines: [{kind: vllm}]", "model missing"},
		{"bad role", "engines: [{kind: sim, role: both}]", `unknown role "both"`},
		{"same name", "engines: [{kind: sim, name: a}, {kind: sim, name: a}]", "name used twice"},
		{"same port", "engines: [{kind: sim, port: 9000}, {kind: sim, kv_events_port: 9000}]", "port 9000 already used"},
		{"bad port", "engines: [{kind: sim, port: 70000}]", "out of range"},
		{"bad duration", "drain_timeout: soon\nengines: []", "invalid duration"},
		{"bad listen", "listen: nowhere\nengines: []", "listen"},
		{"unknown template field", "templates:\n  - name: t\n    kind: sim\n    replicas: 2\n", `line 4: templates[0]: unknown field "replicas"`},
		{"template no name", "templates: [{kind: sim}]", "name missing"},
		{"template same name", "templates: [{name: t, kind: sim}, {name: t, kind: sim}]", "name used twice"},
		{"template no model", "templates: [{name: t, kind: vllm}]", "model missing"},
		{"template bad role", "templates: [{name: t, kind: sim, role: both}]", `unknown role "both"`},
		{"template min above max", "templates: [{name: t, kind: sim, min_replicas: 3, max_replicas: 2}]", "min_replicas 3 above max_replicas 2"},
		{"template negative", "templates: [{name: t, kind: sim, min_replicas: -1}]", "negative"},
		{"template name clash", "engines: [{kind: sim, name: t-0}]\ntemplates: [{name: t, kind: sim}]", `engine "t-0" has a name`},
		{"negative gpus", "gpus: -1\nengines: []", "gpus: -1"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := ParseConfig([]byte(tc.yaml))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
		})
	}
}

func TestParseEngineFlag(t *testing.T) {
	tests := []struct {
		in      string
		want    EngineSpec
		wantErr string
	}{
		{in: "kind=sim,model=Qwen/Qwen3-0.6B,port=8001", want: EngineSpec{Kind: "sim", Model: "Qwen/Qwen3-0.6B", Port: 8001}},
		{in: "kind=vllm, model=m, gpus=2, role=decode, name=d0, block_size=32, kv_events_port=5557, binary=/opt/vllm",
			want: EngineSpec{Kind: "vllm", Model: "m", GPUs: 2, Role: "decode", Name: "d0", BlockSize: 32, KVEventsPort: 5557, Binary: "/opt/vllm"}},
		{in: "", wantErr: "empty"},
		{in: "kind", wantErr: "not key=value"},
		{in: "gpus=-1", wantErr: "non-negative"},
		{in: "colour=red", wantErr: "unknown key"},
	}
	for _, tc := range tests {
		t.Run(tc.in, func(t *testing.T) {
			got, err := ParseEngineFlag(tc.in)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got.Kind != tc.want.Kind || got.Model != tc.want.Model || got.Port != tc.want.Port || got.GPUs != tc.want.GPUs ||
				got.Role != tc.want.Role || got.Name != tc.want.Name || got.BlockSize != tc.want.BlockSize ||
				got.KVEventsPort != tc.want.KVEventsPort || got.Binary != tc.want.Binary {
				t.Fatalf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}

func FuzzParseConfig(f *testing.F) {
	f.Add([]byte("engines: [{kind: sim, port: 1}]"))
	f.Add([]byte("drain_timeout: 3s\nconsul: {address: x}\nengines: []"))
	f.Add([]byte("templates:\n  - name: t\n    kind: sim\n    gpus: 1\n    min_replicas: 1\n    max_replicas: 2\n"))
	f.Add([]byte("gpus: 4\nengines: [{kind: sim}]\ntemplates: [{name: t-0, kind: vllm, model: m}]\n"))
	f.Add([]byte("templates: [{name: t, kind: sim, min_replicas: 3, max_replicas: 1}]"))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, _, err := ParseConfig(b)
		if err != nil {
			return
		}
		if err := c.Validate(); err != nil {
			t.Fatalf("parsed config fails validation: %v", err)
		}
		for _, tp := range c.Templates {
			if tp.Name == "" || tp.MinReplicas < 0 || (tp.MaxReplicas > 0 && tp.MinReplicas > tp.MaxReplicas) {
				t.Fatalf("accepted template %+v", tp)
			}
		}
	})
}

func FuzzParseEngineFlag(f *testing.F) {
	f.Add("kind=sim,model=m,port=8001")
	f.Add("gpus=1,,")
	f.Fuzz(func(t *testing.T, s string) {
		e, err := ParseEngineFlag(s)
		if err == nil && (e.GPUs < 0 || e.Port < 0) {
			t.Fatalf("negative values accepted: %+v", e)
		}
	})
}
