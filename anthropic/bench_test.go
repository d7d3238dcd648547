package anthropic_test

import (
	"strings"
	"testing"

	"github.com/kvgate/kvgate/anthropic"
)

// BenchmarkParseToChat parses a 10-turn Messages request with tools, tool calls and results
// (about 16 KiB) and converts it to chat messages.
func BenchmarkParseToChat(b *testing.B) {
	var sb strings.Builder
	sb.WriteString(`{"model":"m","max_tokens":64,"system":"You are terse.","tools":[{"name":"lookup","description":"Looks up.","input_schema":{"type":"object","properties":{"q":{"type":"string"}}}}],"messages":[`)
	text := strings.Repeat("the quick brown fox jumps over the lazy dog ", 30)
	for i := range 10 {
		if i > 0 {
			sb.WriteByte(',')
		}
		sb.WriteString(`{"role":"user","content":[{"type":"text","text":"` + text + `"},{"type":"tool_result","tool_use_id":"t","content":[{"type":"text","text":"result"}]}]},`)
		sb.WriteString(`{"role":"assistant","content":[{"type":"text","text":"` + text + `"},{"type":"tool_use","id":"t","name":"lookup","input":{"q":"x","n":[1,2.5,true]}}]}`)
	}
	sb.WriteString(`]}`)
	body := []byte(sb.String())
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	for b.Loop() {
		r, err := anthropic.Parse(body)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := r.ToChat(); err != nil {
			b.Fatal(err)
		}
	}
}
