package deploy

import (
	"bytes"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"slices"
	"sort"
	"strings"

	"github.com/santhosh-tekuri/jsonschema/v6"
)

// schemaFS holds the published schemas, trimmed to the kinds the manifests use
// (schemas/README.md names each file's source; `go test ./deploy -update-schemas` rewrites them).
//
//go:embed schemas/*.json
var schemaFS embed.FS

// SchemaFile is the layout of each file under schemas/: the kinds it defines, by
// group/version/kind, each naming its entry in Components.Schemas (OpenAPI v3 layout, so
// that "#/components/schemas/..." references resolve inside the file).
type SchemaFile struct {
	Source     string            `json:"source"`
	Kinds      map[string]string `json:"kinds"`
	Components struct {
		Schemas map[string]any `json:"schemas"`
	} `json:"components"`
}

// objectMeta is the schema every object's metadata is checked against, CRDs' included.
const objectMeta = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"

// Validator checks objects against the schemas of their kinds, strictly: a field the schema
// does not name is an error (as `kubectl apply --validate=strict` and kubeconform -strict do),
// as are a wrong type, a missing required field and a value outside an enum. CEL rules
// (x-kubernetes-validations) are not evaluated. Safe for concurrent use.
type Validator struct {
	kinds   map[string]*jsonschema.Schema
	sources map[string]string // GVK -> source
}

// NewValidator compiles the embedded schemas.
func NewValidator() (*Validator, error) {
	sub, err := fs.Sub(schemaFS, "schemas")
	if err != nil {
		return nil, err
	}
	return NewValidatorFS(sub)
}

// NewValidatorFS compiles the schema files (*.json, SchemaFile) at the top of fsys.
func NewValidatorFS(fsys fs.FS) (*Validator, error) {
	names, err := fs.Glob(fsys, "*.json")
	if err != nil {
		return nil, err
	}
	files := map[string]*SchemaFile{}
	metaURL := ""
	for _, name := range names {
		b, err := fs.ReadFile(fsys, name)
		if err != nil {
			return nil, err
		}
		var f SchemaFile
		dec := json.NewDecoder(bytes.NewReader(b))
		dec.UseNumber()
		if err := dec.Decode(&f); err != nil {
			return nil, fmt.Errorf("schemas/%s: %w", name, err)
		}
		files[name] = &f
		if _, ok := f.Components.Schemas[objectMeta]; ok {
			metaURL = schemaURL(name, objectMeta)
		}
	}
	if metaURL == "" {
		return nil, fmt.Errorf("no schema file defines %s", objectMeta)
	}
	c := jsonschema.NewCompiler()
	c.DefaultDraft(jsonschema.Draft2020)
	v := &Validator{kinds: map[string]*jsonschema.Schema{}, sources: map[string]string{}}
	for _, name := range names {
		f := files[name]
		for _, s := range f.Components.Schemas {
			strict(s)
		}
		for _, def := range f.Kinds {
			root, ok := f.Components.Schemas[def].(map[string]any)
			if !ok {
				return nil, fmt.Errorf("schemas/%s: kind schema %s missing", name, def)
			}
			if props, ok := root["properties"].(map[string]any); ok {
				if _, ok := props["metadata"]; ok { // CRDs say only "type: object"
					props["metadata"] = map[string]any{"$ref": metaURL}
				}
			}
		}
		doc := map[string]any{"components": map[string]any{"schemas": f.Components.Schemas}}
		if err := c.AddResource(fileURL(name), doc); err != nil {
			return nil, fmt.Errorf("schemas/%s: %w", name, err)
		}
	}
	for _, name := range names {
		for k, def := range files[name].Kinds {
			s, err := c.Compile(schemaURL(name, def))
			if err != nil {
				return nil, fmt.Errorf("schemas/%s: %s: %w", name, k, err)
			}
			if _, dup := v.kinds[k]; dup {
				return nil, fmt.Errorf("schemas/%s: %s is defined twice", name, k)
			}
			v.kinds[k], v.sources[k] = s, files[name].Source
		}
	}
	return v, nil
}

func fileURL(name string) string        { return "file:///schemas/" + name }
func schemaURL(name, def string) string { return fileURL(name) + "#/components/schemas/" + def }

// Kinds lists the group/version/kinds the validator knows, sorted.
func (v *Validator) Kinds() []string {
	out := make([]string, 0, len(v.kinds))
	for k := range v.kinds {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// Source names where the schema of a group/version/kind comes from.
func (v *Validator) Source(gvk string) string { return v.sources[gvk] }

// Validate checks one object. The error lists every violation as
// "file:line: Kind/name: /json/pointer: what is wrong", one per line.
func (v *Validator) Validate(o Object) error {
	s, ok := v.kinds[o.GVK()]
	if !ok {
		return fmt.Errorf("%s: no schema for %s (known: %s)", o, o.GVK(), strings.Join(v.Kinds(), ", "))
	}
	// Round-trip through JSON: the validator wants json.Number for numbers.
	b, err := json.Marshal(o.Body)
	if err != nil {
		return fmt.Errorf("%s: %w", o, err)
	}
	inst, err := jsonschema.UnmarshalJSON(bytes.NewReader(b))
	if err != nil {
		return fmt.Errorf("%s: %w", o, err)
	}
	err = s.Validate(inst)
	var ve *jsonschema.ValidationError
	if !errors.As(err, &ve) {
		if err != nil {
			return fmt.Errorf("%s: %w", o, err)
		}
		return nil
	}
	var msgs []string
	for _, u := range leaves(*ve.DetailedOutput()) {
		msgs = append(msgs, fmt.Sprintf("%s:%d: %s/%s: %s: %s", o.File, o.LineOf(u.InstanceLocation), o.Kind, o.Name,
			orRoot(u.InstanceLocation), u.Error.String()))
	}
	if len(msgs) == 0 {
		msgs = append(msgs, fmt.Sprintf("%s: %v", o, err))
	}
	msgs = slices.Compact(msgs)
	return errors.New(strings.Join(msgs, "\n"))
}

// leaves are the units of an output tree that name a violation themselves, not a summary of
// those below them ("allOf failed").
func leaves(u jsonschema.OutputUnit) []jsonschema.OutputUnit {
	if len(u.Errors) == 0 {
		if u.Error == nil {
			return nil
		}
		return []jsonschema.OutputUnit{u}
	}
	var out []jsonschema.OutputUnit
	for _, c := range u.Errors {
		out = append(out, leaves(c)...)
	}
	return out
}

func orRoot(p string) string {
	if p == "" {
		return "/"
	}
	return p
}

// strict tightens an OpenAPI schema (in place) into the JSON Schema the API server enforces:
// objects with named properties take no others (unless x-kubernetes-preserve-unknown-fields),
// and x-kubernetes-int-or-string means an integer or a string.
func strict(v any) {
	s, ok := v.(map[string]any)
	if !ok {
		return
	}
	if s["x-kubernetes-int-or-string"] == true {
		delete(s, "type")
		delete(s, "format")
		if _, ok := s["anyOf"]; !ok {
			s["anyOf"] = []any{map[string]any{"type": "integer"}, map[string]any{"type": "string"}}
		}
	}
	props, hasProps := s["properties"].(map[string]any)
	if _, set := s["additionalProperties"]; hasProps && !set && s["x-kubernetes-preserve-unknown-fields"] != true {
		s["additionalProperties"] = false
	}
	for _, p := range props {
		strict(p)
	}
	for _, k := range []string{"additionalProperties", "items", "not"} {
		strict(s[k])
	}
	for _, k := range []string{"allOf", "anyOf", "oneOf"} {
		if l, ok := s[k].([]any); ok {
			for _, e := range l {
				strict(e)
			}
		}
	}
}
