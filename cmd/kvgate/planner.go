package main

import "github.com/spf13/cobra"

// This file is the planner branch's stand-in for the fleet branch's cmd/kvgate/planner.go
// (the acting `kvgate planner`), which keeps the same registerPlannerSub hook: on merge, take
// the fleet branch's file.

func init() { register(newPlannerCmd) }

// plannerSubcommands are the subcommands of `kvgate planner` (`profile`), each registered
// by its own file's init.
var plannerSubcommands []func(*globals) *cobra.Command

func registerPlannerSub(f func(*globals) *cobra.Command) {
	plannerSubcommands = append(plannerSubcommands, f)
}

func newPlannerCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "planner",
		Short: "Planner tools: profile an engine for the sla planner",
		Args:  cobra.NoArgs,
	}
	for _, sub := range plannerSubcommands {
		cmd.AddCommand(sub(g))
	}
	return cmd
}
