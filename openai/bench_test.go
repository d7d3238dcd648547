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

// BenchmarkParseChatRequestTurns parses the 10th turn of a chat: 20 messages, about 17 KB,
// with escapes and non-ASCII text as real prose has them.
func BenchmarkParseChatRequestTurns(b *testing.B) {
	type msg struct {
		Role    string `json:"role"`
		Content string `json:"content"`
	}
	para := "Routing picks the engine whose cache holds the longest prefix of the prompt — \"prefix affinity\" —\n" +
		"and balances load across the rest; see `docs/ROUTER.md` (§2) for the scores.\t"
	msgs := []msg{{"system", "You are a helpful assistant."}}
	for i := range 19 {
		role := "user"
		if i%2 == 1 {
			role = "assistant"
		}
		msgs = append(msgs, msg{role, strings.Repeat(para, 5)})
	}
	m, _ := json.Marshal(msgs)
	body := []byte(`{"model":"m","messages":` + string(m) + `,"max_tokens":128,"stream":true,"temperature":0.7}`)
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := openai.ParseChatRequest(body); err != nil {
			b.Fatal(err)
		}
	}
}
