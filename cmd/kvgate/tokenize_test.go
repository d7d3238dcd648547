package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// runKvgate executes the real root command with args and returns stdout.
func runKvgate(t *testing.T, args ...string) (string, error) {
	t.Helper()
	root := newRootCmd()
	var out, errOut bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&errOut)
	root.SetArgs(args)
	err := root.Execute()
	return out.String(), err
}

func TestTokenizeCommand(t *testing.T) {
	dir := t.TempDir()
	textFile := filepath.Join(dir, "text.txt")
	if err := os.WriteFile(textFile, []byte("Hello, how are you?"), 0o644); err != nil {
		t.Fatal(err)
	}
	// The first chat vector, with its expected prompt and ids.
	f, err := os.Open("../../tokenizer/testdata/qwen3/chat.jsonl")
	if err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(f).ReadBytes('\n')
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	var vec struct {
		Prompt string   `json:"prompt"`
		IDs    []uint32 `json:"ids"`
	}
	if err := json.Unmarshal(line, &vec); err != nil {
		t.Fatal(err)
	}
	chatFile := filepath.Join(dir, "chat.json")
	if err := os.WriteFile(chatFile, line, 0o644); err != nil {
		t.Fatal(err)
	}
	hello := []uint32{9707, 11, 1246, 525, 498, 30}
	tests := []struct {
		name       string
		args       []string
		wantIDs    []uint32
		wantPrompt *string
		wantErr    string
	}{
		{name: "text", args: []string{"--text", "Hello, how are you?"}, wantIDs: hello},
		{name: "text with special token", args: []string{"--text", "Hello, how are you?<|im_end|>"}, wantIDs: append(slices.Clone(hello), 151645)},
		{name: "text file", args: []string{"--text-file", textFile}, wantIDs: hello},
		{name: "explicit tokenizer dir", args: []string{"--tokenizer", "../../tokenizer/models/qwen3", "--text", "Hello, how are you?"}, wantIDs: hello},
		{name: "empty text", args: []string{"--text", ""}, wantIDs: []uint32{}},
		{name: "chat", args: []string{"--chat", chatFile}, wantIDs: vec.IDs, wantPrompt: &vec.Prompt},
		{name: "no input", args: nil, wantErr: "exactly one"},
		{name: "two inputs", args: []string{"--text", "a", "--chat", chatFile}, wantErr: "exactly one"},
		{name: "missing tokenizer", args: []string{"--tokenizer", dir, "--text", "a"}, wantErr: "tokenizer.json"},
		{name: "bad chat file", args: []string{"--chat", textFile}, wantErr: "--chat"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			out, err := runKvgate(t, append([]string{"tokenize"}, tc.args...)...)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var got struct {
				IDs    []uint32 `json:"ids"`
				Prompt *string  `json:"prompt"`
			}
			dec := json.NewDecoder(strings.NewReader(out))
			dec.DisallowUnknownFields()
			if err := dec.Decode(&got); err != nil {
				t.Fatalf("output %q: %v", out, err)
			}
			if got.IDs == nil || !slices.Equal(got.IDs, tc.wantIDs) {
				t.Errorf("ids = %v, want %v", got.IDs, tc.wantIDs)
			}
			switch {
			case tc.wantPrompt == nil && got.Prompt != nil:
				t.Errorf("prompt %q printed for a text input", *got.Prompt)
			case tc.wantPrompt != nil && (got.Prompt == nil || *got.Prompt != *tc.wantPrompt):
				t.Errorf("prompt = %v, want %q", got.Prompt, *tc.wantPrompt)
			}
		})
	}
}
