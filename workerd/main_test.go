package workerd

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/kvgate/kvgate/engine/sim"
)

// simChildEnv makes the test binary run as a simulated engine: workerd's tests start it as
// the engine child process, with the flags workerd passes to `kvgate sim` (SimArgs).
const simChildEnv = "KVGATE_WORKERD_TEST_SIM_CHILD"

// simSpeedEnv sets the child's sim.Timing.Speed (default 50); 1 makes a long answer last
// seconds, for tests that need a request in flight.
const simSpeedEnv = "KVGATE_WORKERD_TEST_SIM_SPEED"

func TestMain(m *testing.M) {
	if os.Getenv(simChildEnv) == "1" {
		os.Exit(simChild(os.Args[1:]))
	}
	if os.Getenv(trtllmChildEnv) == "1" {
		os.Exit(trtllmChild(os.Args[1:]))
	}
	os.Exit(m.Run())
}

func simChild(args []string) int {
	fs := flag.NewFlagSet("sim", flag.ContinueOnError)
	host := fs.String("host", "", "")
	port := fs.Int("port", 0, "")
	replay := fs.String("kv-events-replay", "", "")
	model := fs.String("model", "", "")
	kv := fs.String("kv-events", "", "")
	bs := fs.Int("block-size", 16, "")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	timing := sim.DefaultTiming()
	timing.Speed = 50
	if v, err := strconv.ParseFloat(os.Getenv(simSpeedEnv), 64); err == nil && v > 0 {
		timing.Speed = v
	}
	s, err := sim.NewServer(sim.ServerConfig{
		Addr: net.JoinHostPort(*host, strconv.Itoa(*port)), Model: *model, KVEvents: *kv, KVEventsReplay: *replay,
		Engine: sim.Config{BlockSize: *bs, NumBlocks: 4096, Timing: timing},
	}, log, nil)
	if err != nil {
		fmt.Fprintln(os.Stderr, "sim child:", err)
		return 1
	}
	if err := s.Run(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "sim child:", err)
		return 1
	}
	// Let the last events leave the socket before exiting.
	time.Sleep(10 * time.Millisecond)
	return 0
}
