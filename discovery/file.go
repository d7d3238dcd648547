package discovery

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/kvgate/kvgate/configfile"
)

// fileEndpoint is one engine in an endpoints file. The keys are those of the Consul meta
// (snake_case); see docs/CONFIGURATION.md.
type fileEndpoint struct {
	Name       string   `json:"name"`
	Address    string   `json:"address"`
	Models     []string `json:"models"`
	Role       string   `json:"role"`
	BlockSize  int      `json:"block_size"`
	KVEvents   string   `json:"kv_events"`
	KVBind     bool     `json:"kv_bind"`
	KVReplay   string   `json:"kv_replay"`
	KVTopic    string   `json:"kv_topic"`
	MetricsURL string   `json:"metrics_url"`
	Workerd    string   `json:"workerd"`
	// Healthy defaults to true: a listed engine is assumed up; health checks do the rest.
	Healthy *bool `json:"healthy"`
}

// ParseEndpoints reads an endpoints file: a YAML or JSON list of engines (or a mapping with
// the list under "endpoints"), each with address (host:port, or an http:// or https:// URL
// whose host:port is taken; https means the engine serves TLS) and models, and optionally name (default: the address), role (aggregated, prefill
// or decode; default aggregated), block_size, kv_events, kv_bind, kv_replay, kv_topic,
// metrics_url, workerd and healthy (default true). Unknown keys, a duplicate name and a
// missing address or model are errors naming the line. The camelCase spelling of a key
// (blockSize) is read too and reported in the returned warnings, one per key.
func ParseEndpoints(data []byte) ([]Endpoint, []string, error) {
	var (
		list []fileEndpoint
		meta configfile.Meta
		err  error
		pre  string // path prefix of the list
	)
	if configfile.Mapping(data) {
		var wrapped struct {
			Endpoints []fileEndpoint `json:"endpoints"`
		}
		meta, err = configfile.Decode(data, &wrapped, nil)
		list, pre = wrapped.Endpoints, "endpoints"
	} else {
		meta, err = configfile.Decode(data, &list, nil)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("endpoints file: %w", err)
	}
	out := make([]Endpoint, 0, len(list))
	seen := map[string]bool{}
	for i, e := range list {
		at := fmt.Sprintf("%s[%d]", pre, i)
		fail := func(key, format string, args ...any) ([]Endpoint, []string, error) {
			p := at
			if meta.Line(at+"."+key) > 0 {
				p = at + "." + key
			}
			return nil, nil, fmt.Errorf("endpoints file: %w", meta.Errorf(p, format, args...))
		}
		addr, err := HostPort(e.Address)
		if err != nil {
			return fail("address", "%v", err)
		}
		if len(e.Models) == 0 || e.Models[0] == "" {
			return fail("models", "models is required: the models this engine serves")
		}
		if e.Name == "" {
			e.Name = addr
		}
		if seen[e.Name] {
			return fail("name", "name %q is used twice", e.Name)
		}
		seen[e.Name] = true
		switch e.Role {
		case "":
			e.Role = RoleAggregated
		case RoleAggregated, RolePrefill, RoleDecode:
		default:
			return fail("role", "role %q: want aggregated, prefill or decode", e.Role)
		}
		if e.BlockSize < 0 {
			return fail("block_size", "block_size %d is negative", e.BlockSize)
		}
		out = append(out, Endpoint{
			Name: e.Name, Address: addr, Models: e.Models, Role: e.Role, BlockSize: e.BlockSize,
			KVEvents: e.KVEvents, KVBind: e.KVBind, KVReplay: e.KVReplay, KVTopic: e.KVTopic,
			MetricsURL: e.MetricsURL, Workerd: e.Workerd, Healthy: e.Healthy == nil || *e.Healthy,
			TLS: HTTPS(e.Address),
		})
	}
	return sortedCopy(out), meta.Warnings, nil
}

// HostPort returns the host:port of "h:p" or of a URL "http://h:p/...", checking that the
// port is a number.
func HostPort(s string) (string, error) {
	if s == "" {
		return "", fmt.Errorf("address is required (host:port of the engine's OpenAI server)")
	}
	hp := strings.TrimRight(s, "/")
	if strings.Contains(s, "://") {
		u, err := url.Parse(s)
		if err != nil {
			return "", fmt.Errorf("address %q: %v", s, err)
		}
		hp = u.Host
	}
	host, port, err := net.SplitHostPort(hp)
	if err != nil || host == "" {
		return "", fmt.Errorf("address %q: want host:port", s)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return "", fmt.Errorf("address %q: port %q is not a number from 1 to 65535", s, port)
	}
	return hp, nil
}

// HTTPS reports whether an engine address is an https:// URL (case-insensitive scheme): the
// engine serves its OpenAI API over TLS. host:port and http:// URLs are plain HTTP.
func HTTPS(s string) bool {
	scheme, _, ok := strings.Cut(s, "://")
	return ok && strings.EqualFold(scheme, "https")
}

// File is a Source over an endpoints file (see ParseEndpoints) that the router and the xDS
// server watch: it reports the file's engines at once, then again whenever the file's content
// changes (checked every Interval). An edit that does not parse, or a file gone missing,
// keeps the last good set and is logged, so a half-written edit never empties the pools.
// Deprecation warnings are logged once per load of a changed file.
type File struct {
	path     string
	interval time.Duration
	log      *slog.Logger
	data     []byte     // the content loaded by NewFile
	eps      []Endpoint // and its engines
}

var _ Source = (*File)(nil)

// DefaultFileInterval is how often a File checks its file for changes.
const DefaultFileInterval = time.Second

// NewFile loads path once, so that a bad file fails at start, and returns the source.
// interval <= 0 means DefaultFileInterval; a nil log discards.
func NewFile(path string, interval time.Duration, log *slog.Logger) (*File, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if interval <= 0 {
		interval = DefaultFileInterval
	}
	f := &File{path: path, interval: interval, log: log}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	eps, err := f.parse(data)
	if err != nil {
		return nil, err
	}
	f.data, f.eps = data, eps
	return f, nil
}

// Endpoints returns the engines the file held when NewFile loaded it.
func (f *File) Endpoints() []Endpoint { return sortedCopy(f.eps) }

func (f *File) parse(data []byte) ([]Endpoint, error) {
	eps, warnings, err := ParseEndpoints(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", f.path, err)
	}
	for _, w := range warnings {
		f.log.Warn("endpoints file uses a deprecated key", "path", f.path, "warning", w)
	}
	return eps, nil
}

// Watch implements Source.
func (f *File) Watch(ctx context.Context) <-chan []Endpoint {
	box := newLatest()
	box.put(sortedCopy(f.eps))
	go func() {
		last, bad := f.data, []byte(nil) // the last good content, and the last refused
		t := time.NewTicker(f.interval)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			data, err := os.ReadFile(f.path)
			switch {
			case err != nil:
				if bad == nil || len(bad) > 0 { // once per outage
					f.log.Warn("endpoints file unreadable; keeping the last set", "path", f.path, "err", err)
				}
				bad = []byte{}
			case bytes.Equal(data, last):
				bad = nil
			case bad != nil && bytes.Equal(data, bad):
			default:
				eps, err := f.parse(data)
				if err != nil {
					bad = data
					f.log.Warn("endpoints file invalid; keeping the last set", "err", err)
					continue
				}
				last, bad = data, nil
				f.log.Info("endpoints file reloaded", "path", f.path, "endpoints", len(eps))
				box.put(eps)
			}
		}
	}()
	return forward(ctx, box, nil)
}
