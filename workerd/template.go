package workerd

import (
	"fmt"
	"strconv"

	"github.com/kvgate/kvgate/discovery"
)

// Template is an engine configuration the fleet API starts copies of: engine i of template
// "t" is named "t-<i>" (numbers are never reused while workerd runs).
type Template struct {
	Name        string            `json:"name"`
	Kind        string            `json:"kind"`  // vllm, sglang, sim
	Model       string            `json:"model"` // model id or path
	ServedNames []string          `json:"served_names,omitempty"`
	Role        string            `json:"role,omitempty"` // aggregated (default), prefill, decode
	GPUs        int               `json:"gpus,omitempty"` // GPUs per engine (vllm, sglang: at least 1)
	BlockSize   int               `json:"block_size,omitempty"`
	Binary      string            `json:"binary,omitempty"`
	Args        []string          `json:"args,omitempty"`
	Env         map[string]string `json:"env,omitempty"`
	NoKVEvents  bool              `json:"no_kv_events,omitempty"`
	NoSidecar   bool              `json:"no_sidecar,omitempty"`
	// MinReplicas engines are started with workerd and Drain never goes below them;
	// MaxReplicas (0 = as many as the GPUs allow) bounds Start.
	MinReplicas int `json:"min_replicas,omitempty"`
	MaxReplicas int `json:"max_replicas,omitempty"`
}

// spec is the engine spec of the template's engine number i; ports are picked at start.
func (t Template) spec(i int) EngineSpec {
	return EngineSpec{
		Name: t.Name + "-" + strconv.Itoa(i), Kind: t.Kind, Model: t.Model, ServedNames: t.ServedNames,
		Role: t.Role, GPUs: t.GPUs, BlockSize: t.BlockSize, Binary: t.Binary, Args: t.Args, Env: t.Env,
		NoKVEvents: t.NoKVEvents, NoSidecar: t.NoSidecar,
	}
}

// gpusPerEngine is what one engine of the template holds: vLLM and SGLang need at least one.
func (t Template) gpusPerEngine() int {
	if t.GPUs == 0 && t.Kind != KindSim {
		return 1
	}
	return t.GPUs
}

// servedModel is the model name routers know the engines by (their pool's model): the
// first served name, else the model.
func (t Template) servedModel() string {
	if len(t.ServedNames) > 0 {
		return t.ServedNames[0]
	}
	return t.Model
}

func (t Template) role() string {
	if t.Role == "" {
		return discovery.RoleAggregated
	}
	return t.Role
}

// validateTemplates checks every template; names are the static engines' names, which a
// template's engines must not collide with.
func (c *Config) validateTemplates(names map[string]bool) []error {
	var errs []error
	seen := map[string]bool{}
	for i, t := range c.Templates {
		where := fmt.Sprintf("template %q", t.Name)
		if t.Name == "" {
			where = fmt.Sprintf("template %d", i)
			errs = append(errs, fmt.Errorf("%s: name missing", where))
		} else if seen[t.Name] {
			errs = append(errs, fmt.Errorf("%s: name used twice", where))
		}
		seen[t.Name] = true
		switch t.Kind {
		case KindVLLM, KindSGLang, KindSim:
		case "":
			errs = append(errs, fmt.Errorf("%s: kind missing (vllm, sglang or sim)", where))
		default:
			errs = append(errs, fmt.Errorf("%s: unknown kind %q (vllm, sglang or sim)", where, t.Kind))
		}
		if t.Model == "" && t.Kind != KindSim {
			errs = append(errs, fmt.Errorf("%s: model missing", where))
		}
		switch t.Role {
		case "", discovery.RoleAggregated, discovery.RolePrefill, discovery.RoleDecode:
		default:
			errs = append(errs, fmt.Errorf("%s: unknown role %q (aggregated, prefill or decode)", where, t.Role))
		}
		if t.GPUs < 0 || t.BlockSize < 0 || t.MinReplicas < 0 || t.MaxReplicas < 0 {
			errs = append(errs, fmt.Errorf("%s: negative gpus, block_size, min_replicas or max_replicas", where))
		}
		if t.MaxReplicas > 0 && t.MinReplicas > t.MaxReplicas {
			errs = append(errs, fmt.Errorf("%s: min_replicas %d above max_replicas %d", where, t.MinReplicas, t.MaxReplicas))
		}
		for n := range names {
			if len(n) > len(t.Name)+1 && n[:len(t.Name)+1] == t.Name+"-" {
				if _, err := strconv.Atoi(n[len(t.Name)+1:]); err == nil {
					errs = append(errs, fmt.Errorf("%s: engine %q has a name the template's engines use", where, n))
				}
			}
		}
	}
	return errs
}
