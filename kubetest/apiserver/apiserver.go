// Package apiserver runs a real kube-apiserver and its etcd on loopback ports for tests: the
// binaries scripts/peers.sh builds from pinned versions, the InferencePool CRD installed, and
// Pods and InferencePools written through the API as kubetest's fake takes them.
package apiserver

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"

	"github.com/kvgate/kvgate/peertest"
	"github.com/kvgate/kvgate/polltest"
	"github.com/kvgate/kvgate/porttest"
	"github.com/kvgate/kvgate/tlsconfig/tlsconfigtest"
)

// Server is a running kube-apiserver backed by its own etcd, both on 127.0.0.1 and both
// stopped when the test that started it ends.
type Server struct {
	// URL is the API's base URL (https://127.0.0.1:port).
	URL string
	// CA is the file of the certificate authority that signed the serving certificate.
	CA string
	// AdminToken is a bearer token of a user in system:masters (every permission).
	AdminToken string

	client dynamic.Interface // as the admin
	rest   *rest.Config      // the admin's

	mu         sync.Mutex
	namespaces map[string]bool // created through ensureNamespace
}

// StartTimeout bounds each process's start: etcd's health, then the API server's /readyz.
const StartTimeout = 90 * time.Second

// Binaries returns the paths of etcd and kube-apiserver that scripts/peers.sh builds from
// pinned versions into the user's cache directory, building them the first time on a machine
// (kube-apiserver: about half an hour of CPU, once).
func Binaries() (etcd, apiserver string, err error) {
	p, err := peertest.Paths("etcd", "kube-apiserver")
	if err != nil {
		return "", "", fmt.Errorf("apiserver: %w", err)
	}
	return p[0], p[1], nil
}

// process is a started peer whose output goes to a log file.
type process struct {
	name string
	log  string
	cmd  *exec.Cmd
	done chan struct{}
}

func start(name, logPath, bin string, args ...string) (*process, error) {
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	setDeathSignal(cmd)
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("apiserver: start %s: %w", bin, err)
	}
	p := &process{name: name, log: logPath, cmd: cmd, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); logf.Close(); close(p.done) }()
	return p, nil
}

func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

func (p *process) stop() {
	_ = p.cmd.Process.Kill()
	<-p.done
}

func (p *process) tail(n int) string {
	b, err := os.ReadFile(p.log)
	if err != nil {
		return err.Error()
	}
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}

// waitFor polls probe (at most every 100ms: each is an HTTP request) until it holds, p exits,
// or StartTimeout passes.
func (p *process) waitFor(what string, probe func() bool) error {
	var last time.Time
	ok := polltest.Wait(StartTimeout, func() bool {
		if p.exited() {
			return true
		}
		if time.Since(last) < 100*time.Millisecond {
			return false
		}
		last = time.Now()
		return probe()
	})
	switch { // Start's cleanup prints the log
	case p.exited():
		return fmt.Errorf("apiserver: %s exited during start (%s)", p.name, p.cmd.ProcessState)
	case !ok:
		return fmt.Errorf("apiserver: %s not %s within %v", p.name, what, StartTimeout)
	}
	return nil
}

// Start runs etcd and kube-apiserver and returns once /readyz answers ok and the
// InferencePool CRD (inference.networking.k8s.io/v1) is served. Authentication is a static
// token file (AdminToken) and service-account tokens (ServiceAccountToken); authorization is
// RBAC. No controller manager, scheduler or kubelet runs: Pods are plain API objects whose
// status the test writes. Both processes stop when t ends; their logs are printed if t failed.
func Start(t testing.TB) *Server {
	t.Helper()
	etcdBin, apiBin, err := Binaries()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	ports := []int{porttest.Free(t), porttest.Free(t), porttest.Free(t)}
	client, peer, secure := ports[0], ports[1], ports[2]
	clientURL := "http://127.0.0.1:" + strconv.Itoa(client)
	peerURL := "http://127.0.0.1:" + strconv.Itoa(peer)

	var procs []*process
	t.Cleanup(func() {
		for i := len(procs) - 1; i >= 0; i-- { // the API server first
			procs[i].stop()
		}
		if t.Failed() {
			for _, p := range procs {
				t.Logf("%s log (tail):\n%s", p.name, p.tail(6000))
			}
		}
	})

	etcd, err := start("etcd", filepath.Join(dir, "etcd.log"), etcdBin,
		"--name", "kvgate-test", "--data-dir", filepath.Join(dir, "etcd"),
		"--listen-client-urls", clientURL, "--advertise-client-urls", clientURL,
		"--listen-peer-urls", peerURL, "--initial-advertise-peer-urls", peerURL,
		"--initial-cluster", "kvgate-test="+peerURL,
		"--unsafe-no-fsync", "--log-level", "warn")
	if err != nil {
		t.Fatal(err)
	}
	procs = append(procs, etcd)
	if err := etcd.waitFor("healthy", func() bool { return etcdHealthy(clientURL) }); err != nil {
		t.Fatal(err)
	}

	pki := tlsconfigtest.New(t)
	s := &Server{CA: pki.CA, URL: "https://127.0.0.1:" + strconv.Itoa(secure),
		AdminToken: randomToken(), namespaces: map[string]bool{}}
	tokens := filepath.Join(dir, "tokens.csv")
	if err := os.WriteFile(tokens, []byte(s.AdminToken+",kvgate-admin,kvgate-admin,system:masters\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	saKey := filepath.Join(dir, "sa.key")
	if err := writeECKey(saKey); err != nil {
		t.Fatal(err)
	}
	api, err := start("kube-apiserver", filepath.Join(dir, "kube-apiserver.log"), apiBin,
		"--etcd-servers", clientURL,
		"--bind-address", "127.0.0.1", "--secure-port", strconv.Itoa(secure),
		// A loopback address is no valid Endpoints address, so the "kubernetes" Service's
		// endpoints are not reconciled (as k8s.io/kubernetes's own test server does).
		"--advertise-address", "127.0.0.1", "--endpoint-reconciler-type", "none",
		"--tls-cert-file", pki.Server.Cert, "--tls-private-key-file", pki.Server.Key,
		"--cert-dir", filepath.Join(dir, "certs"),
		"--token-auth-file", tokens,
		"--authorization-mode", "RBAC",
		"--service-account-issuer", "https://kubernetes.default.svc",
		"--service-account-key-file", saKey, "--service-account-signing-key-file", saKey,
		"--service-cluster-ip-range", "10.96.0.0/24",
		"--profiling=false")
	if err != nil {
		t.Fatal(err)
	}
	procs = append(procs, api)

	s.rest = &rest.Config{Host: s.URL, BearerToken: s.AdminToken, TLSClientConfig: rest.TLSClientConfig{CAFile: s.CA},
		UserAgent: "kvgate-test", QPS: -1}
	s.client, err = dynamic.NewForConfig(s.rest)
	if err != nil {
		t.Fatal(err)
	}
	ready := s.probe(pki.Pool)
	if err := api.waitFor("ready (/readyz)", ready); err != nil {
		t.Fatal(err)
	}
	s.installCRD(t)
	return s
}

// probe returns a check of /readyz as the admin.
func (s *Server) probe(pool *x509.CertPool) func() bool {
	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	return func() bool {
		req, err := http.NewRequest(http.MethodGet, s.URL+"/readyz", nil)
		if err != nil {
			return false
		}
		req.Header.Set("Authorization", "Bearer "+s.AdminToken)
		resp, err := hc.Do(req)
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		_, _ = io.Copy(io.Discard, resp.Body)
		return resp.StatusCode == http.StatusOK
	}
}

func etcdHealthy(url string) bool {
	hc := &http.Client{Timeout: 2 * time.Second}
	resp, err := hc.Get(url + "/health")
	if err != nil {
		return false
	}
	defer resp.Body.Close()
	var h struct {
		Health string `json:"health"`
	}
	return json.NewDecoder(resp.Body).Decode(&h) == nil && h.Health == "true"
}

func randomToken() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// writeECKey writes a fresh P-256 key, the service accounts' signing key.
func writeECKey(path string) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return err
	}
	return os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}), 0o600)
}

// Kubeconfig writes a kubeconfig for the server that authenticates with token (AdminToken,
// or one from ServiceAccountToken) and returns its path. Its namespace is "default".
func (s *Server) Kubeconfig(t testing.TB, token string) string {
	t.Helper()
	cfg := map[string]any{
		"apiVersion": "v1",
		"kind":       "Config",
		"clusters":   []any{map[string]any{"name": "kube", "cluster": map[string]any{"server": s.URL, "certificate-authority": s.CA}}},
		"users":      []any{map[string]any{"name": "user", "user": map[string]any{"token": token}}},
		"contexts": []any{map[string]any{"name": "kube",
			"context": map[string]any{"cluster": "kube", "user": "user", "namespace": "default"}}},
		"current-context": "kube",
	}
	b, err := json.MarshalIndent(cfg, "", "  ") // JSON is YAML
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.CreateTemp(t.TempDir(), "kubeconfig-*")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Write(b); err != nil {
		t.Fatal(err)
	}
	return f.Name()
}

// callCtx bounds one API call.
func callCtx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), 30*time.Second)
}
