package main

import (
	"context"
	"log/slog"
	"strings"
	"testing"
)

// TestKubernetesFlags: --kubernetes without what it needs stops the router at start with the
// flag to set, instead of serving an empty pool.
func TestKubernetesFlags(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"no pool", []string{"--kubernetes", "--kubeconfig", "/nonexistent"}, "--pool-name"},
		{"no kubeconfig", []string{"--kubernetes", "--pool-name", "p", "--kubeconfig", "/nonexistent/kubeconfig"}, "kubeconfig"},
		{"bad group", []string{"--kubernetes", "--pool-name", "p", "--pool-group", "example.com"}, "pool group"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cmd := newRouterCmd(&globals{log: slog.New(slog.DiscardHandler)})
			cmd.SetArgs(append(tc.args, "--grpc", "127.0.0.1:0"))
			cmd.SilenceUsage, cmd.SilenceErrors = true, true
			err := cmd.ExecuteContext(context.Background())
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want it to mention %q", err, tc.want)
			}
		})
	}
}
