package deploy

import (
	"encoding/json"
	"fmt"
	"regexp"
	"slices"
	"sort"
	"strings"

	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/promql/parser"
	"sigs.k8s.io/yaml"
)

// Query is one PromQL expression of a deployment file and where it is.
type Query struct {
	File  string // the file it is in
	Where string // what holds it: a panel's title, a rule's name, a trigger
	Expr  string
}

func (q Query) String() string { return fmt.Sprintf("%s: %s: %s", q.File, q.Where, q.Expr) }

// grafanaVar matches Grafana's variables inside an expression: $__rate_interval, ${model},
// $model, [[model]].
var grafanaVar = regexp.MustCompile(`\$\{?(__)?[a-zA-Z_][a-zA-Z0-9_]*(:[a-z]+)?\}?|\[\[[a-zA-Z_][a-zA-Z0-9_]*\]\]`)

// Expand replaces Grafana's variables with values PromQL parses: the range variables
// ($__rate_interval, $__interval, $__range) with 5m, others with a string that can stand in
// a label matcher's value ("model=~\"$model\"").
func Expand(expr string) string {
	return grafanaVar.ReplaceAllStringFunc(expr, func(v string) string {
		if strings.Contains(v, "__") {
			return "5m"
		}
		return "x"
	})
}

// MetricNames returns the metric names an expression selects, sorted and distinct: every
// vector selector's name, whether written as name{...} or {__name__="name"}. A selector
// that matches names by regular expression is an error: the check could not say which
// metrics it needs. Grafana variables are expanded first (Expand).
func MetricNames(expr string) ([]string, error) {
	e, err := parser.ParseExpr(Expand(expr))
	if err != nil {
		return nil, err
	}
	var names []string
	var walkErr error
	parser.Inspect(e, func(n parser.Node, _ []parser.Node) error {
		vs, ok := n.(*parser.VectorSelector)
		if !ok {
			return nil
		}
		name := vs.Name
		for _, m := range vs.LabelMatchers {
			if m.Name != labels.MetricName {
				continue
			}
			if m.Type != labels.MatchEqual {
				walkErr = fmt.Errorf("selector %s matches metric names by %s: name each metric", vs, m.Type)
				return walkErr
			}
			name = m.Value
		}
		names = append(names, name)
		return nil
	})
	if walkErr != nil {
		return nil, walkErr
	}
	sort.Strings(names)
	return slices.Compact(names), nil
}

// labelValues matches Grafana's label_values(metric, label) and label_values(label) variable queries.
var labelValues = regexp.MustCompile(`^\s*label_values\(\s*(.*?)\s*(,\s*[a-zA-Z_][a-zA-Z0-9_]*\s*)?\)\s*$`)

// DashboardQueries returns the queries of a Grafana dashboard (JSON): every panel target's
// expr, rows' panels included, and every query variable (label_values(selector, label) gives
// its selector; query_result(expr) its expr).
func DashboardQueries(file string, data []byte) ([]Query, error) {
	var d struct {
		Title      string `json:"title"`
		Panels     []panel
		Templating struct {
			List []struct {
				Name  string `json:"name"`
				Type  string `json:"type"`
				Query any    `json:"query"`
			} `json:"list"`
		} `json:"templating"`
	}
	if err := json.Unmarshal(data, &d); err != nil {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	var out []Query
	var walk func(ps []panel)
	walk = func(ps []panel) {
		for _, p := range ps {
			for _, t := range p.Targets {
				if t.Expr != "" {
					out = append(out, Query{File: file, Where: fmt.Sprintf("panel %q target %s", p.Title, t.RefID), Expr: t.Expr})
				}
			}
			walk(p.Panels)
		}
	}
	walk(d.Panels)
	for _, v := range d.Templating.List {
		if v.Type != "query" {
			continue
		}
		q, _ := v.Query.(string)
		if m, ok := v.Query.(map[string]any); ok {
			q, _ = m["query"].(string)
		}
		switch {
		case labelValues.MatchString(q):
			sel := labelValues.FindStringSubmatch(q)[1]
			if sel == "" || !strings.ContainsAny(q, ",") {
				return nil, fmt.Errorf("%s: variable %s: %q queries every metric; name one", file, v.Name, q)
			}
			out = append(out, Query{File: file, Where: "variable " + v.Name, Expr: sel})
		case strings.HasPrefix(strings.TrimSpace(q), "query_result("):
			inner := strings.TrimSuffix(strings.TrimPrefix(strings.TrimSpace(q), "query_result("), ")")
			out = append(out, Query{File: file, Where: "variable " + v.Name, Expr: inner})
		default:
			return nil, fmt.Errorf("%s: variable %s: query %q is neither label_values(...) nor query_result(...)", file, v.Name, q)
		}
	}
	return out, nil
}

type panel struct {
	Title   string `json:"title"`
	Targets []struct {
		RefID string `json:"refId"`
		Expr  string `json:"expr"`
	} `json:"targets"`
	Panels []panel `json:"panels"`
}

// RuleQueries returns the expr of every recording and alerting rule of a Prometheus rule
// file (YAML, groups[].rules[]), and the names the recording rules define. Only what it
// reads is checked here: Prometheus's rulefmt checks the rest (deploy/queries_test.go).
func RuleQueries(file string, data []byte) (queries []Query, recorded []string, err error) {
	var f struct {
		Groups []struct {
			Name  string `json:"name"`
			Rules []struct {
				Record string `json:"record"`
				Alert  string `json:"alert"`
				Expr   string `json:"expr"`
			} `json:"rules"`
		} `json:"groups"`
	}
	if err := yaml.Unmarshal(data, &f); err != nil { // the other fields are rulefmt's to check
		return nil, nil, fmt.Errorf("%s: %w", file, err)
	}
	for _, g := range f.Groups {
		for i, r := range g.Rules {
			where := fmt.Sprintf("group %s rule %d", g.Name, i)
			switch {
			case r.Record != "" && r.Alert == "":
				where += " record " + r.Record
				recorded = append(recorded, r.Record)
			case r.Alert != "" && r.Record == "":
				where += " alert " + r.Alert
			default:
				return nil, nil, fmt.Errorf("%s: %s: a rule is either record or alert", file, where)
			}
			if r.Expr == "" {
				return nil, nil, fmt.Errorf("%s: %s: no expr", file, where)
			}
			queries = append(queries, Query{File: file, Where: where, Expr: r.Expr})
		}
	}
	return queries, recorded, nil
}

// ScaledObjectQueries returns the query of every prometheus trigger of KEDA ScaledObjects.
func ScaledObjectQueries(objs []Object) []Query {
	var out []Query
	for _, o := range objs {
		if o.Kind != "ScaledObject" {
			continue
		}
		spec, _ := o.Body["spec"].(map[string]any)
		triggers, _ := spec["triggers"].([]any)
		for i, t := range triggers {
			t, _ := t.(map[string]any)
			meta, _ := t["metadata"].(map[string]any)
			if q, _ := meta["query"].(string); t["type"] == "prometheus" && q != "" {
				out = append(out, Query{File: o.File, Where: fmt.Sprintf("%s trigger %d", o, i), Expr: q})
			}
		}
	}
	return out
}
