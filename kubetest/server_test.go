package kubetest_test

import (
	"bufio"
	"context"
	"encoding/json"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/kvgate/kvgate/kubetest"
	"github.com/kvgate/kvgate/tlsconfig"
	"github.com/kvgate/kvgate/tlsconfig/tlsconfigtest"
)

func start(t *testing.T) *kubetest.Server {
	t.Helper()
	t.Cleanup(func() { goleak.VerifyNone(t, goleak.IgnoreCurrent()) })
	s := kubetest.New()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	if err := s.Start(ctx, tlsconfig.Files{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

type meta struct {
	Name            string            `json:"name"`
	Namespace       string            `json:"namespace"`
	ResourceVersion string            `json:"resourceVersion"`
	Annotations     map[string]string `json:"annotations"`
}

type obj struct {
	Kind     string `json:"kind"`
	Metadata meta   `json:"metadata"`
	Status   struct {
		PodIP string `json:"podIP"`
	} `json:"status"`
	Spec struct {
		TargetPorts []struct {
			Number int `json:"number"`
		} `json:"targetPorts"`
	} `json:"spec"`
}

type list struct {
	Kind     string `json:"kind"`
	Metadata meta   `json:"metadata"`
	Items    []obj  `json:"items"`
}

func getJSON(t *testing.T, url string, v any) int {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		t.Fatalf("%s: %v", url, err)
	}
	return resp.StatusCode
}

func pod(name, ip string, labels map[string]string) kubetest.Pod {
	return kubetest.Pod{Namespace: "default", Name: name, IP: ip, Labels: labels}
}

// TestDiscovery: the groups served are discoverable and nothing else is.
func TestDiscovery(t *testing.T) {
	s := start(t)
	var groups struct {
		Groups []struct {
			Name string `json:"name"`
		} `json:"groups"`
	}
	getJSON(t, s.URL()+"/apis", &groups)
	if len(groups.Groups) != 1 || groups.Groups[0].Name != "inference.networking.k8s.io" {
		t.Errorf("/apis groups = %+v", groups.Groups)
	}
	var res struct {
		Resources []struct {
			Name, Kind string
			Namespaced bool
		} `json:"resources"`
	}
	getJSON(t, s.URL()+"/apis/inference.networking.k8s.io/v1", &res)
	if len(res.Resources) != 1 || res.Resources[0].Kind != "InferencePool" || !res.Resources[0].Namespaced {
		t.Errorf("pool resources = %+v", res.Resources)
	}
	var status struct{ Kind, Reason string }
	if code := getJSON(t, s.URL()+"/apis/inference.networking.x-k8s.io/v1alpha2", &status); code != 404 || status.Kind != "Status" {
		t.Errorf("an unserved group: %d %+v", code, status)
	}
}

// TestListSelectors: lists filter by namespace, labels and name, and carry the version.
func TestListSelectors(t *testing.T) {
	s := start(t)
	s.SetPod(pod("a", "127.0.0.2", map[string]string{"app": "engine"}))
	s.SetPod(pod("b", "127.0.0.3", map[string]string{"app": "other"}))
	s.SetPod(kubetest.Pod{Namespace: "elsewhere", Name: "c", IP: "127.0.0.4", Labels: map[string]string{"app": "engine"}})
	s.SetInferencePool(kubetest.InferencePool{Namespace: "default", Name: "pool", Selector: map[string]string{"app": "engine"}, TargetPorts: []int{8000}})
	tests := []struct {
		name, path string
		want       []string
	}{
		{"namespace", "/api/v1/namespaces/default/pods", []string{"a", "b"}},
		{"all namespaces", "/api/v1/pods", []string{"a", "b", "c"}},
		{"labels", "/api/v1/pods?labelSelector=app%3Dengine", []string{"a", "c"}},
		{"not label", "/api/v1/pods?labelSelector=app!%3Dengine", []string{"b"}},
		{"name", "/apis/inference.networking.k8s.io/v1/namespaces/default/inferencepools?fieldSelector=metadata.name%3Dpool", []string{"pool"}},
		{"other name", "/apis/inference.networking.k8s.io/v1/namespaces/default/inferencepools?fieldSelector=metadata.name%3Dnope", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var l list
			if code := getJSON(t, s.URL()+tt.path, &l); code != 200 {
				t.Fatalf("status %d", code)
			}
			var got []string
			for _, it := range l.Items {
				got = append(got, it.Metadata.Name)
			}
			if strings.Join(got, ",") != strings.Join(tt.want, ",") || l.Metadata.ResourceVersion != "4" {
				t.Errorf("got %v at version %s, want %v at 4", got, l.Metadata.ResourceVersion, tt.want)
			}
		})
	}
	var p obj
	getJSON(t, s.URL()+"/api/v1/namespaces/default/pods/a", &p)
	if p.Kind != "Pod" || p.Status.PodIP != "127.0.0.2" {
		t.Errorf("get pod: %+v", p)
	}
	var st struct{ Code int }
	if code := getJSON(t, s.URL()+"/api/v1/pods?labelSelector=app+in+(a)", &st); code != 400 {
		t.Errorf("a set-based selector: %d, want 400", code)
	}
	resp, err := http.Post(s.URL()+"/api/v1/namespaces/default/pods", "application/json", strings.NewReader("{}"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("a write: %d, want 405", resp.StatusCode)
	}
}

type watchEvent struct {
	Type   string `json:"type"`
	Object obj    `json:"object"`
}

// watch opens a watch and returns its events as they come.
func watch(t *testing.T, url string) <-chan watchEvent {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	ch := make(chan watchEvent, 16)
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer close(ch)
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			var e watchEvent
			if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
				t.Errorf("watch line %q: %v", sc.Text(), err)
				return
			}
			ch <- e
		}
	}()
	t.Cleanup(func() { cancel(); resp.Body.Close(); <-done })
	return ch
}

func next(t *testing.T, ch <-chan watchEvent) watchEvent {
	t.Helper()
	select {
	case e, ok := <-ch:
		if !ok {
			t.Fatal("the watch ended")
		}
		return e
	case <-time.After(10 * time.Second):
		t.Fatal("no watch event in 10s")
	}
	return watchEvent{}
}

// TestWatch: a watch from a version sees the later changes of its selection only, in order.
func TestWatch(t *testing.T) {
	s := start(t)
	s.SetPod(pod("a", "127.0.0.2", map[string]string{"app": "engine"})) // version 1
	ch := watch(t, s.URL()+"/api/v1/namespaces/default/pods?watch=true&resourceVersion=1&labelSelector=app%3Dengine")
	s.SetPod(pod("x", "127.0.0.9", map[string]string{"app": "other"})) // filtered out
	s.SetPod(pod("b", "127.0.0.3", map[string]string{"app": "engine"}))
	s.SetPod(pod("a", "127.0.0.4", map[string]string{"app": "engine"}))
	s.DeletePod("default", "b")
	for _, want := range []struct{ typ, name, ip, rv string }{
		{"ADDED", "b", "127.0.0.3", "3"}, {"MODIFIED", "a", "127.0.0.4", "4"}, {"DELETED", "b", "127.0.0.3", "5"},
	} {
		e := next(t, ch)
		if e.Type != want.typ || e.Object.Metadata.Name != want.name || e.Object.Status.PodIP != want.ip || e.Object.Metadata.ResourceVersion != want.rv {
			t.Errorf("event %+v, want %+v", e, want)
		}
	}
}

// TestWatchList: sendInitialEvents streams the current objects, then the bookmark client-go's
// watch-list waits for, then changes.
func TestWatchList(t *testing.T) {
	s := start(t)
	s.SetInferencePool(kubetest.InferencePool{Namespace: "default", Name: "pool", TargetPorts: []int{8000}})
	ch := watch(t, s.URL()+"/apis/inference.networking.k8s.io/v1/namespaces/default/inferencepools?watch=1&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true")
	if e := next(t, ch); e.Type != "ADDED" || e.Object.Metadata.Name != "pool" || e.Object.Spec.TargetPorts[0].Number != 8000 {
		t.Errorf("initial event %+v", e)
	}
	if e := next(t, ch); e.Type != "BOOKMARK" || e.Object.Metadata.Annotations["k8s.io/initial-events-end"] != "true" || e.Object.Metadata.ResourceVersion != "1" {
		t.Errorf("bookmark %+v", e)
	}
	s.SetInferencePool(kubetest.InferencePool{Namespace: "default", Name: "pool", TargetPorts: []int{8000, 8001}})
	if e := next(t, ch); e.Type != "MODIFIED" || len(e.Object.Spec.TargetPorts) != 2 {
		t.Errorf("change %+v", e)
	}
}

// TestTLSKubeconfig: with certificates the server wants a client certificate, and the
// kubeconfig it writes names them.
func TestTLSKubeconfig(t *testing.T) {
	pki := tlsconfigtest.New(t)
	s := kubetest.New()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := s.Start(ctx, pki.Server); err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if !strings.HasPrefix(s.URL(), "https://127.0.0.1:") {
		t.Fatalf("URL %s", s.URL())
	}
	if _, err := http.Get(s.URL() + "/api"); err == nil {
		t.Error("a client without the CA and a certificate got through")
	}
	tc, err := pki.Client.Client()
	if err != nil {
		t.Fatal(err)
	}
	c := &http.Client{Transport: &http.Transport{TLSClientConfig: tc}}
	resp, err := c.Get(s.URL() + "/api")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	path, err := s.WriteKubeconfig(t.TempDir(), pki.Client)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(path)
	for _, want := range []string{s.URL(), pki.Client.Cert, pki.Client.Key, pki.Client.CA} {
		if !strings.Contains(string(b), want) {
			t.Errorf("kubeconfig lacks %s:\n%s", want, b)
		}
	}
}
