package workerd

import (
	"context"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	relayv1 "github.com/kvgate/kvgate/api/relay/v1"
	"github.com/kvgate/kvgate/gpu"
	"github.com/kvgate/kvgate/relay"
	"github.com/kvgate/kvgate/relay/relaytest"
	"github.com/kvgate/kvgate/tlsconfig/tlsconfigtest"
)

// TestRelayTLS: with Config.TLS the relay speaks only TLS, and with its CA only to routers
// that present a certificate it signed. A relay.Client with the client certificate gets the
// engine's snapshot; plaintext and foreign certificates are refused.
func TestRelayTLS(t *testing.T) {
	pki := tlsconfigtest.New(t)
	sim := fakeBinary(t, "sim")
	cfg := Config{Node: "n", TLS: pki.Server, Engines: []EngineSpec{{Name: "e", Kind: KindSim}}}
	w, err := New(context.Background(), cfg, Options{GPUs: gpu.NewFake(gpu.Inventory{}), SimCommand: []string{sim}})
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = w.srv.Serve(w.lis) }() // the relay alone: no engine is started
	t.Cleanup(w.srv.Stop)

	engines := func(creds credentials.TransportCredentials) error {
		conn, err := grpc.NewClient(w.Addr(), grpc.WithTransportCredentials(creds))
		if err != nil {
			return err
		}
		defer conn.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, err = relayv1.NewRelayClient(conn).Engines(ctx, &relayv1.EnginesRequest{})
		return err
	}
	good, err := pki.Client.Client()
	if err != nil {
		t.Fatal(err)
	}
	if err := engines(credentials.NewTLS(good)); err != nil {
		t.Fatalf("mTLS router refused: %v", err)
	}
	if err := engines(insecure.NewCredentials()); err == nil {
		t.Error("a plaintext router was served")
	}
	other, err := pki.Other.Client()
	if err != nil {
		t.Fatal(err)
	}
	if err := engines(credentials.NewTLS(other)); err == nil {
		t.Error("a router with another CA's certificate was served")
	}

	// The router's client, as kvgate router --relay-tls-* builds it.
	rec := relaytest.NewRecorder()
	c := relay.NewClientConfig(relay.ClientConfig{Addr: w.Addr(), Engine: "n-e", TLS: good, MinBackoff: 10 * time.Millisecond})
	relaytest.Run(t, c, rec)
	relaytest.WaitFor(t, 10*time.Second, "the snapshot over mTLS", func() bool { b, _ := rec.Snapshot(); return len(b) >= 1 })
}
