package router_test

import (
	"os"
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package when a test leaves goroutines behind (Run must stop its
// subscriptions and scrapers). zmq4's PUB sockets (the test publishers) keep a writer
// goroutine after Close, which is theirs, not the router's.
func TestMain(m *testing.M) {
	if os.Getenv(simChildEnv) != "" {
		os.Exit(simChild(os.Getenv(simChildEnv)))
	}
	goleak.VerifyTestMain(m, goleak.IgnoreCurrent(),
		goleak.IgnoreAnyFunction("github.com/go-zeromq/zmq4.(*pubMWriter).run"))
}
