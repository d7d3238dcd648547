package peertest

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestPathsFindsBuiltPeers: scripts/peers.sh's paths come back in the order asked, each an
// executable in the cache directory keyed by name and version; an unknown name is an error
// that carries the script's own message.
func TestPathsFindsBuiltPeers(t *testing.T) {
	paths, err := Paths("consul", "etcd")
	if err != nil {
		t.Fatal(err)
	}
	for i, name := range []string{"consul", "etcd"} {
		if filepath.Base(paths[i]) != name || !strings.HasPrefix(filepath.Base(filepath.Dir(paths[i])), name+"@") {
			t.Errorf("path %d = %s, want <cache>/%s@<version>/%s", i, paths[i], name, name)
		}
	}
	if _, err := Paths("no-such-peer"); err == nil || !strings.Contains(err.Error(), "no-such-peer") {
		t.Errorf("unknown peer: %v, want an error naming it", err)
	}
	root, err := RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "scripts", "peers.sh")); err != nil {
		t.Errorf("RepoRoot %s has no scripts/peers.sh: %v", root, err)
	}
}
