package kubetest

import (
	"context"
	"net/http"
	"net/http/httptest"
	"net/url"
	"testing"
)

// FuzzRequest: any path and query a client sends gets an answer (a list, an object, or a
// Status), never a panic; watches end with their client.
func FuzzRequest(f *testing.F) {
	f.Add("/api/v1/namespaces/default/pods", "app=engine,!x,y!=z", "metadata.name=a", "")
	f.Add("/apis/inference.networking.k8s.io/v1/inferencepools", "a in (b)", "spec.x=1", "")
	f.Add("/api/v1/namespaces/default/pods/a", "", "", "")
	f.Add("/api/v1/namespaces//pods/", "=", "metadata.name", "99")
	s := New()
	s.SetPod(Pod{Namespace: "default", Name: "a", IP: "127.0.0.2", Labels: map[string]string{"app": "engine"}})
	f.Fuzz(func(t *testing.T, path, labels, fields, rv string) {
		u := &url.URL{Path: path, RawQuery: url.Values{"labelSelector": {labels}, "fieldSelector": {fields}, "resourceVersion": {rv}, "timeoutSeconds": {"1"}}.Encode()}
		if len(path) == 0 || path[0] != '/' {
			u.Path = "/" + path
		}
		req := httptest.NewRequest(http.MethodGet, "http://kubetest"+u.RequestURI(), nil)
		ctx, cancel := context.WithCancel(req.Context())
		cancel() // a watch returns at once: the client is gone
		rec := httptest.NewRecorder()
		s.ServeHTTP(rec, req.WithContext(ctx))
		if rec.Code == 0 {
			t.Fatal("no answer")
		}
	})
}
