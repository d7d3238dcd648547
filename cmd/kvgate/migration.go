package main

import (
	"time"

	"github.com/spf13/pflag"

	"github.com/kvgate/kvgate/gateway"
)

// migrationFlags configure the embedded gateway's request migration (docs/GATEWAY.md).
type migrationFlags struct {
	limit     int
	stall     time.Duration
	maxTokens int
}

func (m *migrationFlags) add(f *pflag.FlagSet) {
	f.IntVar(&m.limit, "migration-limit", gateway.DefaultMigrationLimit, "times one stream may move to another engine when its engine dies or stalls after the first token (re-issued with the text so far, stitched into one stream); 0 turns migration off")
	f.DurationVar(&m.stall, "migration-stall", gateway.DefaultMigrationStall, "a stream without a token for this long after its first one is migrated (0: only failures migrate)")
	f.IntVar(&m.maxTokens, "migration-max-tokens", gateway.DefaultMigrationMaxTokens, "a stream that has generated more tokens than this is not migrated")
}

// apply sets c's migration fields.
func (m *migrationFlags) apply(c gateway.Config) gateway.Config {
	c.MigrationLimit, c.MigrationStall, c.MigrationMaxTokens = m.limit, m.stall, m.maxTokens
	if m.limit == 0 {
		c.MigrationLimit = -1
	}
	if m.stall == 0 {
		c.MigrationStall = -1
	}
	return c
}
