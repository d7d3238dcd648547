package fleet

import (
	"os"
	"regexp"
	"slices"
	"testing"

	"github.com/kvgate/kvgate/router"
)

// The KEDA example queries only metrics the router exports (a renamed metric would leave the
// example scaling on nothing).
func TestKEDAExampleNamesRouterMetrics(t *testing.T) {
	b, err := os.ReadFile("../deploy/kubernetes/keda/scaledobject.yaml")
	if err != nil {
		t.Fatal(err)
	}
	known := []string{router.MetricPoolEndpoints, router.MetricPoolHealthy, router.MetricPoolQueuedPrefill,
		router.MetricPoolRunning, router.MetricPoolWaiting, router.MetricPoolKVUsage, router.MetricPoolRequests,
		router.MetricPoolPromptTokens, router.MetricPoolCachedTokens, router.MetricPoolOutputTokens}
	names := regexp.MustCompile(`kvgate_[a-z_]+`).FindAllString(string(b), -1)
	if len(names) < 4 {
		t.Fatalf("only %d metric names in the example", len(names))
	}
	for _, n := range names {
		if !slices.Contains(known, n) {
			t.Errorf("the KEDA example queries %s, which the router does not export", n)
		}
	}
}
