package main

import (
	"encoding/json"
	"strings"
	"testing"
)

func TestReplayPlannerCommand(t *testing.T) {
	out, err := runKvgate(t, "replay", "--synthetic", "--syn-conversations", "60", "--syn-turns", "2", "--syn-rate", "2",
		"--engines", "3", "--planner", "load", "--initial-engines", "1", "--startup-s", "5", "--planner-interval", "5s",
		"--rate-profile", "0:1,10:2", "--json")
	if err != nil {
		t.Fatal(err)
	}
	var r map[string]any
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	for _, k := range []string{"sla_attainment", "gpu_hours", "max_engines_used", "scale_events", "timeline"} {
		if _, ok := r[k]; !ok {
			t.Errorf("JSON without %s", k)
		}
	}
	if r["planner"] != "load" || r["max_engines_used"].(float64) > 3 {
		t.Errorf("planner %v, max engines %v (budget 3)", r["planner"], r["max_engines_used"])
	}
	for _, tc := range []struct{ args, want string }{
		{"--planner magic", "--planner"},
		{"--rate-profile 10:1,5:2", "rate profile"},
		{"--startup-sweep 15", "--startup-sweep needs --planner"},
		{"--planner sla --profile /nonexistent.yaml", "nonexistent"},
	} {
		args := append([]string{"replay", "--synthetic", "--syn-conversations", "5"}, strings.Fields(tc.args)...)
		if _, err := runKvgate(t, args...); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error with %q", tc.args, err, tc.want)
		}
	}
}
