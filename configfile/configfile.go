// Package configfile reads kvgate's YAML and JSON configuration files with one rule for all
// of them: keys are snake_case, an unknown key is an error naming its line, and the camelCase
// spelling of a known key is still read for one release, with a deprecation warning.
package configfile

import (
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"unicode"

	yaml "go.yaml.in/yaml/v3"
)

// Error is a problem at one place of a file: Line is 1-based (0 when unknown), Path names
// the value (for example "[2].block_size").
type Error struct {
	Line int
	Path string
	Msg  string
}

func (e *Error) Error() string {
	var b strings.Builder
	if e.Line > 0 {
		fmt.Fprintf(&b, "line %d: ", e.Line)
	}
	if e.Path != "" {
		b.WriteString(e.Path)
		b.WriteString(": ")
	}
	b.WriteString(e.Msg)
	return b.String()
}

// Meta is what Decode learnt besides the values: deprecation warnings (one per old key, in
// file order) and the line each value starts on, by path.
type Meta struct {
	Warnings []string
	lines    map[string]int
}

// Line returns the line the value at path starts on, 0 if unknown. Paths are written as in
// Error: "" for the document, "[2]" for a list item, "[2].address" for a key.
func (m Meta) Line(path string) int { return m.lines[path] }

// Errorf returns an *Error about the value at path, with its line.
func (m Meta) Errorf(path, format string, args ...any) error {
	return &Error{Line: m.Line(path), Path: path, Msg: fmt.Sprintf(format, args...)}
}

// Decode reads data (YAML, or JSON which is YAML) into v, a non-nil pointer. Struct fields
// are matched by their json tags, which are snake_case. A key that is the camelCase form of a
// field's name, or an old name listed in renamed (old -> new), is read as that field and
// reported in Meta.Warnings. Unknown keys, a key given twice, and values of the wrong type
// are errors (*Error) naming the line. YAML aliases are refused. An empty document leaves v
// as it is.
func Decode(data []byte, v any, renamed map[string]string) (Meta, error) {
	meta := Meta{lines: map[string]int{}}
	rv := reflect.ValueOf(v)
	if rv.Kind() != reflect.Pointer || rv.IsNil() {
		return meta, errors.New("configfile: Decode needs a non-nil pointer")
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return meta, &Error{Msg: strings.TrimPrefix(err.Error(), "yaml: ")}
	}
	if doc.Kind == 0 || len(doc.Content) == 0 {
		return meta, nil
	}
	d := &decoder{meta: &meta, renamed: renamed}
	val, err := d.walk(doc.Content[0], rv.Type().Elem(), "")
	if err != nil {
		return meta, err
	}
	js, err := json.Marshal(val)
	if err != nil {
		return meta, &Error{Msg: err.Error()}
	}
	if err := json.Unmarshal(js, v); err != nil {
		return meta, &Error{Line: doc.Content[0].Line, Msg: err.Error()}
	}
	return meta, nil
}

// Mapping reports whether data's document is a mapping (as opposed to a list or a scalar).
func Mapping(data []byte) bool {
	var doc yaml.Node
	if yaml.Unmarshal(data, &doc) != nil || len(doc.Content) == 0 {
		return false
	}
	return doc.Content[0].Kind == yaml.MappingNode
}

type decoder struct {
	meta    *Meta
	renamed map[string]string
}

var unmarshaler = reflect.TypeFor[json.Unmarshaler]()

// walk checks n against t and returns n as a value encoding/json turns back into a t.
func (d *decoder) walk(n *yaml.Node, t reflect.Type, path string) (any, error) {
	d.meta.lines[path] = n.Line
	if n.Kind == yaml.AliasNode || n.Anchor != "" {
		return nil, &Error{Line: n.Line, Path: path, Msg: "YAML anchors and aliases are not supported"}
	}
	if n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null" {
		return nil, nil
	}
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if reflect.PointerTo(t).Implements(unmarshaler) || t.Kind() == reflect.Interface {
		val, err := d.plain(n, path)
		if err != nil {
			return nil, err
		}
		return val, d.check(n, t, path, val)
	}
	switch t.Kind() {
	case reflect.Struct:
		return d.object(n, t, path)
	case reflect.Map:
		if n.Kind != yaml.MappingNode {
			return nil, d.want(n, path, "a mapping")
		}
		out := make(map[string]any, len(n.Content)/2)
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, vn := n.Content[i], n.Content[i+1]
			if k.Kind != yaml.ScalarNode {
				return nil, &Error{Line: k.Line, Path: path, Msg: "a key must be a scalar"}
			}
			p := join(path, k.Value)
			if _, dup := out[k.Value]; dup {
				return nil, &Error{Line: k.Line, Path: p, Msg: "given twice"}
			}
			val, err := d.walk(vn, t.Elem(), p)
			if err != nil {
				return nil, err
			}
			out[k.Value] = val
		}
		if t.Key().Kind() != reflect.String {
			return out, d.check(n, t, path, out)
		}
		return out, nil
	case reflect.Slice, reflect.Array:
		if n.Kind != yaml.SequenceNode {
			return nil, d.want(n, path, "a list")
		}
		out := make([]any, 0, len(n.Content))
		for i, item := range n.Content {
			val, err := d.walk(item, t.Elem(), fmt.Sprintf("%s[%d]", path, i))
			if err != nil {
				return nil, err
			}
			out = append(out, val)
		}
		return out, nil
	case reflect.String:
		if n.Kind != yaml.ScalarNode {
			return nil, d.want(n, path, "text")
		}
		return n.Value, nil
	}
	val, err := d.plain(n, path)
	if err != nil {
		return nil, err
	}
	return val, d.check(n, t, path, val)
}

// object checks a mapping against struct t, field by field.
func (d *decoder) object(n *yaml.Node, t reflect.Type, path string) (any, error) {
	if n.Kind != yaml.MappingNode {
		return nil, d.want(n, path, "a mapping")
	}
	fields := fieldsOf(t)
	out := make(map[string]any, len(n.Content)/2)
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, vn := n.Content[i], n.Content[i+1]
		if k.Kind != yaml.ScalarNode {
			return nil, &Error{Line: k.Line, Path: path, Msg: "a key must be a scalar"}
		}
		name := k.Value
		f, ok := fields[name]
		if !ok {
			canon := d.renamed[name]
			if canon == "" {
				canon = Snake(name)
			}
			if f, ok = fields[canon]; !ok || canon == name {
				return nil, &Error{Line: k.Line, Path: path, Msg: fmt.Sprintf("unknown field %q (known: %s)", name, known(fields))}
			}
			d.meta.Warnings = append(d.meta.Warnings, fmt.Sprintf("line %d: %q is deprecated, write %q (old keys are read until the next release)", k.Line, join(path, name), canon))
			name = canon
		}
		p := join(path, name)
		if _, dup := out[name]; dup {
			return nil, &Error{Line: k.Line, Path: p, Msg: "given twice (perhaps in both spellings)"}
		}
		val, err := d.walk(vn, f, p)
		if err != nil {
			return nil, err
		}
		out[name] = val
	}
	return out, nil
}

// plain converts n without checking keys (for values that decode themselves).
func (d *decoder) plain(n *yaml.Node, path string) (any, error) {
	switch n.Kind {
	case yaml.AliasNode:
		return nil, &Error{Line: n.Line, Path: path, Msg: "YAML anchors and aliases are not supported"}
	case yaml.ScalarNode:
		switch n.ShortTag() {
		case "!!null":
			return nil, nil
		case "!!bool", "!!int", "!!float":
			var v any
			if err := n.Decode(&v); err != nil {
				return nil, &Error{Line: n.Line, Path: path, Msg: err.Error()}
			}
			if f, ok := v.(float64); ok && (f != f || f > 1e308 || f < -1e308) {
				return nil, &Error{Line: n.Line, Path: path, Msg: fmt.Sprintf("%q is not a finite number", n.Value)}
			}
			return v, nil
		}
		return n.Value, nil
	case yaml.SequenceNode:
		out := make([]any, 0, len(n.Content))
		for i, item := range n.Content {
			v, err := d.plain(item, fmt.Sprintf("%s[%d]", path, i))
			if err != nil {
				return nil, err
			}
			out = append(out, v)
		}
		return out, nil
	case yaml.MappingNode:
		out := make(map[string]any, len(n.Content)/2)
		for i := 0; i+1 < len(n.Content); i += 2 {
			v, err := d.plain(n.Content[i+1], join(path, n.Content[i].Value))
			if err != nil {
				return nil, err
			}
			out[n.Content[i].Value] = v
		}
		return out, nil
	}
	return nil, &Error{Line: n.Line, Path: path, Msg: "unsupported YAML node"}
}

// check decodes val into a fresh t to find type errors at this value's line.
func (d *decoder) check(n *yaml.Node, t reflect.Type, path string, val any) error {
	js, err := json.Marshal(val)
	if err != nil {
		return &Error{Line: n.Line, Path: path, Msg: err.Error()}
	}
	if err := json.Unmarshal(js, reflect.New(t).Interface()); err != nil {
		var te *json.UnmarshalTypeError
		if !reflect.PointerTo(t).Implements(unmarshaler) && errors.As(err, &te) {
			return &Error{Line: n.Line, Path: path, Msg: fmt.Sprintf("want %s, got %q", kindName(t), n.Value)}
		}
		return &Error{Line: n.Line, Path: path, Msg: err.Error()}
	}
	return nil
}

func (d *decoder) want(n *yaml.Node, path, what string) error {
	got := map[yaml.Kind]string{yaml.MappingNode: "a mapping", yaml.SequenceNode: "a list", yaml.ScalarNode: fmt.Sprintf("%q", n.Value)}[n.Kind]
	return &Error{Line: n.Line, Path: path, Msg: fmt.Sprintf("want %s, got %s", what, got)}
}

func kindName(t reflect.Type) string {
	switch t.Kind() {
	case reflect.Bool:
		return "true or false"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return "an integer"
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "a non-negative integer"
	case reflect.Float32, reflect.Float64:
		return "a number"
	}
	return t.String()
}

// fieldsOf maps the json names of t's exported fields (embedded structs flattened) to their
// types.
func fieldsOf(t reflect.Type) map[string]reflect.Type {
	out := map[string]reflect.Type{}
	for i := range t.NumField() {
		f := t.Field(i)
		if !f.IsExported() && !f.Anonymous {
			continue
		}
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name == "-" {
			continue
		}
		if f.Anonymous && name == "" {
			ft := f.Type
			if ft.Kind() == reflect.Pointer {
				ft = ft.Elem()
			}
			if ft.Kind() == reflect.Struct {
				for k, v := range fieldsOf(ft) {
					out[k] = v
				}
				continue
			}
		}
		if name == "" {
			name = f.Name
		}
		out[name] = f.Type
	}
	return out
}

func known(fields map[string]reflect.Type) string {
	names := make([]string, 0, len(fields))
	for k := range fields {
		names = append(names, k)
	}
	slices.Sort(names)
	return strings.Join(names, ", ")
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

// Snake returns the snake_case form of a camelCase key: blockSize -> block_size,
// routerTLS -> router_tls, metricsURL -> metrics_url. Other keys come back unchanged.
func Snake(s string) string {
	rs := []rune(s)
	var b strings.Builder
	for i, r := range rs {
		if unicode.IsUpper(r) {
			prevLower := i > 0 && (unicode.IsLower(rs[i-1]) || unicode.IsDigit(rs[i-1]))
			nextLower := i > 0 && i+1 < len(rs) && unicode.IsUpper(rs[i-1]) && unicode.IsLower(rs[i+1])
			if prevLower || nextLower {
				b.WriteByte('_')
			}
			b.WriteRune(unicode.ToLower(r))
			continue
		}
		b.WriteRune(r)
	}
	return b.String()
}
