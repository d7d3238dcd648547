package tlsconfig_test

import (
	"crypto/tls"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/kvgate/kvgate/tlsconfig"
	"github.com/kvgate/kvgate/tlsconfig/tlsconfigtest"
)

func TestZeroIsPlaintext(t *testing.T) {
	var f tlsconfig.Files
	if f.Enabled() {
		t.Fatal("zero Files enabled")
	}
	if s, err := f.Server(); s != nil || err != nil {
		t.Fatalf("Server() = %v, %v", s, err)
	}
	if c, err := f.Client(); c != nil || err != nil {
		t.Fatalf("Client() = %v, %v", c, err)
	}
}

func TestErrors(t *testing.T) {
	p := tlsconfigtest.New(t)
	for _, tc := range []struct {
		name   string
		f      tlsconfig.Files
		server bool
		want   string
	}{
		{"server without key", tlsconfig.Files{Cert: p.Server.Cert}, true, "both a certificate and its key"},
		{"server missing file", tlsconfig.Files{Cert: "/nonexistent.crt", Key: "/nonexistent.key"}, true, "no such file"},
		{"server CA not PEM", tlsconfig.Files{Cert: p.Server.Cert, Key: p.Server.Key, CA: p.Server.Key}, true, "no PEM certificate"},
		{"client cert without key", tlsconfig.Files{Cert: p.Client.Cert}, false, "needs its key"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var err error
			if tc.server {
				_, err = tc.f.Server()
			} else {
				_, err = tc.f.Client()
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
		})
	}
}

// TestMutualTLS: a server with a CA accepts a client holding a certificate signed by it and
// refuses one without a certificate or with another CA's.
func TestMutualTLS(t *testing.T) {
	p := tlsconfigtest.New(t)
	sc, err := p.Server.Server()
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "ok")
	}))
	srv.TLS = sc
	srv.StartTLS()
	defer srv.Close()
	get := func(f tlsconfig.Files) error {
		cc, err := f.Client()
		if err != nil {
			t.Fatal(err)
		}
		c := &http.Client{Transport: &http.Transport{TLSClientConfig: cc}}
		resp, err := c.Get(srv.URL)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if string(b) != "ok" {
			t.Fatalf("body %q", b)
		}
		return nil
	}
	if err := get(p.Client); err != nil {
		t.Fatalf("client with a certificate from the CA: %v", err)
	}
	if err := get(tlsconfig.Files{CA: p.CA}); err == nil {
		t.Fatal("client without a certificate was accepted")
	}
	if err := get(p.Other); err == nil {
		t.Fatal("client with another CA's certificate was accepted")
	}
	// And a client that does not trust the server's CA refuses it.
	c := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{MinVersion: tls.VersionTLS12}}}
	if _, err := c.Get(srv.URL); err == nil {
		t.Fatal("server verified without its CA")
	}
}
