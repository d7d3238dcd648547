package main

import (
	"fmt"

	"github.com/spf13/cobra"
)

func init() { register(newUpCmd) }

// newUpCmd will start router, gateway and simulated engines; until the router lands it says
// what this build holds.
func newUpCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "up",
		Short: "Start the whole system on this machine (router, gateway, simulated engines)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			fmt.Fprintln(cmd.OutOrStdout(), "kvgate up: this build has no router yet; see 'kvgate --help' for what it holds")
			return nil
		},
	}
}
