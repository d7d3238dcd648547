package openai

import (
	"bytes"
	"strings"
	"testing"
)

// diffBodies are bodies on the edges of what the parsers accept: JSON syntax, UTF-8, escapes,
// repeated keys, nesting, number forms, and every check on messages.
var diffBodies = []string{
	`{"model":"m","messages":[{"role":"user","content":"hi"}]}`,
	`{"messages":[{"role":"user","content":[{"type":"text","text":"x"}]}],"stream":true,"stream_options":{"include_usage":true},"stop":["a"],"tools":[{"type":"function","function":{"name":"f"}}],"tool_choice":"auto"}`,
	`{"messages":[{"role":"assistant","content":null,"tool_calls":[]}],"max_tokens":1,"n":2,"temperature":0.5,"extra":{"a":[1,2]}}`,
	`{"messages":[],"stop":3}`, `[]`, `null`, ``, `   `, `{"messages":`, `{`, `{}`, `{} {}`, `{}x`, `{"a":1,}`, `{"a" 1}`,
	`{"messages":[{"role":"wizard","content":"hi"}]}`, "{\"messages\":[{\"role\":\"user\",\"content\":\"\xff\"}]}",
	"{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}\xff", "\xff{}", "{\"a\":1}\xc3",
	"\v{\"messages\":[{\"role\":\"user\"}]}\u00a0", "{\"messages\":[{\"role\":\"user\"}]}\t\r\n",
	`{"messages":[{"role":"user","content":"a\"b\\c\/\b\f\n\r\t\u00e9\ud83d\ude00\ud800"}]}`,
	`{"messages":[{"role":"user","content":"\x"}]}`, `{"messages":[{"role":"user","content":"\u12"}]}`,
	"{\"messages\":[{\"role\":\"user\",\"content\":\"a\x01\"}]}", `{"messages":[{"role":"user","content":"é😀"}]}`,
	`{"messages":[{"r\u006fle":"user"}],"m\u006fdel":"x"}`, `{"messages":[{"role":"us\u0065r"}]}`,
	`{"messages":[{"role":"user"}],"model":"a","model":"b"}`, `{"messages":[{"role":"user"}],"model":1,"model":"b"}`,
	`{"messages":[{"role":"user"}],"model":"b","model":1}`, `{"messages":[1],"messages":[{"role":"user"}]}`,
	`{"messages":[{"role":"user"}],"messages":[1]}`, `{"messages":[{"role":"user","role":"x"}]}`,
	`{"messages":[{"role":"x","role":"user"}]}`, `{"messages":[{"role":"user","content":1,"content":"s"}]}`,
	`{"messages":[{"role":"user","content":[1],"content":[{}]}]}`, `{"messages":[{"role":"user","content":[{}],"content":[null]}]}`,
	`{"messages":null}`, `{"messages":{}}`, `{"messages":"x"}`, `{"messages":[null]}`, `{"messages":[{"role":"bad"},null]}`,
	`{"messages":[{"role":"bad"},"s"]}`, `{"messages":[null,"s"]}`, `{"messages":["s",null]}`, `{"messages":[{},1]}`,
	`{"messages":[{}]}`, `{"messages":[{"role":null}]}`, `{"messages":[{"role":1}]}`, `{"messages":[{"role":""}]}`,
	`{"messages":[{"role":"user","content":true}]}`, `{"messages":[{"role":"user","content":[{},2,"x"]}]}`,
	`{"messages":[{"role":"user","content":[null]}]}`, `{"messages":[{"role":"user","tool_calls":{}}]}`,
	`{"messages":[{"role":"user","tool_calls":null}]}`, `{"messages":[{"role":"user"},{"role":"user","content":{}}]}`,
	`{"messages":[{"role":"user"}],"max_tokens":1.0}`, `{"messages":[{"role":"user"}],"max_tokens":1e2}`,
	`{"messages":[{"role":"user"}],"max_tokens":-0}`, `{"messages":[{"role":"user"}],"max_tokens":99999999999999999999}`,
	`{"messages":[{"role":"user"}],"max_tokens":"5"}`, `{"messages":[{"role":"user"}],"max_tokens":null}`,
	`{"messages":[{"role":"user"}],"temperature":1e400}`, `{"messages":[{"role":"user"}],"temperature":-0.0}`,
	`{"messages":[{"role":"user"}],"temperature":01}`, `{"messages":[{"role":"user"}],"temperature":1.}`,
	`{"messages":[{"role":"user"}],"temperature":.5}`, `{"messages":[{"role":"user"}],"temperature":-}`,
	`{"messages":[{"role":"user"}],"temperature":1E+2}`, `{"messages":[{"role":"user"}],"temperature":"1"}`,
	`{"messages":[{"role":"user"}],"stream":null,"echo":1}`, `{"messages":[{"role":"user"}],"stream":tru}`,
	`{"messages":[{"role":"user"}],"stream":nul}`, `{"messages":[{"role":"user"}],"model":null,"user":"\u0041"}`,
	`{"messages":[{"role":"user"}],"logprobs":true,"top_logprobs":2,"seed":-5,"cache_salt":"s"}`,
	`{"messages":[{"role":"user"}],"chat_template_kwargs":{"a":[1,{"b":null}]},"logit_bias":{"1":2}}`,
	`{"messages":[{"role":"user"}],"stream_options":{"include_usage":1}}`, `{"messages":[{"role":"user"}],"seed":1.5,"n":"x"}`,
	`{"messages":[{"role":"user"}],"stop":null}`, `{"messages":[{"role":"user"}],"stop":["a",1]}`,
	`{"messages":[{"role":"user"}],"tools":[{"type":"function","function":{"name":""}}]}`,
	`{"messages":[{"role":"user"}],"tool_choice":{"function":{"name":"f"}}}`,
	`{"messages":[{"role":"user"}],"x":[[[[[]]]]],"y":{"z":{}}}`, `{"messages":[{"role":"user"}],"x":[1 2]}`,
	`{"messages":[{"role":"user"}],"x":[1,]}`, `{"messages":[{"role":"user"},]}`, `{"messages":[{"role":"user",}]}`,
	`{"messages":[{"role":"user"} ] , "x" : [ ] }`, `{"messages":[{"role":"user"}],"":1}`,
	`{"prompt":"hello"}`, `{"prompt":"he\nllo","max_tokens":3}`, `{"prompt":["a","b"]}`, `{"prompt":[1,2,3]}`,
	`{"prompt":[[1],[2,3]]}`, `{"prompt":[]}`, `{"prompt":[-1]}`, `{"prompt":[1,null]}`, `{"prompt":[[]]}`,
	`{"prompt":null,"prompt_embeds":"x"}`, `{"prompt":4294967296}`, `{"prompt":[4294967296]}`, `{"prompt":"x","prompt":1}`,
	`{"prompt":1,"prompt":"x"}`, `{"prompt":"x","stop":"y","suffix":null,"echo":true}`,
}

func TestParseMatchesReference(t *testing.T) {
	deep := `{"messages":[{"role":"user"}],"x":` + strings.Repeat("[", 9998) + strings.Repeat("]", 9998) + `}`
	deeper := `{"messages":[{"role":"user"}],"x":` + strings.Repeat("[", 9999) + strings.Repeat("]", 9999) + `}`
	many := `{"messages":[{"role":"user"}]` + strings.Repeat(`,"k":1,"model":"m"`, 40) + `,"k":"x"}`
	for _, b := range append(diffBodies, deep, deeper, many) {
		body := []byte(b)
		c, err := ParseChatRequest(body)
		rc, rerr := refParseChat(body)
		sameOutcome(t, body, c, rc, err, rerr)
		p, err := ParseCompletionRequest(body)
		rp, rerr := refParseCompletion(body)
		sameOutcome(t, body, p, rp, err, rerr)
	}
}

// UnmarshalJSON keeps its own bytes, as encoding/json asks of an Unmarshaler (the decoder may
// reuse its buffer); ParseChatRequest's raw fields share the body instead, to save the copy.
func TestUnmarshalDoesNotAliasInput(t *testing.T) {
	body := []byte(`{"model":"m","messages":[{"role":"user","content":"hi"}],"tools":[{"type":"function","function":{"name":"f"}}],"other":{"a":1}}`)
	var r ChatRequest
	if err := r.UnmarshalJSON(body); err != nil {
		t.Fatal(err)
	}
	var c CompletionRequest
	if err := c.UnmarshalJSON([]byte(`{"prompt":"p","other":[1]}`)); err != nil {
		t.Fatal(err)
	}
	want, _ := r.MarshalJSON()
	for i := range body {
		body[i] = ' '
	}
	if got, _ := r.MarshalJSON(); !bytes.Equal(got, want) {
		t.Fatalf("after overwriting the input the request marshals to %s, was %s", got, want)
	}
}

func FuzzParseChatMatchesReference(f *testing.F) {
	for _, b := range diffBodies {
		f.Add([]byte(b))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		r, err := ParseChatRequest(body)
		rr, rerr := refParseChat(body)
		sameOutcome(t, body, r, rr, err, rerr)
	})
}

func FuzzParseCompletionMatchesReference(f *testing.F) {
	for _, b := range diffBodies {
		f.Add([]byte(b))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		r, err := ParseCompletionRequest(body)
		rr, rerr := refParseCompletion(body)
		sameOutcome(t, body, r, rr, err, rerr)
	})
}
