package deploy_test

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/rulefmt"

	"github.com/kvgate/kvgate/deploy"
)

// deploymentQueries returns every PromQL expression of deploy/: the Grafana dashboards, the
// Prometheus rule files and the KEDA triggers, with the names the recording rules define.
func deploymentQueries(t *testing.T) (queries []deploy.Query, recorded []string) {
	t.Helper()
	dashboards, _ := filepath.Glob("grafana/*.json")
	rules, _ := filepath.Glob("prometheus/*.yaml")
	if len(dashboards) == 0 || len(rules) == 0 {
		t.Fatalf("dashboards %v, rule files %v: want at least one of each", dashboards, rules)
	}
	for _, f := range dashboards {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		q, err := deploy.DashboardQueries(f, b)
		if err != nil {
			t.Fatal(err)
		}
		queries = append(queries, q...)
	}
	for _, f := range rules {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		q, rec, err := deploy.RuleQueries(f, b)
		if err != nil {
			t.Fatal(err)
		}
		queries, recorded = append(queries, q...), append(recorded, rec...)
	}
	return append(queries, deploy.ScaledObjectQueries(manifests(t))...), recorded
}

// checkQueries returns one error per query that does not parse or that selects a series no
// kvgate component exports and no recording rule defines.
func checkQueries(queries []deploy.Query, exported map[string]bool, recorded []string) []error {
	var errs []error
	for _, q := range queries {
		names, err := deploy.MetricNames(q.Expr)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", q, err))
			continue
		}
		if len(names) == 0 {
			errs = append(errs, fmt.Errorf("%s: selects no metric", q))
		}
		for _, n := range names {
			if !exported[n] && !slices.Contains(recorded, n) {
				errs = append(errs, fmt.Errorf("%s: %s is not a series kvgate exports", q, n))
			}
		}
	}
	return errs
}

// Every metric the dashboard, the rules and the KEDA triggers query is one that kvgate's
// components export (registered on their real registries, in process) or a recording rule
// defines, with the series suffixes of its type (_bucket only on histograms). A renamed
// metric fails here instead of leaving a panel empty or an alert silent.
func TestQueriesNameExportedMetrics(t *testing.T) {
	exported := exportedSeries(t)
	for _, must := range []string{"kvgate_router_requests_total", "vllm:time_to_first_token_seconds_bucket",
		"kvgate_planner_replicas", "kvgate_workerd_engine_up", "kvgate_gateway_time_to_first_token_seconds_bucket"} {
		if !exported[must] {
			t.Fatalf("%s missing from the exported series: the collection is broken (%d series: %v)", must, len(exported), sortedNames(exported))
		}
	}
	queries, recorded := deploymentQueries(t)
	if len(queries) < 40 {
		t.Fatalf("only %d queries found", len(queries))
	}
	for _, err := range checkQueries(queries, exported, recorded) {
		t.Error(err)
	}
	// The recorded names are used (a rule nobody reads is dead weight).
	for _, r := range recorded {
		used := false
		for _, q := range queries {
			if names, _ := deploy.MetricNames(q.Expr); slices.Contains(names, r) {
				used = true
			}
		}
		if !used {
			t.Errorf("recording rule %s is queried nowhere", r)
		}
	}
	t.Logf("%d queries checked against %d exported series", len(queries), len(exported))
}

// The check is not vacuous: an unknown name, a histogram suffix on a counter, a name matched
// by regular expression, and PromQL that does not parse each fail.
func TestCheckRejectsUnknownMetrics(t *testing.T) {
	exported := exportedSeries(t)
	dashboard := `{"panels": [{"title": "p", "type": "row", "panels": [{"title": "inner", "targets": [{"refId": "A", "expr": %q}]}]}]}`
	for _, tc := range []struct{ name, expr, want string }{
		{"misspelt", `sum(rate(kvgate_router_requests_totl[5m]))`, "kvgate_router_requests_totl is not a series"},
		{"bucket of a counter", `sum(rate(kvgate_router_requests_total_bucket[5m]))`, "kvgate_router_requests_total_bucket is not"},
		{"histogram without suffix", `rate(kvgate_router_decision_seconds[5m])`, "kvgate_router_decision_seconds is not"},
		{"engine metric", `vllm:time_to_first_token_second_bucket`, "vllm:time_to_first_token_second_bucket is not"},
		{"by __name__", `{__name__="kvgate_nope"}`, "kvgate_nope is not"},
		{"regex name", `{__name__=~"kvgate_.*"}`, "name each metric"},
		{"bad promql", `sum(rate(kvgate_router_requests_total[5m])`, "unclosed"},
		{"no metric", `vector(1)`, "selects no metric"},
		{"fine", `sum by (outcome) (rate(kvgate_router_requests_total[$__rate_interval]))`, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			qs, err := deploy.DashboardQueries("d.json", []byte(fmt.Sprintf(dashboard, tc.expr)))
			if err != nil || len(qs) != 1 {
				t.Fatalf("%v %v", qs, err)
			}
			errs := checkQueries(qs, exported, nil)
			if tc.want == "" {
				if len(errs) > 0 {
					t.Fatal(errs)
				}
				return
			}
			if len(errs) != 1 || !strings.Contains(errs[0].Error(), tc.want) {
				t.Fatalf("errors %v, want one with %q", errs, tc.want)
			}
		})
	}
}

// The rule files are what Prometheus loads (rulefmt is what `promtool check rules` runs):
// known fields only, valid PromQL, templates that parse, no duplicate rules.
func TestRulesLoadInPrometheus(t *testing.T) {
	files, _ := filepath.Glob("prometheus/*.yaml")
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		groups, errs := rulefmt.Parse(b, false, model.UTF8Validation)
		for _, err := range errs {
			t.Errorf("%s: %v", f, err)
		}
		alerts := 0
		for _, g := range groups.Groups {
			for _, r := range g.Rules {
				if r.Alert != "" {
					alerts++
				}
			}
		}
		if alerts == 0 {
			t.Errorf("%s: no alerts", f)
		}
	}
	if _, errs := rulefmt.Parse([]byte("groups:\n  - name: g\n    rules:\n      - alert: A\n        expr: up ==\n"), false, model.UTF8Validation); len(errs) == 0 {
		t.Error("rulefmt accepted bad PromQL")
	}
}

func TestMetricNames(t *testing.T) {
	for _, tc := range []struct {
		expr string
		want []string
	}{
		{`up`, []string{"up"}},
		{`sum by (le) (rate(a_bucket{x="1"}[5m])) / ignoring(le) group_left b offset 1h`, []string{"a_bucket", "b"}},
		{`{__name__="c", job="j"}`, []string{"c"}},
		{`max_over_time(vllm:x[1h:5m]) > 0 and on() d`, []string{"d", "vllm:x"}},
		{`histogram_quantile(0.9, sum by (le) (rate(h_bucket{model=~"$model"}[$__rate_interval])))`, []string{"h_bucket"}},
		{`e + e`, []string{"e"}},
	} {
		got, err := deploy.MetricNames(tc.expr)
		if err != nil || !slices.Equal(got, tc.want) {
			t.Errorf("MetricNames(%q) = %v, %v; want %v", tc.expr, got, err, tc.want)
		}
	}
}

func TestDashboardQueriesRejects(t *testing.T) {
	for _, tc := range []struct{ name, doc, want string }{
		{"not json", `{`, "unexpected end"},
		{"every metric", `{"templating": {"list": [{"name": "m", "type": "query", "query": "label_values(model)"}]}}`, "name one"},
		{"unknown variable query", `{"templating": {"list": [{"name": "m", "type": "query", "query": "metrics(.*)"}]}}`, "neither"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := deploy.DashboardQueries("d.json", []byte(tc.doc))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want %q", err, tc.want)
			}
		})
	}
}

func FuzzMetricNames(f *testing.F) {
	for _, s := range []string{`up`, `sum(rate(a[5m]))`, `{__name__=~"x"}`, `histogram_quantile(0.9, b_bucket[$__rate_interval])`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) { _, _ = deploy.MetricNames(s) })
}

func FuzzDashboardQueries(f *testing.F) {
	f.Add([]byte(`{"panels": [{"title": "r", "type": "row", "panels": [{"title": "p", "targets": [{"refId": "A", "expr": "rate(a[5m])"}]}]}],
 "templating": {"list": [{"name": "m", "type": "query", "query": {"query": "label_values(a, model)"}}, {"name": "d", "type": "datasource"}]}}`))
	f.Add([]byte(`{"templating": {"list": [{"name": "q", "type": "query", "query": "query_result(max(b))"}]}}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		qs, err := deploy.DashboardQueries("d.json", b)
		for _, q := range qs {
			_, _ = deploy.MetricNames(q.Expr)
		}
		if err != nil && qs != nil {
			t.Fatalf("queries %v with error %v", qs, err)
		}
	})
}

// The dashboard is one Grafana imports as it is: unique panel ids, panels inside the 24-column
// grid without overlapping, every query panel on the data-source variable with distinct refIds.
func TestDashboardIsWellFormed(t *testing.T) {
	files, _ := filepath.Glob("grafana/*.json")
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var d struct {
			UID    string `json:"uid"`
			Panels []struct {
				ID         int    `json:"id"`
				Type       string `json:"type"`
				Title      string `json:"title"`
				Datasource struct {
					UID string `json:"uid"`
				} `json:"datasource"`
				GridPos struct{ H, W, X, Y int } `json:"gridPos"`
				Targets []struct {
					RefID string `json:"refId"`
				} `json:"targets"`
			} `json:"panels"`
		}
		if err := json.Unmarshal(b, &d); err != nil {
			t.Fatal(err)
		}
		if d.UID == "" {
			t.Errorf("%s: no uid", f)
		}
		ids := map[int]bool{}
		type cell struct{ x, y int }
		taken := map[cell]string{}
		for _, p := range d.Panels {
			if ids[p.ID] {
				t.Errorf("%s: panel id %d twice", f, p.ID)
			}
			ids[p.ID] = true
			g := p.GridPos
			if g.W <= 0 || g.H <= 0 || g.X < 0 || g.X+g.W > 24 {
				t.Errorf("%s: panel %q outside the grid: %+v", f, p.Title, g)
			}
			for x := g.X; x < g.X+g.W; x++ {
				for y := g.Y; y < g.Y+g.H; y++ {
					if other, ok := taken[cell{x, y}]; ok {
						t.Errorf("%s: panels %q and %q overlap at %d,%d", f, other, p.Title, x, y)
					}
					taken[cell{x, y}] = p.Title
				}
			}
			if p.Type == "row" {
				continue
			}
			if p.Datasource.UID != "${datasource}" || len(p.Targets) == 0 {
				t.Errorf("%s: panel %q: data source %q, %d targets", f, p.Title, p.Datasource.UID, len(p.Targets))
			}
			refs := map[string]bool{}
			for _, tg := range p.Targets {
				if tg.RefID == "" || refs[tg.RefID] {
					t.Errorf("%s: panel %q: refId %q empty or repeated", f, p.Title, tg.RefID)
				}
				refs[tg.RefID] = true
			}
		}
	}
}
