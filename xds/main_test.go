package xds_test

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package if a test leaves goroutines behind: servers, watches and xDS
// streams must all end with their test.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
