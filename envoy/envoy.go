// Package envoy holds kvgate's Envoy configuration files and the code that parses Envoy
// configuration from YAML into Envoy's protos and validates it, typed configs included.
// It owns no step of a request or a KV event; it holds the configuration of Envoy's R1 and R7.
package envoy

import (
	"errors"
	"fmt"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/anypb"
	"sigs.k8s.io/yaml"

	// The typed configs kvgate writes: importing them registers their types, so that Any
	// fields resolve in protojson and in Validate.
	_ "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/stream/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/http/early_header_mutation/header_mutation/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
)

// validator is what protoc-gen-validate generates on every Envoy message.
type validator interface{ ValidateAll() error }

// maxDepth bounds the nesting of Any inside Any that Validate follows.
const maxDepth = 32

// Validate runs the message's generated ValidateAll and does the same for every message
// packed in an Any anywhere inside it (typed_config, typed_extension_protocol_options,
// typed_per_filter_config...), recursively. An Any whose type is not registered in this
// binary is an error: Envoy would reject it too. Safe for concurrent use.
func Validate(m proto.Message) error {
	return NewValidator().Validate(m)
}

// Validator is Validate with a memory of which message types can hold an Any somewhere
// below them, so that validating many resources skips the subtrees that cannot (endpoint
// addresses, metadata structs). Not safe for concurrent use; the zero value is not usable.
type Validator struct {
	holdsAny map[protoreflect.FullName]bool
}

// NewValidator returns a Validator with an empty memory.
func NewValidator() *Validator {
	return &Validator{holdsAny: map[protoreflect.FullName]bool{}}
}

// Validate is the package-level Validate.
func (v *Validator) Validate(m proto.Message) error {
	return v.validateRoot(m.ProtoReflect(), 0)
}

// validateRoot validates a message whose parents do not cover it (the top message, or the
// content of an Any): ValidateAll already recurses into ordinary sub-messages, so below a
// root only Any fields need visiting. Paths are added to errors on the way back up, so the
// happy path builds no strings.
func (v *Validator) validateRoot(m protoreflect.Message, depth int) error {
	if depth > maxDepth {
		return fmt.Errorf("Any nested deeper than %d", maxDepth)
	}
	if !m.IsValid() {
		return nil
	}
	var errs []error
	if val, ok := m.Interface().(validator); ok {
		if err := val.ValidateAll(); err != nil {
			errs = append(errs, err)
		}
	}
	if err := v.findAnys(m, depth); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

var anyName = (&anypb.Any{}).ProtoReflect().Descriptor().FullName()

// findAnys walks m's message fields and validates the content of every Any it meets.
func (v *Validator) findAnys(m protoreflect.Message, depth int) error {
	if a, ok := m.Interface().(*anypb.Any); ok {
		inner, err := a.UnmarshalNew()
		if err != nil {
			return fmt.Errorf("typed config %s: %w", a.GetTypeUrl(), err)
		}
		if err := v.validateRoot(inner.ProtoReflect(), depth+1); err != nil {
			return fmt.Errorf("(%s): %w", inner.ProtoReflect().Descriptor().FullName(), err)
		}
		return nil
	}
	var errs []error
	m.Range(func(fd protoreflect.FieldDescriptor, val protoreflect.Value) bool {
		elem := fd
		if fd.IsMap() {
			elem = fd.MapValue()
		}
		if elem.Message() == nil || !v.mayHoldAny(elem.Message()) {
			return true
		}
		switch {
		case fd.IsMap():
			val.Map().Range(func(k protoreflect.MapKey, mv protoreflect.Value) bool {
				if err := v.findAnys(mv.Message(), depth); err != nil {
					errs = append(errs, fmt.Errorf("%s[%v].%w", fd.Name(), k.Interface(), err))
				}
				return true
			})
		case fd.IsList():
			l := val.List()
			for i := 0; i < l.Len(); i++ {
				if err := v.findAnys(l.Get(i).Message(), depth); err != nil {
					errs = append(errs, fmt.Errorf("%s[%d].%w", fd.Name(), i, err))
				}
			}
		default:
			if err := v.findAnys(val.Message(), depth); err != nil {
				errs = append(errs, fmt.Errorf("%s.%w", fd.Name(), err))
			}
		}
		return true
	})
	return errors.Join(errs...)
}

// mayHoldAny reports whether a message of type md can contain an Any at any depth: a
// search of the type graph from md, remembered per type.
func (v *Validator) mayHoldAny(md protoreflect.MessageDescriptor) bool {
	if r, ok := v.holdsAny[md.FullName()]; ok {
		return r
	}
	seen := map[protoreflect.FullName]bool{md.FullName(): true}
	queue := []protoreflect.MessageDescriptor{md}
	found := false
	for len(queue) > 0 && !found {
		cur := queue[0]
		queue = queue[1:]
		if cur.FullName() == anyName {
			found = true
			break
		}
		if r, ok := v.holdsAny[cur.FullName()]; ok {
			if r {
				found = true
			}
			continue // known not to reach an Any: nothing below it does either
		}
		fields := cur.Fields()
		for i := 0; i < fields.Len(); i++ {
			fd := fields.Get(i)
			if fd.IsMap() {
				fd = fd.MapValue()
			}
			if next := fd.Message(); next != nil && !seen[next.FullName()] {
				seen[next.FullName()] = true
				queue = append(queue, next)
			}
		}
	}
	v.holdsAny[md.FullName()] = found
	return found
}

// FromYAML parses Envoy configuration in YAML (or JSON) into m, strictly: unknown fields
// and unresolvable typed configs are errors.
func FromYAML(data []byte, m proto.Message) error {
	js, err := yaml.YAMLToJSON(data)
	if err != nil {
		return fmt.Errorf("yaml: %w", err)
	}
	if err := protojson.Unmarshal(js, m); err != nil {
		return fmt.Errorf("%s: %w", m.ProtoReflect().Descriptor().FullName(), err)
	}
	return nil
}

// ToYAML renders m as YAML with Envoy's field names (snake_case), keys sorted, so that the
// output is stable and ready for `envoy -c`.
func ToYAML(m proto.Message) ([]byte, error) {
	js, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(m)
	if err != nil {
		return nil, err
	}
	return yaml.JSONToYAML(js)
}
