package sidecar_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"testing"

	"github.com/kvgate/kvgate/metricstest"
	"github.com/kvgate/kvgate/sidecar"
)

// TestSidecarRefusesUnknownPrefill: a request naming a prefill engine the router could not
// have named (not in the known set) gets a 403 with an OpenAI-shaped error and is counted;
// neither that host nor the decode engine receives anything, so the prompt and the client's
// Authorization go nowhere. A host discovery adds later is accepted.
func TestSidecarRefusesUnknownPrefill(t *testing.T) {
	rogue := newFakeEngine(t, prefillOK)
	legit := newFakeEngine(t, prefillOK)
	dec := newFakeEngine(t, decodeOK)
	known := sidecar.NewPrefillSet(legit.addr())
	s, reg := startSidecar(t, dec.addr(), func(c *sidecar.Config) { c.Prefill = known })
	url := "http://" + s.Addr() + "/v1/chat/completions"

	resp := post(t, context.Background(), url, rogue.addr(), chatReq)
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	var e struct {
		Error struct{ Message, Type string } `json:"error"`
	}
	if resp.StatusCode != http.StatusForbidden || json.Unmarshal(b, &e) != nil || e.Error.Type != "permission_error" || e.Error.Message == "" {
		t.Fatalf("unknown prefill engine: %d %s, want 403 permission_error", resp.StatusCode, b)
	}
	if n := len(rogue.requests()); n != 0 {
		t.Fatalf("the unknown host received %d requests (prompt and Authorization leaked)", n)
	}
	if n := len(dec.requests()); n != 0 {
		t.Fatalf("the decode engine received %d requests for a refused one", n)
	}
	if got := metricstest.Value(reg, sidecar.MetricRefused); got != 1 {
		t.Fatalf("%s = %v, want 1", sidecar.MetricRefused, got)
	}

	resp = post(t, context.Background(), url, legit.addr(), chatReq)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.Header.Get(sidecar.HeaderPrefillEndpoint) != legit.addr() {
		t.Fatalf("known prefill engine: %d %v", resp.StatusCode, resp.Header)
	}

	known.Set([]string{rogue.addr()}) // discovery reports it now
	resp = post(t, context.Background(), url, rogue.addr(), chatReq)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || len(rogue.requests()) != 1 {
		t.Fatalf("after discovery added it: %d, %d prefill requests", resp.StatusCode, len(rogue.requests()))
	}
	if !known.Has(legit.addr()) {
		t.Fatal("Set dropped a fixed address")
	}
}
