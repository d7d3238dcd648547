package openai_test

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/kvgate/kvgate/openai"
)

// BenchmarkParseChatRequest parses a chat body of about 16 KiB (a 4,096-token conversation).
func BenchmarkParseChatRequest(b *testing.B) {
	user, _ := json.Marshal(strings.Repeat("The quick brown fox jumps over the lazy dog. ", 360))
	body := []byte(`{"model":"m","messages":[{"role":"system","content":"You are helpful."},{"role":"user","content":` +
		string(user) + `}],"max_tokens":128,"stream":true,"stream_options":{"include_usage":true},"temperature":0.7}`)
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := openai.ParseChatRequest(body); err != nil {
			b.Fatal(err)
		}
	}
}
