package main

import (
	"bytes"
	"os"
	"strings"
	"testing"

	"github.com/kvgate/kvgate/deploy"
	"github.com/kvgate/kvgate/workerd"
)

// manifestObjects reads deploy/kubernetes.
func manifestObjects(t *testing.T) []deploy.Object {
	t.Helper()
	objs, err := deploy.ReadObjects(os.DirFS("../../deploy"), "kubernetes")
	if err != nil {
		t.Fatal(err)
	}
	return objs
}

type container struct {
	where   string
	command []string
	args    []string
}

// kvgateContainers returns the containers of every Pod template that run the kvgate binary.
func kvgateContainers(objs []deploy.Object) []container {
	var out []container
	for _, o := range objs {
		spec, _ := o.Body["spec"].(map[string]any)
		tmpl, _ := spec["template"].(map[string]any)
		pod, _ := tmpl["spec"].(map[string]any)
		for _, key := range []string{"initContainers", "containers"} {
			list, _ := pod[key].([]any)
			for _, c := range list {
				c, _ := c.(map[string]any)
				cmd, args := stringList(c["command"]), stringList(c["args"])
				if len(cmd) == 0 || cmd[0] != "kvgate" {
					continue
				}
				name, _ := c["name"].(string)
				out = append(out, container{where: o.String() + " container " + name, command: cmd, args: append(cmd[1:], args...)})
			}
		}
	}
	return out
}

func stringList(v any) []string {
	l, _ := v.([]any)
	out := make([]string, 0, len(l))
	for _, e := range l {
		s, _ := e.(string)
		out = append(out, s)
	}
	return out
}

// Every kvgate container in deploy/kubernetes runs a real subcommand with real flags and
// valid values: its args parse with the command's own flag set, so a renamed or removed
// flag fails here rather than in a crash-looping Pod.
func TestManifestArgsParse(t *testing.T) {
	cs := kvgateContainers(manifestObjects(t))
	if len(cs) < 4 {
		t.Fatalf("only %d kvgate containers in deploy/kubernetes", len(cs))
	}
	seen := map[string]bool{}
	for _, c := range cs {
		if err := parseArgs(t, c.args); err != nil {
			t.Errorf("%s: kvgate %s: %v", c.where, strings.Join(c.args, " "), err)
		}
		if len(c.args) > 0 {
			seen[c.args[0]] = true
		}
	}
	for _, sub := range []string{"router", "workerd", "xds", "sim"} {
		if !seen[sub] {
			t.Errorf("no container runs kvgate %s", sub)
		}
	}
}

// A misspelt flag, a bad value or a stray argument is caught (the check above is not
// vacuous).
func TestManifestArgsParseRejects(t *testing.T) {
	for _, args := range [][]string{
		{"router", "--grcp=:9002"},
		{"router", "--metrics-addr"},
		{"router", "--max-inflight=many"},
		{"router", "extra"},
		{"xds", "--listen=:18000", "--router"},
		{"routr", "--grpc=:9002"},
		{"workerd", "--engine", "kind=sim", "--log-level=debug", "--nope"},
	} {
		if err := parseArgs(t, args); err == nil {
			t.Errorf("kvgate %s: accepted", strings.Join(args, " "))
		}
	}
}

// parseArgs resolves args to a subcommand and parses the rest with its flags, as
// cobra.Command.Execute would, without running anything.
func parseArgs(t *testing.T, args []string) error {
	root := newRootCmd()
	cmd, rest, err := root.Find(args)
	if err != nil {
		return err
	}
	if cmd == root {
		return errUnknownCommand(args)
	}
	if err := cmd.ParseFlags(rest); err != nil {
		return err
	}
	return cmd.ValidateArgs(cmd.Flags().Args())
}

type errUnknownCommand []string

func (e errUnknownCommand) Error() string { return "no subcommand " + strings.Join(e, " ") }

// The Envoy bootstrap in deploy/kubernetes is what `kvgate bootstrap` prints for the
// command line in its kvgate.dev/generated-by annotation.
func TestManifestEnvoyBootstrapIsGenerated(t *testing.T) {
	n := 0
	for _, o := range manifestObjects(t) {
		meta, _ := o.Body["metadata"].(map[string]any)
		ann, _ := meta["annotations"].(map[string]any)
		gen, _ := ann["kvgate.dev/generated-by"].(string)
		if gen == "" {
			continue
		}
		n++
		args := strings.Fields(gen)
		if len(args) < 2 || args[0] != "kvgate" || args[1] != "bootstrap" {
			t.Fatalf("%s: generated-by %q is not a kvgate bootstrap command", o, gen)
		}
		cmd := newRootCmd()
		var out bytes.Buffer
		cmd.SetOut(&out)
		cmd.SetArgs(args[1:])
		if err := cmd.Execute(); err != nil {
			t.Fatalf("%s: %s: %v", o, gen, err)
		}
		data, _ := o.Body["data"].(map[string]any)
		if got, _ := data["envoy.yaml"].(string); got != out.String() {
			t.Errorf("%s: data[envoy.yaml] is not what `%s` prints now; regenerate it:\n%s", o, gen, out.String())
		}
	}
	if n == 0 {
		t.Fatal("no generated Envoy bootstrap in deploy/kubernetes")
	}
}

// workerd's config in deploy/kubernetes loads with workerd's own strict parser.
func TestManifestWorkerdConfigLoads(t *testing.T) {
	n := 0
	for _, o := range manifestObjects(t) {
		if o.Kind != "ConfigMap" {
			continue
		}
		data, _ := o.Body["data"].(map[string]any)
		s, ok := data["workerd.yaml"].(string)
		if !ok {
			continue
		}
		n++
		cfg, warnings, err := workerd.ParseConfig([]byte(s))
		if err != nil || len(warnings) > 0 {
			t.Errorf("%s: workerd.yaml: %v %v", o, err, warnings)
		}
		if len(cfg.Engines) == 0 {
			t.Errorf("%s: workerd.yaml starts no engine", o)
		}
	}
	if n == 0 {
		t.Fatal("no workerd config in deploy/kubernetes")
	}
}
