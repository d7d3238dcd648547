package xds_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/kvgate/kvgate/tlsconfig"
	"github.com/kvgate/kvgate/tlsconfig/tlsconfigtest"
	"github.com/kvgate/kvgate/xds"
)

// envoyClientTLS builds the client configuration Envoy derives from the router cluster's
// UpstreamTlsContext: its files, its SNI, its ALPN.
func envoyClientTLS(t *testing.T, m xds.Model) *tls.Config {
	t.Helper()
	res, err := xds.Translate(m)
	if res == nil {
		t.Fatal(err)
	}
	for _, c := range res.Clusters {
		if c.GetName() != xds.RouterCluster {
			continue
		}
		var up tlsv3.UpstreamTlsContext
		if err := c.GetTransportSocket().GetTypedConfig().UnmarshalTo(&up); err != nil {
			t.Fatalf("router cluster has no UpstreamTlsContext: %v", err)
		}
		ctx := up.GetCommonTlsContext()
		tc := &tls.Config{NextProtos: ctx.GetAlpnProtocols(), ServerName: up.GetSni(), MinVersion: tls.VersionTLS12}
		if ca := ctx.GetValidationContext().GetTrustedCa().GetFilename(); ca != "" {
			pem, err := os.ReadFile(ca)
			if err != nil {
				t.Fatal(err)
			}
			tc.RootCAs = x509.NewCertPool()
			tc.RootCAs.AppendCertsFromPEM(pem)
		}
		for _, c := range ctx.GetTlsCertificates() {
			cert, err := tls.LoadX509KeyPair(c.GetCertificateChain().GetFilename(), c.GetPrivateKey().GetFilename())
			if err != nil {
				t.Fatal(err)
			}
			tc.Certificates = append(tc.Certificates, cert)
		}
		return tc
	}
	t.Fatal("no router cluster")
	return nil
}

// TestRouterTLSMatchesTLSConfigServer: what --router-tls-* makes xds tell Envoy connects to a
// gRPC server (the router's ext_proc) configured from the same cert layout through package
// tlsconfig (--tls-cert, --tls-key, --tls-ca): mTLS with ALPN h2 succeeds, and a client
// identity from another CA is refused.
func TestRouterTLSMatchesTLSConfigServer(t *testing.T) {
	p := tlsconfigtest.New(t)
	stc, err := p.Server.Server()
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer(grpc.Creds(credentials.NewTLS(stc)))
	healthpb.RegisterHealthServer(gs, health.NewServer())
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = gs.Serve(lis) }()
	defer gs.Stop()

	check := func(files tlsconfig.Files) error {
		tc := envoyClientTLS(t, xds.Model{Router: []string{lis.Addr().String()}, RouterTLS: &files})
		if tc.ServerName == "" {
			tc.ServerName = "127.0.0.1" // Envoy verifies the chain; the test PKI's SAN is the IP
		}
		conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(credentials.NewTLS(tc)))
		if err != nil {
			return err
		}
		defer conn.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, err = healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{}, grpc.WaitForReady(false))
		return err
	}
	if err := check(tlsconfig.Files{CA: p.CA, Cert: p.Client.Cert, Key: p.Client.Key}); err != nil {
		t.Fatalf("Envoy's TLS from --router-tls-* against a tlsconfig server: %v", err)
	}
	if err := check(tlsconfig.Files{CA: p.CA, Cert: p.Other.Cert, Key: p.Other.Key}); err == nil || !strings.Contains(err.Error(), "Unavailable") && !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("a client certificate from another CA: err = %v, want refused", err)
	}
}
