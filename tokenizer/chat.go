package tokenizer

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"time"
	"unsafe"

	"github.com/nikolalohinski/gonja/v2/builtins"
	"github.com/nikolalohinski/gonja/v2/config"
	"github.com/nikolalohinski/gonja/v2/exec"
	"github.com/nikolalohinski/gonja/v2/loaders"
)

// ChatInput is one chat-template rendering request.
type ChatInput struct {
	Messages            json.RawMessage // the OpenAI request's "messages" array, raw (key order preserved for tojson)
	Tools               json.RawMessage // "tools" or nil
	AddGenerationPrompt bool
	Extra               map[string]any // extra template variables, e.g. enable_thinking (chat_template_kwargs); a json.RawMessage value keeps its key order
	Template            string         // named template ("tool_use", ...) or "" for the default
	// KeepToolArgumentStrings leaves assistant tool_calls[].function.arguments JSON strings as
	// strings. By default they are parsed into objects first, as vLLM and SGLang do before
	// rendering (so a template's tojson prints them), to produce the engine's own prompt.
	KeepToolArgumentStrings bool
}

// chatTemplates holds the parsed chat templates of a tokenizer.
type chatTemplates struct {
	def   *chatTemplate
	named map[string]*chatTemplate
	order *orderRegistry // key order of the objects of renders in progress
}

type chatTemplate struct {
	t *exec.Template
	// flattenContent: the template treats message content as a string, so text-only
	// content-part arrays are joined with "\n" first, as vLLM does for such templates.
	flattenContent bool
	qwen3          bool // the Qwen3 template: plain chats render natively (chatml.go)
}

var contentLoop = regexp.MustCompile(`for\s+\w+\s+in\s+\w+(\.content|\[['"]content['"]\])`)

func parseChatTemplates(raw json.RawMessage) (*chatTemplates, error) {
	if isNull(raw) {
		return nil, nil
	}
	ts := &chatTemplates{named: map[string]*chatTemplate{}, order: &orderRegistry{}}
	var one string
	if err := json.Unmarshal(raw, &one); err == nil {
		t, err := compileTemplate(one, ts.order)
		if err != nil {
			return nil, err
		}
		ts.def = t
		return ts, nil
	}
	var list []struct {
		Name     string `json:"name"`
		Template string `json:"template"`
	}
	if err := json.Unmarshal(raw, &list); err != nil {
		return nil, fmt.Errorf("tokenizer: chat_template is neither a string nor a list of {name, template}: %w", err)
	}
	for _, e := range list {
		t, err := compileTemplate(e.Template, ts.order)
		if err != nil {
			return nil, fmt.Errorf("%w (template %q)", err, e.Name)
		}
		ts.named[e.Name] = t
		if e.Name == "default" {
			ts.def = t
		}
	}
	return ts, nil
}

// compileTemplate parses a Jinja chat template with kvgate's environment.
func compileTemplate(src string, order *orderRegistry) (tmpl *chatTemplate, err error) {
	defer func() {
		if r := recover(); r != nil {
			tmpl, err = nil, fmt.Errorf("tokenizer: chat template: parser failure: %v", r)
		}
	}()
	fsl, err := loaders.NewFileSystemLoader("")
	if err != nil {
		return nil, fmt.Errorf("tokenizer: chat template: %w", err)
	}
	const id = "chat_template"
	ld, err := loaders.NewShiftedLoader(id, strings.NewReader(src), fsl)
	if err != nil {
		return nil, fmt.Errorf("tokenizer: chat template: %w", err)
	}
	cfg := config.New()
	// Hugging Face's environment: trim_blocks and lstrip_blocks on, trailing newline dropped.
	cfg.TrimBlocks = true
	cfg.LeftStripBlocks = true
	t, err := exec.NewTemplate(id, cfg, ld, newEnvironment(order))
	if err != nil {
		return nil, fmt.Errorf("tokenizer: chat template: %w", err)
	}
	return &chatTemplate{t: t, flattenContent: !contentLoop.MatchString(src), qwen3: isQwen3Template(src)}, nil
}

// newEnvironment is gonja's Python-compatible builtins plus what Hugging Face adds for chat
// templates: a json.dumps-compatible tojson, raise_exception and strftime_now.
func newEnvironment(order *orderRegistry) *exec.Environment {
	filters := exec.NewFilterSet(map[string]exec.FilterFunction{}).Update(builtins.Filters)
	_ = filters.Replace("tojson", toJSONFilter(order))
	_ = filters.Replace("reverse", filterReverse)
	tests := exec.NewTestSet(map[string]exec.TestFunction{}).Update(builtins.Tests)
	ctx := exec.EmptyContext().Update(builtins.GlobalFunctions).Update(builtins.GlobalVariables)
	ctx.Set("raise_exception", func(msg string) (string, error) {
		return "", fmt.Errorf("raise_exception: %s", msg)
	})
	ctx.Set("strftime_now", func(format string) string { return strftime(time.Now(), format) })
	methods := builtins.Methods
	methods.Str = strMethods()
	methods.Dict = dictMethods(order)
	return &exec.Environment{
		Context:           ctx,
		Filters:           filters,
		Tests:             tests,
		ControlStructures: builtins.ControlStructures,
		Methods:           methods,
	}
}

// strNames are gonja's Python str methods, copied into kvgate's own method set.
var strNames = []string{"capitalize", "capwords", "casefold", "center", "count", "encode", "endswith",
	"expandtabs", "find", "format", "format_map", "isalnum", "isalpha", "isascii", "isdecimal", "isdigit",
	"islower", "isnumeric", "isprintable", "isspace", "istitle", "isupper", "join", "ljust", "lower",
	"lstrip", "partition", "removeprefix", "removesuffix", "replace", "rfind", "rjust", "rpartition",
	"rsplit", "rstrip", "split", "splitlines", "startswith", "strip", "swapcase", "title", "upper", "zfill"}

// strMethods is gonja's str methods with replace's count made optional, as in Python.
func strMethods() *exec.MethodSet[string] {
	m := map[string]exec.Method[string]{}
	for _, n := range strNames {
		if f, ok := builtins.Methods.Str.Get(n); ok {
			m[n] = f
		}
	}
	m["replace"] = func(self string, _ *exec.Value, args *exec.VarArgs) (any, error) {
		var old, repl string
		count := -1
		if err := args.Take(
			exec.PositionalArgument("old", nil, exec.StringArgument(&old)),
			exec.PositionalArgument("new", nil, exec.StringArgument(&repl)),
			exec.PositionalArgument("count", exec.AsValue(-1), exec.IntArgument(&count)),
		); err != nil {
			return nil, exec.ErrInvalidCall(err)
		}
		return strings.Replace(self, old, repl, count), nil
	}
	// split and friends return a list whose indexing follows Python: gonja's own indexing
	// misses x[-n] on a list of n items (None), which broke the Qwen3 template on an
	// assistant message holding "</think>" without "<think>" (the reasoning split's [-1]).
	for _, n := range []string{"split", "rsplit", "splitlines"} {
		f := m[n]
		if f == nil {
			continue
		}
		m[n] = func(self string, v *exec.Value, args *exec.VarArgs) (any, error) {
			r, err := f(self, v, args)
			if rv := reflect.ValueOf(r); rv.Kind() == reflect.Slice && rv.Type().Elem().Kind() == reflect.String {
				l := make(strList, rv.Len())
				for i := range l {
					l[i] = rv.Index(i).String()
				}
				return l, err
			}
			return r, err
		}
	}
	return exec.NewMethodSet(m)
}

// strList is a list of strings indexed as Python indexes lists.
type strList []string

// GetItem implements exec.ItemGetter.
func (l strList) GetItem(key any) (*exec.Value, bool) {
	i, ok := key.(int)
	if !ok {
		return exec.AsValue(nil), false
	}
	if i < 0 {
		i += len(l)
	}
	if i < 0 || i >= len(l) {
		return exec.AsValue(nil), false
	}
	return exec.AsValue(l[i]), true
}

// toJSONFilter is tojson with Python's json.dumps output: key order kept, ", " and ": "
// separators, non-ASCII written as is, optional indent.
func toJSONFilter(order *orderRegistry) exec.FilterFunction {
	return func(_ *exec.Evaluator, in *exec.Value, params *exec.VarArgs) *exec.Value {
		if in.IsError() {
			return in
		}
		indent := -1
		if v, ok := params.KwArgs["indent"]; ok && !v.IsNil() {
			indent = v.Integer()
		} else if len(params.Args) > 0 && !params.Args[0].IsNil() {
			indent = params.Args[0].Integer()
		}
		var b strings.Builder
		if err := pyDumps(&b, in.Interface(), order, indent, 0); err != nil {
			return exec.AsValue(err)
		}
		return exec.AsSafeValue(b.String())
	}
}

// filterReverse reverses a list or a string (gonja's sorts lists).
func filterReverse(_ *exec.Evaluator, in *exec.Value, _ *exec.VarArgs) *exec.Value {
	if in.IsError() {
		return in
	}
	if in.IsString() {
		r := []rune(in.String())
		slices.Reverse(r)
		return exec.AsValue(string(r))
	}
	if in.IsList() {
		out := make([]any, 0, in.Len())
		for i := in.Len() - 1; i >= 0; i-- {
			out = append(out, in.Index(i).Interface())
		}
		return exec.AsValue(out)
	}
	return exec.AsValue(fmt.Errorf("reverse: cannot reverse %s", in.String()))
}

// HasChatTemplate reports whether the tokenizer has a chat template (the default one when name
// is "").
func (t *Tokenizer) HasChatTemplate(name string) bool {
	_, err := t.template(name)
	return err == nil
}

func (t *Tokenizer) template(name string) (*chatTemplate, error) {
	if t.tmpl == nil {
		return nil, errors.New("tokenizer: no chat_template in tokenizer_config.json")
	}
	if name == "" {
		if t.tmpl.def == nil {
			return nil, errors.New("tokenizer: no default chat template")
		}
		return t.tmpl.def, nil
	}
	ct, ok := t.tmpl.named[name]
	if !ok {
		return nil, fmt.Errorf("tokenizer: no chat template named %q", name)
	}
	return ct, nil
}

// RenderChat renders the chat template with messages, tools, add_generation_prompt,
// bos_token, eos_token and the extra variables, as Hugging Face's apply_chat_template does.
func (t *Tokenizer) RenderChat(in ChatInput) (out string, err error) {
	return t.renderChat(in, true)
}

// AppendRenderChat appends what RenderChat returns to dst and returns the extended slice
// (dst unchanged on error): a caller that renders many prompts can reuse one buffer.
func (t *Tokenizer) AppendRenderChat(dst []byte, in ChatInput) ([]byte, error) {
	ct, err := t.template(in.Template)
	if err != nil {
		return dst, err
	}
	if b, ok := renderNative(dst, ct, in); ok {
		return b, nil
	}
	s, err := t.renderEngine(ct, in)
	if err != nil {
		return dst, err
	}
	return append(dst, s...), nil
}

// renderChat is RenderChat, through the template engine only when native is false.
func (t *Tokenizer) renderChat(in ChatInput, native bool) (out string, err error) {
	ct, err := t.template(in.Template)
	if err != nil {
		return "", err
	}
	if native {
		if b, ok := renderNative(nil, ct, in); ok {
			return unsafe.String(unsafe.SliceData(b), len(b)), nil // b is not written again
		}
	}
	return t.renderEngine(ct, in)
}

// renderNative appends the render of in to dst without the template engine when ct is the
// Qwen3 template and the chat is plain (see appendQwen3); ok is false otherwise.
func renderNative(dst []byte, ct *chatTemplate, in ChatInput) ([]byte, bool) {
	if !ct.qwen3 || !isNull(in.Tools) {
		return dst, false
	}
	thinkingOff, ok := qwen3Vars(in.Extra)
	if !ok {
		return dst, false
	}
	ms, ok := plainMessages(in.Messages)
	if !ok {
		return dst, false
	}
	return appendQwen3(dst, ms, in.AddGenerationPrompt, thinkingOff)
}

// renderEngine renders in through the template engine.
func (t *Tokenizer) renderEngine(ct *chatTemplate, in ChatInput) (out string, err error) {
	ko := keyOrder{}
	msgs, err := decodeOrdered(in.Messages, ko)
	if err != nil {
		return "", fmt.Errorf("tokenizer: messages: %w", err)
	}
	list, ok := msgs.([]any)
	if !ok {
		return "", errors.New("tokenizer: messages is not an array")
	}
	for i, m := range list {
		mm, ok := m.(map[string]any)
		if !ok {
			return "", fmt.Errorf("tokenizer: messages[%d] is not an object", i)
		}
		if !in.KeepToolArgumentStrings {
			parseToolArguments(mm, ko)
		}
		if ct.flattenContent {
			// As vLLM does for templates that take content as a string: a missing or null
			// content is "", text parts are joined.
			if c, present := mm["content"]; !present || c == nil {
				if !present {
					id := mapID(mm)
					ko[id] = append(ko[id], "content")
				}
				mm["content"] = ""
			}
			flattenParts(mm)
		}
	}
	vars := map[string]any{}
	for k, v := range in.Extra {
		// Values go through JSON so that numbers and objects look like decoded messages;
		// a json.RawMessage keeps its objects' key order.
		raw, ok := v.(json.RawMessage)
		if !ok {
			if raw, err = json.Marshal(v); err != nil {
				return "", fmt.Errorf("tokenizer: extra %q: %w", k, err)
			}
		}
		dv, err := decodeOrdered(raw, ko)
		if err != nil {
			return "", fmt.Errorf("tokenizer: extra %q: %w", k, err)
		}
		vars[k] = dv
	}
	// The request's own variables win over extra ones of the same name.
	vars["messages"] = list
	vars["add_generation_prompt"] = in.AddGenerationPrompt
	vars["bos_token"] = t.bosToken
	vars["eos_token"] = t.eosToken
	vars["tools"] = nil
	if !isNull(in.Tools) {
		tools, err := decodeOrdered(in.Tools, ko)
		if err != nil {
			return "", fmt.Errorf("tokenizer: tools: %w", err)
		}
		if _, ok := tools.([]any); !ok {
			return "", errors.New("tokenizer: tools is not an array")
		}
		vars["tools"] = tools
	}
	t.tmpl.order.register(ko)
	defer t.tmpl.order.unregister(ko)
	defer func() {
		if r := recover(); r != nil {
			out, err = "", fmt.Errorf("tokenizer: chat template: render failure: %v", r)
		}
	}()
	var b bytes.Buffer
	if err := ct.t.Execute(&b, exec.NewContext(vars)); err != nil {
		return "", fmt.Errorf("tokenizer: chat template: %w", err)
	}
	return b.String(), nil
}

// parseToolArguments does what vLLM does to an assistant message's tool calls before
// rendering: JSON-string arguments become the decoded object (arguments that are not a JSON
// object stay as they are), and an empty tool_calls list is dropped.
func parseToolArguments(m map[string]any, ko keyOrder) {
	if m["role"] != "assistant" {
		return
	}
	calls, ok := m["tool_calls"].([]any)
	if !ok {
		return
	}
	if len(calls) == 0 {
		delete(m, "tool_calls")
		id := mapID(m)
		ko[id] = slices.DeleteFunc(slices.Clone(ko[id]), func(k string) bool { return k == "tool_calls" })
		return
	}
	for _, c := range calls {
		cm, ok := c.(map[string]any)
		if !ok {
			continue
		}
		fn, ok := cm["function"].(map[string]any)
		if !ok {
			continue
		}
		args, ok := fn["arguments"].(string)
		if !ok {
			continue
		}
		if v, err := decodeOrdered([]byte(args), ko); err == nil {
			if obj, ok := v.(map[string]any); ok {
				fn["arguments"] = obj
			}
		}
	}
}

// flattenParts turns a text-only content-part array into one string joined by "\n".
func flattenParts(m map[string]any) {
	parts, ok := m["content"].([]any)
	if !ok {
		return
	}
	texts := make([]string, 0, len(parts))
	for _, p := range parts {
		pm, ok := p.(map[string]any)
		if !ok || pm["type"] != "text" {
			return
		}
		s, ok := pm["text"].(string)
		if !ok {
			return
		}
		texts = append(texts, s)
	}
	m["content"] = strings.Join(texts, "\n")
}

// strftime implements the common directives of Python's time.strftime.
func strftime(t time.Time, f string) string {
	var b strings.Builder
	for i := 0; i < len(f); i++ {
		if f[i] != '%' || i+1 == len(f) {
			b.WriteByte(f[i])
			continue
		}
		i++
		switch f[i] {
		case 'd':
			fmt.Fprintf(&b, "%02d", t.Day())
		case 'm':
			fmt.Fprintf(&b, "%02d", int(t.Month()))
		case 'Y':
			fmt.Fprintf(&b, "%04d", t.Year())
		case 'y':
			fmt.Fprintf(&b, "%02d", t.Year()%100)
		case 'b':
			b.WriteString(t.Month().String()[:3])
		case 'B':
			b.WriteString(t.Month().String())
		case 'a':
			b.WriteString(t.Weekday().String()[:3])
		case 'A':
			b.WriteString(t.Weekday().String())
		case 'H':
			fmt.Fprintf(&b, "%02d", t.Hour())
		case 'M':
			fmt.Fprintf(&b, "%02d", t.Minute())
		case 'S':
			fmt.Fprintf(&b, "%02d", t.Second())
		case 'j':
			fmt.Fprintf(&b, "%03d", t.YearDay())
		case '%':
			b.WriteByte('%')
		default:
			b.WriteByte('%')
			b.WriteByte(f[i])
		}
	}
	return b.String()
}

// dictNames are gonja's Python dict methods, copied into kvgate's own method set.
var dictNames = []string{"keys", "values", "items", "get", "pop", "setdefault", "update", "copy", "clear"}

// original returns the map a method was called on: gonja passes the method a deep copy,
// which has lost its identity (and so its key order).
func original(self map[string]any, sv *exec.Value) map[string]any {
	if sv != nil {
		if m, ok := sv.Interface().(map[string]any); ok {
			return m
		}
	}
	return self
}

// dictMethods is gonja's dict methods with keys, values and items in insertion order.
func dictMethods(order *orderRegistry) *exec.MethodSet[map[string]any] {
	m := map[string]exec.Method[map[string]any]{}
	for _, n := range dictNames {
		if f, ok := builtins.Methods.Dict.Get(n); ok {
			m[n] = f
		}
	}
	m["keys"] = func(self map[string]any, sv *exec.Value, args *exec.VarArgs) (any, error) {
		if err := args.Take(); err != nil {
			return nil, exec.ErrInvalidCall(err)
		}
		self = original(self, sv)
		return slices.Clone(order.keys(self)), nil
	}
	m["values"] = func(self map[string]any, sv *exec.Value, args *exec.VarArgs) (any, error) {
		if err := args.Take(); err != nil {
			return nil, exec.ErrInvalidCall(err)
		}
		self = original(self, sv)
		keys := order.keys(self)
		out := make([]any, 0, len(keys))
		for _, k := range keys {
			out = append(out, self[k])
		}
		return out, nil
	}
	m["items"] = func(self map[string]any, sv *exec.Value, args *exec.VarArgs) (any, error) {
		if err := args.Take(); err != nil {
			return nil, exec.ErrInvalidCall(err)
		}
		self = original(self, sv)
		keys := order.keys(self)
		out := make([]any, 0, len(keys))
		for _, k := range keys {
			out = append(out, []any{k, self[k]})
		}
		return out, nil
	}
	return exec.NewMethodSet(m)
}
