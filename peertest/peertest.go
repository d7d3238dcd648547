// Package peertest finds the outside programs tests run against (Consul, etcd and
// kube-apiserver, llm-d's simulator and EPP, Ollama). scripts/peers.sh builds each from a pinned
// version into the user's cache directory ($KVGATE_PEERS to override) the first time on a
// machine and prints its path; a fresh clone finds it there again.
package peertest

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
)

// mu keeps one process from building twice at once (scripts/peers.sh locks across processes).
var mu sync.Mutex

// Paths returns the binaries of the named peers, in order, building the missing ones
// (minutes to half an hour of CPU each, once per machine).
func Paths(names ...string) ([]string, error) {
	root, err := RepoRoot()
	if err != nil {
		return nil, err
	}
	mu.Lock()
	defer mu.Unlock()
	cmd := exec.Command("bash", append([]string{"scripts/peers.sh"}, names...)...)
	cmd.Dir = root
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	what := "scripts/peers.sh " + strings.Join(names, " ")
	if err != nil {
		return nil, fmt.Errorf("%s: %v\n%s", what, err, stderr.Bytes())
	}
	paths := strings.Fields(string(out))
	if len(paths) != len(names) {
		return nil, fmt.Errorf("%s printed %q, not %d paths", what, out, len(names))
	}
	for _, p := range paths {
		if st, err := os.Stat(p); err != nil || st.IsDir() || st.Mode()&0o111 == 0 {
			return nil, fmt.Errorf("%s printed %q, not an executable", what, p)
		}
	}
	return paths, nil
}

// RepoRoot is the directory of the kvgate module's go.mod at or above the working directory.
func RepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if b, err := os.ReadFile(filepath.Join(dir, "go.mod")); err == nil &&
			bytes.Contains(b, []byte("module github.com/kvgate/kvgate\n")) {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("peertest: repository root (go.mod of github.com/kvgate/kvgate) not found above the working directory")
		}
		dir = parent
	}
}
