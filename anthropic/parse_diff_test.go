package anthropic

import (
	"bytes"
	"encoding/json"
	"errors"
	"go/ast"
	"go/parser"
	"go/token"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"

	"github.com/kvgate/kvgate/openai"
)

// TestParseMatchesReference: Parse and ToChat give what the parser before the one-pass
// decoder (refParse, parse_ref_test.go) gives, error for error (status, param, message) and
// request for request (every field, byte for byte) with the same chat body, on every body
// the package's tests and fuzz corpus hold and on random requests near the schema.
func TestParseMatchesReference(t *testing.T) {
	bodies := corpus(t)
	if len(bodies) < 40 {
		t.Fatalf("corpus has %d bodies; the test files were not read", len(bodies))
	}
	for _, b := range bodies {
		same(t, b)
	}
	for _, depth := range []int{9998, 9999, 10000} { // encoding/json's nesting limit is 10000
		deep := strings.Repeat("[", depth) + strings.Repeat("]", depth)
		same(t, []byte(`{"model":"m","max_tokens":1,"metadata":{"x":`+deep+`},"messages":[{"role":"user","content":"a"}]}`))
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for range 20000 {
		same(t, genRequest(rng))
	}
}

func same(t *testing.T, body []byte) {
	t.Helper()
	want, wantErr := refParse(bytes.Clone(body))
	got, gotErr := Parse(bytes.Clone(body))
	if (wantErr == nil) != (gotErr == nil) {
		t.Fatalf("body %s:\n got err %v\nwant err %v", body, gotErr, wantErr)
	}
	if wantErr != nil {
		var we, ge *openai.Error
		if !errors.As(wantErr, &we) || !errors.As(gotErr, &ge) || !reflect.DeepEqual(we, ge) {
			t.Fatalf("body %s:\n got %#v\nwant %#v", body, gotErr, wantErr)
		}
		return
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("body %s:\n got %+v\nwant %+v", body, got, want)
	}
	wc, wErr := want.refToChat()
	gc, gErr := got.ToChat()
	if (wErr == nil) != (gErr == nil) || (wErr != nil && wErr.Error() != gErr.Error()) {
		t.Fatalf("body %s: ToChat err %v, want %v", body, gErr, wErr)
	}
	if wErr == nil && !reflect.DeepEqual(gc, wc) {
		t.Fatalf("body %s:\n got chat %s\nwant chat %s", body, gc.Body, wc.Body)
	}
}

// corpus is every JSON-looking string the package's test files write (literals and constant
// concatenations of them) and the fuzz corpus in testdata.
func corpus(t *testing.T) [][]byte {
	t.Helper()
	var out [][]byte
	files, _ := filepath.Glob("*_test.go")
	fset := token.NewFileSet()
	for _, name := range files {
		f, err := parser.ParseFile(fset, name, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		consts := map[string]string{}
		ast.Inspect(f, func(n ast.Node) bool {
			if vs, ok := n.(*ast.ValueSpec); ok {
				for i, id := range vs.Names {
					if i < len(vs.Values) {
						if s, ok := constString(vs.Values[i], consts); ok {
							consts[id.Name] = s
						}
					}
				}
			}
			if e, ok := n.(ast.Expr); ok {
				if s, ok := constString(e, consts); ok && (strings.HasPrefix(s, "{") || strings.HasPrefix(s, "[")) {
					out = append(out, []byte(s))
				}
			}
			return true
		})
	}
	seeds, _ := filepath.Glob(filepath.Join("testdata", "fuzz", "FuzzParse", "*"))
	for _, name := range seeds {
		b, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(string(b), "\n") {
			if q, ok := strings.CutPrefix(line, "[]byte("); ok {
				s, err := strconv.Unquote(strings.TrimSuffix(q, ")"))
				if err != nil {
					t.Fatalf("%s: %v", name, err)
				}
				out = append(out, []byte(s))
			}
		}
	}
	return out
}

func constString(e ast.Expr, consts map[string]string) (string, bool) {
	switch e := e.(type) {
	case *ast.BasicLit:
		if e.Kind == token.STRING {
			s, err := strconv.Unquote(e.Value)
			return s, err == nil
		}
	case *ast.Ident:
		s, ok := consts[e.Name]
		return s, ok
	case *ast.BinaryExpr:
		if e.Op == token.ADD {
			a, ok1 := constString(e.X, consts)
			b, ok2 := constString(e.Y, consts)
			return a + b, ok1 && ok2
		}
	case *ast.ParenExpr:
		return constString(e.X, consts)
	}
	return "", false
}

// genRequest writes a random body near the Messages schema: mostly the right keys and
// types, sometimes a wrong type, a key in another case, an escaped key, a repeated key, null,
// odd whitespace, escapes and non-ASCII in strings, or a cut-off body.
func genRequest(rng *rand.Rand) []byte {
	g := gen{rng: rng}
	var b bytes.Buffer
	g.object(&b, []field{
		{"model", g.str}, {"max_tokens", g.intish}, {"messages", g.messages}, {"system", g.system},
		{"tools", g.tools}, {"tool_choice", g.toolChoice}, {"stream", g.boolish},
		{"temperature", g.num}, {"top_p", g.num}, {"top_k", g.intish}, {"stop_sequences", g.strs},
		{"metadata", g.metadata},
	})
	out := b.Bytes()
	if rng.IntN(20) == 0 {
		out = out[:rng.IntN(len(out)+1)]
	}
	return out
}

type gen struct{ rng *rand.Rand }

type field struct {
	key string
	val func(*bytes.Buffer)
}

func (g gen) ws(b *bytes.Buffer) {
	if g.rng.IntN(8) == 0 {
		b.WriteString([]string{" ", "\n\t", "\r\n  "}[g.rng.IntN(3)])
	}
}

// object writes the fields, each present most of the time, with keys sometimes mangled.
func (g gen) object(b *bytes.Buffer, fs []field) {
	b.WriteByte('{')
	n := 0
	emit := func(k string, v func(*bytes.Buffer)) {
		if n > 0 {
			b.WriteByte(',')
		}
		n++
		g.ws(b)
		switch g.rng.IntN(40) {
		case 0:
			k = strings.ToUpper(k[:1]) + k[1:]
		case 1:
			k = `\u00` + strconv.FormatInt(int64(k[0]), 16) + k[1:]
		}
		b.WriteString(`"` + k + `"`)
		g.ws(b)
		b.WriteByte(':')
		g.ws(b)
		v(b)
		g.ws(b)
	}
	for _, f := range fs {
		if g.rng.IntN(6) == 0 {
			continue
		}
		emit(f.key, g.maybe(f.val))
		if g.rng.IntN(30) == 0 {
			emit(f.key, g.maybe(f.val))
		}
	}
	if g.rng.IntN(10) == 0 {
		emit("extra", g.any)
	}
	b.WriteByte('}')
}

// maybe is v, or now and then null or a value of any type.
func (g gen) maybe(v func(*bytes.Buffer)) func(*bytes.Buffer) {
	switch g.rng.IntN(25) {
	case 0:
		return func(b *bytes.Buffer) { b.WriteString("null") }
	case 1:
		return g.any
	}
	return v
}

func (g gen) any(b *bytes.Buffer) {
	switch g.rng.IntN(7) {
	case 0:
		g.str(b)
	case 1:
		g.num(b)
	case 2:
		g.boolish(b)
	case 3:
		b.WriteString("null")
	case 4:
		b.WriteString(`[1,"a",{"b":null}]`)
	case 5:
		b.WriteString(`{"a":[true,{"c":1.5e2}],"type":"text"}`)
	default:
		b.WriteString(`[]`)
	}
}

var pieces = []string{"", "a", "hello world", `\"q\"`, `\\`, `\n\t`, `\u00e9`, `\ud83d\ude00`, `\ud800`, "é", "日本", "\xff", "user", "assistant", "text", "tool", "auto", "any", "none", "f", "</s>", `\/`, "\u2028", `\u2029`, `\u0001\b\f`, "<&>"}

func (g gen) str(b *bytes.Buffer) {
	b.WriteByte('"')
	for range g.rng.IntN(4) {
		b.WriteString(pieces[g.rng.IntN(len(pieces))])
	}
	b.WriteByte('"')
}

func (g gen) oneOf(vals ...string) func(*bytes.Buffer) {
	return func(b *bytes.Buffer) { b.WriteString(`"` + vals[g.rng.IntN(len(vals))] + `"`) }
}

func (g gen) intish(b *bytes.Buffer) {
	b.WriteString([]string{"1", "5", "0", "-1", "-2", "64", "1.5", "1e3", "2.0", "1e400", "-0", "9007199254740993"}[g.rng.IntN(12)])
}

func (g gen) num(b *bytes.Buffer) {
	b.WriteString([]string{"0", "0.5", "1", "2", "3", "-0.1", "1e-3", "0.7E+0", "1e400"}[g.rng.IntN(9)])
}

func (g gen) boolish(b *bytes.Buffer) {
	b.WriteString([]string{"true", "false"}[g.rng.IntN(2)])
}

func (g gen) array(b *bytes.Buffer, n int, v func(*bytes.Buffer)) {
	b.WriteByte('[')
	for i := range n {
		if i > 0 {
			b.WriteByte(',')
		}
		g.ws(b)
		g.maybe(v)(b)
	}
	b.WriteByte(']')
}

func (g gen) strs(b *bytes.Buffer) { g.array(b, g.rng.IntN(3), g.str) }

func (g gen) messages(b *bytes.Buffer) {
	g.array(b, g.rng.IntN(4), func(b *bytes.Buffer) {
		g.object(b, []field{
			{"role", g.oneOf("user", "assistant", "system", "ctx", "msg", "tool", "User")},
			{"content", g.content},
		})
	})
}

func (g gen) content(b *bytes.Buffer) {
	if g.rng.IntN(3) == 0 {
		g.str(b)
		return
	}
	g.blocks(b)
}

func (g gen) blocks(b *bytes.Buffer) {
	g.array(b, g.rng.IntN(4), func(b *bytes.Buffer) {
		fs := []field{{"type", g.oneOf("text", "image", "tool_use", "tool_result", "thinking", "redacted_thinking", "tool_reference", "video")}, {"text", g.str}}
		switch g.rng.IntN(5) {
		case 0:
			fs = append(fs, field{"source", func(b *bytes.Buffer) { g.object(b, []field{{"type", g.oneOf("base64", "url")}, {"data", g.str}}) }})
		case 1:
			fs = append(fs, field{"id", g.str}, field{"name", g.str}, field{"input", g.input})
		case 2:
			fs = append(fs, field{"tool_use_id", g.str}, field{"id", g.str}, field{"content", g.resultContent}, field{"is_error", g.boolish})
		case 3:
			fs = append(fs, field{"thinking", g.str}, field{"signature", g.str})
		}
		g.rng.Shuffle(len(fs), func(i, j int) { fs[i], fs[j] = fs[j], fs[i] })
		g.object(b, fs)
	})
}

func (g gen) input(b *bytes.Buffer) {
	g.object(b, []field{{"q", g.str}, {"n", g.num}, {"list", func(b *bytes.Buffer) { g.array(b, g.rng.IntN(3), g.any) }}, {"deep", g.any}})
}

func (g gen) resultContent(b *bytes.Buffer) {
	if g.rng.IntN(2) == 0 {
		g.str(b)
		return
	}
	g.blocks(b)
}

func (g gen) system(b *bytes.Buffer) {
	if g.rng.IntN(2) == 0 {
		g.str(b)
		return
	}
	g.array(b, g.rng.IntN(3), func(b *bytes.Buffer) {
		g.object(b, []field{{"type", g.oneOf("text", "text", "image")}, {"text", g.str}})
	})
}

func (g gen) tools(b *bytes.Buffer) {
	g.array(b, g.rng.IntN(3), func(b *bytes.Buffer) {
		g.object(b, []field{
			{"type", g.oneOf("custom", "web_search_20250305")}, {"name", g.str}, {"description", g.str},
			{"input_schema", func(b *bytes.Buffer) {
				g.object(b, []field{{"type", g.oneOf("object")}, {"properties", g.input}})
			}},
		})
	})
}

func (g gen) toolChoice(b *bytes.Buffer) {
	g.object(b, []field{{"type", g.oneOf("auto", "any", "tool", "none", "some")}, {"name", g.str}})
}

func (g gen) metadata(b *bytes.Buffer) {
	g.object(b, []field{{"user_id", g.str}})
}

// FuzzAppendString: appendString writes what json.Encoder writes with HTML escaping off.
func FuzzAppendString(f *testing.F) {
	for _, s := range []string{"", "plain", "q\"b\\", "\x00\x1f\b\f\n\r\t\x7f", "é\u2028\u2029", "\xff\xc3", "<&>"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		var want bytes.Buffer
		enc := json.NewEncoder(&want)
		enc.SetEscapeHTML(false)
		if err := enc.Encode(s); err != nil {
			t.Fatal(err)
		}
		if got := appendString(nil, s); !bytes.Equal(got, bytes.TrimSuffix(want.Bytes(), []byte("\n"))) {
			t.Fatalf("%q: got %s, want %s", s, got, want.Bytes())
		}
	})
}

// BenchmarkParseVsReference times Parse+ToChat against the reference (the code before the
// one-pass decoder) in the same run, on a long single-turn prompt (as the router's benchmark
// sends) and on a 20-turn request with tools, tool calls and results.
func BenchmarkParseVsReference(b *testing.B) {
	long := strings.Repeat("the quick brown fox jumps over the lazy dog ", 470)
	var turns strings.Builder
	turns.WriteString(`{"model":"m","max_tokens":64,"system":"You are terse.","tools":[{"name":"lookup","description":"Looks up.","input_schema":{"type":"object","properties":{"q":{"type":"string"}}}}],"messages":[`)
	text := strings.Repeat("the quick brown fox jumps over the lazy dog ", 30)
	for i := range 10 {
		if i > 0 {
			turns.WriteByte(',')
		}
		turns.WriteString(`{"role":"user","content":[{"type":"text","text":"` + text + `"},{"type":"tool_result","tool_use_id":"t","content":[{"type":"text","text":"result"}]}]},`)
		turns.WriteString(`{"role":"assistant","content":[{"type":"text","text":"` + text + `"},{"type":"tool_use","id":"t","name":"lookup","input":{"q":"x","n":[1,2.5,true]}}]}`)
	}
	turns.WriteString(`]}`)
	for _, body := range []struct{ name, body string }{
		{"long", `{"model":"m","stream":true,"max_tokens":128,"system":"You are terse.","messages":[{"role":"user","content":"` + long + `"}]}`},
		{"turns", turns.String()},
	} {
		for _, impl := range []struct {
			name string
			run  func([]byte) error
		}{
			{"reference", func(body []byte) error {
				r, err := refParse(body)
				if err == nil {
					_, err = r.refToChat()
				}
				return err
			}},
			{"new", func(body []byte) error {
				r, err := Parse(body)
				if err == nil {
					_, err = r.ToChat()
				}
				return err
			}},
		} {
			b.Run(body.name+"/"+impl.name, func(b *testing.B) {
				in := []byte(body.body)
				b.SetBytes(int64(len(in)))
				b.ReportAllocs()
				for b.Loop() {
					if err := impl.run(in); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}

// FuzzParseMatchesReference: on any body, Parse and ToChat give what the reference gives.
func FuzzParseMatchesReference(f *testing.F) {
	rng := rand.New(rand.NewPCG(3, 4))
	for range 20 {
		f.Add(genRequest(rng))
	}
	f.Add([]byte(`{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}`))
	f.Fuzz(func(t *testing.T, body []byte) { same(t, body) })
}
