package extproc_test

import (
	"context"
	"crypto/tls"
	"testing"
	"time"

	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/kvgate/kvgate/extproc"
	"github.com/kvgate/kvgate/extproc/extproctest"
	"github.com/kvgate/kvgate/tlsconfig/tlsconfigtest"
)

// TestTLS serves ext_proc over mutual TLS: a client with a certificate of the CA routes, a
// plaintext client and one with another CA's certificate are refused.
func TestTLS(t *testing.T) {
	p := tlsconfigtest.New(t)
	stc, err := p.Server.Server()
	if err != nil {
		t.Fatal(err)
	}
	f := start(t, extproc.Config{TLS: stc})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	addr, err := f.server.Addr(ctx)
	if err != nil {
		t.Fatal(err)
	}
	dial := func(t *testing.T, tc *tls.Config) *extproctest.Client {
		c, err := extproctest.DialTLS(addr.String(), tc)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	ctc, err := p.Client.Client()
	if err != nil {
		t.Fatal(err)
	}
	c := dial(t, ctc)
	res, err := c.Do(ctx, fullDuplex, extproctest.Request{Method: "POST", Path: "/v1/chat/completions", Body: chatBody(t, "over tls", false)},
		func(*extproctest.Result) extproctest.Upstream {
			return extproctest.Upstream{Chunks: [][]byte{[]byte(`{}`)}}
		})
	if err != nil || res.Immediate != nil || res.Destination() == "" {
		t.Fatalf("mTLS client: %v %v", err, res)
	}

	otc, err := p.Other.Client()
	if err != nil {
		t.Fatal(err)
	}
	for name, tc := range map[string]*tls.Config{"plaintext": nil, "other CA": otc} {
		short, scancel := context.WithTimeout(ctx, 3*time.Second)
		_, err := healthpb.NewHealthClient(dial(t, tc).Conn()).Check(short, &healthpb.HealthCheckRequest{Service: extproc.HealthLiveness})
		scancel()
		if err == nil {
			t.Errorf("%s client was served", name)
		}
	}
	waitReleased(t, f)
}
