package main

import (
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"

	"github.com/kvgate/kvgate/router"
)

// TestTierFlags: the tier and P2P flags reach the router's config, and a bad value is refused
// by the router with a message naming it.
func TestTierFlags(t *testing.T) {
	var rf routerFlags
	cmd := &cobra.Command{Use: "x"}
	rf.add(cmd)
	if err := cmd.ParseFlags([]string{"--tier-credits", "derived", "--p2p", "--p2p-min-tokens", "512",
		"--tier-prefill-token-time", "80us", "--tier-network-latency", "3ms"}); err != nil {
		t.Fatal(err)
	}
	cfg, err := rf.config(nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.TierCredits != router.TierCreditsDerived || !cfg.P2P || cfg.P2PMinTokens != 512 ||
		cfg.Tiers.PrefillTokenTime != 80*time.Microsecond || cfg.Tiers.NetworkLatency != 3*time.Millisecond ||
		cfg.Tiers.HostToDevice != router.DefaultTierModel().HostToDevice {
		t.Fatalf("config %+v", cfg)
	}
	if _, err := router.New(cfg, nil, nil); err != nil {
		t.Fatalf("router.New: %v", err)
	}

	var bad routerFlags
	cmd = &cobra.Command{Use: "x"}
	bad.add(cmd)
	if err := cmd.ParseFlags([]string{"--tier-credits", "guessed"}); err != nil {
		t.Fatal(err)
	}
	cfg, err = bad.config(nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := router.New(cfg, nil, nil); err == nil || !strings.Contains(err.Error(), `"guessed"`) {
		t.Fatalf("router.New with --tier-credits guessed: %v", err)
	}
}
