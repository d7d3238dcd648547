package xds

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cache "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"sigs.k8s.io/yaml"
)

// Snapshot turns resources into a go-control-plane snapshot whose version for each resource
// type is a hash of that type's content: an unchanged configuration keeps its versions, so
// nothing is pushed, and a change in endpoints pushes EDS only.
func (r *Resources) Snapshot() (*cache.Snapshot, error) {
	versions, err := r.typeVersions()
	if err != nil {
		return nil, err
	}
	snap := &cache.Snapshot{}
	for i, g := range r.groups() {
		snap.Resources[g.typ] = cache.NewResources(versions[i], g.items)
	}
	if err := snap.Consistent(); err != nil {
		return nil, err
	}
	return snap, nil
}

// Version is the version of the whole configuration: a hash of the four per-type versions.
func (r *Resources) Version() (string, error) {
	versions, err := r.typeVersions()
	if err != nil {
		return "", err
	}
	h := sha256.New()
	for _, v := range versions {
		h.Write([]byte(v))
	}
	return hex.EncodeToString(h.Sum(nil))[:16], nil
}

type group struct {
	typ   types.ResponseType
	items []types.Resource
}

func (r *Resources) groups() [4]group {
	return [4]group{
		{types.Listener, asResources(r.Listeners)},
		{types.Cluster, asResources(r.Clusters)},
		{types.Route, asResources(r.Routes)},
		{types.Endpoint, asResources(r.Endpoints)},
	}
}

// typeVersions hashes each type's resources, once: Resources are not changed after
// Translate (Check's tests aside, which never ask for versions).
func (r *Resources) typeVersions() ([4]string, error) {
	if r.versions != nil {
		return *r.versions, nil
	}
	var out [4]string
	for i, g := range r.groups() {
		v, err := hashResources(g.items)
		if err != nil {
			return out, err
		}
		out[i] = v
	}
	r.versions = &out
	return out, nil
}

func asResources[T types.Resource](in []T) []types.Resource {
	out := make([]types.Resource, len(in))
	for i, r := range in {
		out[i] = r
	}
	return out
}

// hashResources hashes resources in their given (sorted) order, each deterministically
// marshalled and length-prefixed so that no two lists share a hash by concatenation.
func hashResources(items []types.Resource) (string, error) {
	h := sha256.New()
	opts := proto.MarshalOptions{Deterministic: true}
	var buf []byte
	for _, it := range items {
		var err error
		buf, err = opts.MarshalAppend(buf[:0], it)
		if err != nil {
			return "", fmt.Errorf("xds: hashing %T: %w", it, err)
		}
		fmt.Fprintf(h, "%d:", len(buf))
		h.Write(buf)
	}
	return hex.EncodeToString(h.Sum(nil))[:16], nil
}

// YAML renders the resources as one YAML document with the keys listeners, clusters,
// routes and endpoints, in Envoy's field names: what `kvgate xds --dry-run` prints.
func (r *Resources) YAML() ([]byte, error) {
	var b bytes.Buffer
	b.WriteString("{")
	for i, g := range []struct {
		key   string
		items []types.Resource
	}{
		{"listeners", asResources(r.Listeners)},
		{"clusters", asResources(r.Clusters)},
		{"routes", asResources(r.Routes)},
		{"endpoints", asResources(r.Endpoints)},
	} {
		if i > 0 {
			b.WriteString(",")
		}
		fmt.Fprintf(&b, "%q:[", g.key)
		for j, it := range g.items {
			if j > 0 {
				b.WriteString(",")
			}
			js, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(it)
			if err != nil {
				return nil, err
			}
			b.Write(js)
		}
		b.WriteString("]")
	}
	b.WriteString("}")
	return yaml.JSONToYAML(b.Bytes())
}
