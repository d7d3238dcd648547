// Package consultest runs a real Consul agent in dev mode on free loopback ports for tests.
package consultest

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/kvgate/kvgate/peertest"
	"github.com/kvgate/kvgate/porttest"
)

// Agent is a running `consul agent -dev` bound to 127.0.0.1.
type Agent struct {
	Addr   string      // HTTP API address, 127.0.0.1:port
	Client *api.Client // client for Addr

	t       testing.TB
	bin     string
	node    string
	ports   ports
	logPath string

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
}

type ports struct{ http, serfLAN, serfWAN, server int }

// Binary returns the path of the consul binary that scripts/peers.sh builds from a pinned
// version into the user's cache directory, building it the first time on a machine.
func Binary() (string, error) {
	p, err := peertest.Paths("consul")
	if err != nil {
		return "", fmt.Errorf("consultest: %w", err)
	}
	return p[0], nil
}

// Start runs a dev agent and waits until it has a leader and its own node is in the catalog.
// The agent is stopped when the test ends; its log is printed if the test failed.
func Start(t testing.TB) *Agent {
	t.Helper()
	bin, err := Binary()
	if err != nil {
		t.Fatal(err)
	}
	a := &Agent{t: t, bin: bin, logPath: filepath.Join(t.TempDir(), "consul.log")}
	// Serf listens on TCP and UDP; every port is distinct (porttest never repeats one).
	a.ports = ports{http: porttest.FreeTCPAndUDP(t), serfLAN: porttest.FreeTCPAndUDP(t), serfWAN: porttest.FreeTCPAndUDP(t), server: porttest.FreeTCPAndUDP(t)}
	a.node = fmt.Sprintf("kvgate-test-%d", a.ports.http)
	a.Addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(a.ports.http))
	cfg := api.DefaultConfig()
	cfg.Address = a.Addr
	cfg.Token = ""
	a.Client, err = api.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		a.Stop()
		if t.Failed() {
			if b, err := os.ReadFile(a.logPath); err == nil {
				t.Logf("consul log (tail):\n%s", tail(string(b), 4000))
			}
		}
	})
	if err := a.start(); err != nil {
		t.Fatal(err)
	}
	return a
}

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[len(s)-n:]
}

func (a *Agent) start() error {
	logf, err := os.OpenFile(a.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	cmd := exec.Command(a.bin, "agent", "-dev",
		"-node", a.node,
		"-bind", "127.0.0.1", "-client", "127.0.0.1",
		"-http-port", strconv.Itoa(a.ports.http),
		"-dns-port", "-1",
		"-grpc-port", "-1",
		"-serf-lan-port", strconv.Itoa(a.ports.serfLAN),
		"-serf-wan-port", strconv.Itoa(a.ports.serfWAN),
		"-server-port", strconv.Itoa(a.ports.server),
		"-hcl", "ports { grpc_tls = -1 }",
		"-log-level", "warn",
	)
	cmd.Stdout, cmd.Stderr = logf, logf
	setDeathSignal(cmd)
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("consultest: start %s: %w", a.bin, err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); logf.Close(); close(done) }()
	a.mu.Lock()
	a.cmd, a.done = cmd, done
	a.mu.Unlock()
	return a.waitReady(done)
}

func (a *Agent) waitReady(done <-chan struct{}) error {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for {
		select {
		case <-done:
			b, _ := os.ReadFile(a.logPath)
			return fmt.Errorf("consultest: consul exited during start:\n%s", tail(string(b), 4000))
		case <-ctx.Done():
			return fmt.Errorf("consultest: consul at %s not ready within 60s", a.Addr)
		case <-time.After(50 * time.Millisecond):
		}
		q := (&api.QueryOptions{}).WithContext(ctx)
		leader, err := a.Client.Status().LeaderWithQueryOptions(q)
		if err != nil || leader == "" {
			continue
		}
		node, _, err := a.Client.Catalog().Node(a.node, q)
		if err == nil && node != nil && node.Node != nil {
			return nil
		}
	}
}

// Stop kills the agent and waits for it to exit. Dev mode keeps its state in memory, so
// everything registered is gone. Stop on a stopped agent does nothing.
func (a *Agent) Stop() {
	a.mu.Lock()
	cmd, done := a.cmd, a.done
	a.cmd = nil
	a.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Kill()
	<-done
}

// Restart stops the agent and starts a fresh one on the same ports and node name: to a
// client it looks like an agent that restarted and forgot its services.
func (a *Agent) Restart() {
	a.t.Helper()
	a.Stop()
	var err error
	for range 5 { // a port may linger for a moment after the kill
		if err = a.start(); err == nil || !strings.Contains(err.Error(), "address already in use") {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if err != nil {
		a.t.Fatal(err)
	}
}
