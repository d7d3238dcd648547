// Package deploy holds kvgate's deployment files (Kubernetes manifests, the Grafana dashboard,
// Prometheus rules) and checks them offline: every object against its published schema, every
// query against the metrics kvgate exports.
package deploy

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path"
	"strconv"
	"strings"
	"time"

	yaml "go.yaml.in/yaml/v3"
)

// KustomizationFile is the name of a kustomize index; it is not a Kubernetes object.
const KustomizationFile = "kustomization.yaml"

// Object is one Kubernetes object of a manifest file.
type Object struct {
	File  string // path of the file, as given to ReadObjects or Decode
	Line  int    // line of the document's first key
	Group string // API group ("" for the core group)
	// Version and Kind come from apiVersion and kind.
	Version, Kind, Name string
	Body                map[string]any // the document as JSON values
	node                *yaml.Node     // the document's mapping, for line numbers
}

// String names the object as kubectl does, with its place: "epp/deployment.yaml:5 Deployment/kvgate-epp".
func (o Object) String() string { return fmt.Sprintf("%s:%d %s/%s", o.File, o.Line, o.Kind, o.Name) }

// GVK is group/version/kind, the key of a schema ("apps/v1/Deployment", "v1/Service" for
// the core group).
func (o Object) GVK() string { return gvk(o.Group, o.Version, o.Kind) }

func gvk(group, version, kind string) string {
	if group == "" {
		return version + "/" + kind
	}
	return group + "/" + version + "/" + kind
}

// LineOf returns the line of the value at a JSON pointer inside the object ("/spec/replicas"),
// or of the nearest enclosing value that exists.
func (o Object) LineOf(pointer string) int {
	n := o.node
	line := o.Line
	for _, tok := range strings.Split(strings.TrimPrefix(pointer, "/"), "/") {
		if n == nil || tok == "" {
			break
		}
		tok = strings.NewReplacer("~1", "/", "~0", "~").Replace(tok)
		var next *yaml.Node
		switch n.Kind {
		case yaml.MappingNode:
			for i := 0; i+1 < len(n.Content); i += 2 {
				if n.Content[i].Value == tok {
					next = n.Content[i+1]
					break
				}
			}
		case yaml.SequenceNode:
			if i, err := strconv.Atoi(tok); err == nil && i >= 0 && i < len(n.Content) {
				next = n.Content[i]
			}
		}
		if next == nil {
			break
		}
		n, line = next, next.Line
	}
	return line
}

// ReadObjects reads every *.yaml file under root in fsys (kustomization.yaml excepted), in
// lexical order, each a stream of documents.
func ReadObjects(fsys fs.FS, root string) ([]Object, error) {
	var out []Object
	err := fs.WalkDir(fsys, root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || path.Ext(p) != ".yaml" || path.Base(p) == KustomizationFile {
			return err
		}
		b, err := fs.ReadFile(fsys, p)
		if err != nil {
			return err
		}
		objs, err := Decode(p, b)
		out = append(out, objs...)
		return err
	})
	return out, err
}

// Decode reads the YAML documents of one file. Empty documents are skipped; a document that is
// not a mapping with apiVersion, kind and metadata.name is an error naming its line. YAML
// aliases are refused (no object is built from references).
func Decode(file string, data []byte) ([]Object, error) {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var out []Object
	for {
		var doc yaml.Node
		err := dec.Decode(&doc)
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return out, fmt.Errorf("%s: %w", file, err)
		}
		if len(doc.Content) == 0 || (doc.Content[0].Kind == yaml.ScalarNode && doc.Content[0].Tag == "!!null") {
			continue
		}
		o, err := decodeDoc(file, doc.Content[0])
		if err != nil {
			return out, err
		}
		out = append(out, o)
	}
}

func decodeDoc(file string, n *yaml.Node) (Object, error) {
	o := Object{File: file, Line: n.Line, node: n}
	if n.Kind != yaml.MappingNode {
		return o, fmt.Errorf("%s:%d: a document is not a mapping", file, n.Line)
	}
	if err := noAliases(n); err != nil {
		return o, fmt.Errorf("%s:%w", file, err)
	}
	var body any
	if err := n.Decode(&body); err != nil {
		return o, fmt.Errorf("%s:%d: %w", file, n.Line, err)
	}
	m, err := jsonValue(body)
	if err != nil {
		return o, fmt.Errorf("%s:%d: %w", file, n.Line, err)
	}
	o.Body = m.(map[string]any)
	apiVersion, _ := o.Body["apiVersion"].(string)
	o.Kind, _ = o.Body["kind"].(string)
	meta, _ := o.Body["metadata"].(map[string]any)
	o.Name, _ = meta["name"].(string)
	if apiVersion == "" || o.Kind == "" || o.Name == "" {
		return o, fmt.Errorf("%s:%d: an object needs apiVersion, kind and metadata.name", file, n.Line)
	}
	o.Version = apiVersion
	if g, v, ok := strings.Cut(apiVersion, "/"); ok {
		o.Group, o.Version = g, v
	}
	return o, nil
}

func noAliases(n *yaml.Node) error {
	if n.Kind == yaml.AliasNode || n.Anchor != "" {
		return fmt.Errorf("%d: YAML anchors and aliases are not used in manifests", n.Line)
	}
	for _, c := range n.Content {
		if err := noAliases(c); err != nil {
			return err
		}
	}
	return nil
}

// jsonValue turns what yaml.v3 decoded into JSON values: maps with string keys, slices,
// strings, bools, nil, int64 or float64.
func jsonValue(v any) (any, error) {
	switch v := v.(type) {
	case map[string]any:
		for k, e := range v {
			j, err := jsonValue(e)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", k, err)
			}
			v[k] = j
		}
		return v, nil
	case []any:
		for i, e := range v {
			j, err := jsonValue(e)
			if err != nil {
				return nil, fmt.Errorf("[%d]: %w", i, err)
			}
			v[i] = j
		}
		return v, nil
	case int:
		return int64(v), nil
	case string, bool, nil, int64, float64:
		return v, nil
	case uint64:
		return float64(v), nil
	case time.Time: // an unquoted timestamp; the API server reads it as a string
		return v.Format(time.RFC3339Nano), nil
	}
	return nil, fmt.Errorf("a %T is not a JSON value (a map key that is not a string?)", v)
}
