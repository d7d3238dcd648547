package tokenizer_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/kvgate/kvgate/tokenizer"
)

func TestModelMap(t *testing.T) {
	dir := t.TempDir()
	b, err := json.Marshal(gpt2Style())
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "tokenizer.json"), b, 0o644); err != nil {
		t.Fatal(err)
	}
	yamlFile := filepath.Join(t.TempDir(), "models.yaml")
	yaml := "- name: tiny\n  tokenizer: " + dir + "\n  block_size: 32\n- name: " + tokenizer.DefaultModel + "\n- name: broken\n  tokenizer: /nonexistent\n"
	if err := os.WriteFile(yamlFile, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	mm, _, err := tokenizer.LoadModelMap(yamlFile)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := mm.Names(), []string{tokenizer.DefaultModel, "broken", "tiny"}; !slices.Equal(got, want) {
		t.Fatalf("Names = %v, want %v", got, want)
	}
	tests := []struct {
		model     string
		text      string
		wantIDs   []uint32
		wantBlock int
		wantErr   string
	}{
		{model: "tiny", text: "hello world!", wantIDs: []uint32{8, 12, 17, 0}, wantBlock: 32},
		{model: tokenizer.DefaultModel, text: "Hello, how are you?", wantIDs: []uint32{9707, 11, 1246, 525, 498, 30}, wantBlock: 16},
		{model: "broken", wantErr: "tokenizer.json"},
		{model: "gpt-5", wantErr: `unknown model "gpt-5"`},
	}
	for _, tc := range tests {
		t.Run(tc.model, func(t *testing.T) {
			tok, bs, err := mm.Lookup(tc.model)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if bs != tc.wantBlock {
				t.Errorf("block size = %d, want %d", bs, tc.wantBlock)
			}
			if got := tok.Encode(tc.text); !slices.Equal(got, tc.wantIDs) {
				t.Errorf("Encode = %v, want %v", got, tc.wantIDs)
			}
			again, _, _ := mm.Lookup(tc.model)
			if again != tok {
				t.Error("second Lookup loaded the tokenizer again")
			}
		})
	}
}

func TestModelMapFiles(t *testing.T) {
	tests := []struct {
		name, body, wantErr string
		wantNames           []string
	}{
		{name: "json", body: `[{"name": "a", "block_size": 8}, {"name": "b"}]`, wantNames: []string{"a", "b"}},
		{name: "duplicate", body: "- name: a\n- name: a\n", wantErr: "twice"},
		{name: "no name", body: "- block_size: 4\n", wantErr: "no name"},
		{name: "negative block", body: "- name: a\n  block_size: -1\n", wantErr: "negative"},
		{name: "unknown field", body: "- name: a\n  blocksize: 4\n", wantErr: `line 2: [0]: unknown field "blocksize"`},
		{name: "empty", body: "[]", wantErr: "no models"},
		{name: "not a list", body: "name: a\n", wantErr: "model map"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			mm, _, err := tokenizer.ParseModelMap([]byte(tc.body))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := mm.Names(); !slices.Equal(got, tc.wantNames) {
				t.Fatalf("Names = %v, want %v", got, tc.wantNames)
			}
		})
	}
	if _, _, err := tokenizer.LoadModelMap(filepath.Join(t.TempDir(), "missing.yaml")); err == nil {
		t.Fatal("LoadModelMap of a missing file succeeded")
	}
}

func TestDefaultModelMap(t *testing.T) {
	mm := tokenizer.DefaultModelMap()
	tok, bs, err := mm.Lookup(tokenizer.DefaultModel)
	if err != nil || bs != 16 {
		t.Fatalf("Lookup = %v, %d, %v", tok, bs, err)
	}
	def, _ := tokenizer.Default()
	if tok != def {
		t.Fatal("default model map does not share the embedded tokenizer")
	}
	if got := mm.Names(); !slices.Equal(got, []string{tokenizer.DefaultModel}) {
		t.Fatalf("Names = %v", got)
	}
}

// TestModelMapCamelCase: the camelCase blockSize is still read, with a deprecation warning.
func TestModelMapCamelCase(t *testing.T) {
	mm, warnings, err := tokenizer.ParseModelMap([]byte("- name: a\n  blockSize: 8\n"))
	if err != nil {
		t.Fatal(err)
	}
	if _, bs, err := mm.Lookup("a"); err != nil || bs != 8 {
		t.Fatalf("block size %d (%v), want 8", bs, err)
	}
	if len(warnings) != 1 || !strings.Contains(warnings[0], "block_size") {
		t.Fatalf("warnings = %q, want one naming block_size", warnings)
	}
}

func FuzzModelMap(f *testing.F) {
	f.Add([]byte("- name: a\n  tokenizer: /x\n  block_size: 16\n"))
	f.Add([]byte(`[{"name":"b"}]`))
	f.Fuzz(func(t *testing.T, data []byte) {
		mm, _, err := tokenizer.ParseModelMap(data)
		if err != nil {
			return
		}
		for _, n := range mm.Names() {
			if n == "" {
				t.Fatal("empty model name accepted")
			}
		}
	})
}
