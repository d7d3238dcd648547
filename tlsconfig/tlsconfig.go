// Package tlsconfig turns PEM file names into crypto/tls configurations for kvgate's servers
// and clients, with one flag layout shared by every command.
// It owns no step of a request or a KV event; every hop that can be TLS uses it.
package tlsconfig

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"

	"github.com/spf13/pflag"
)

// Files names PEM files for one side of a TLS connection. Cert and Key together are this
// side's identity (for a client, mutual TLS); CA verifies the peer: a server given a CA
// requires client certificates signed by it, a client given a CA verifies the server with it
// instead of the system roots. The zero value means plaintext.
type Files struct {
	Cert string `json:"cert,omitempty" yaml:"cert,omitempty"`
	Key  string `json:"key,omitempty" yaml:"key,omitempty"`
	CA   string `json:"ca,omitempty" yaml:"ca,omitempty"`
	// ServerName is the name a client verifies the server's certificate for (client side
	// only); empty means the host of the address dialled.
	ServerName string `json:"server_name,omitempty" yaml:"server_name,omitempty"`
}

// Enabled reports whether any file is named, that is whether TLS is on.
func (f Files) Enabled() bool { return f.Cert != "" || f.Key != "" || f.CA != "" }

// Server builds a server configuration: nil, nil when f is the zero value. A server needs
// Cert and Key; with CA it requires and verifies client certificates (mTLS).
func (f Files) Server() (*tls.Config, error) {
	if !f.Enabled() {
		return nil, nil
	}
	if f.Cert == "" || f.Key == "" {
		return nil, errors.New("tls: a server needs both a certificate and its key")
	}
	cert, err := tls.LoadX509KeyPair(f.Cert, f.Key)
	if err != nil {
		return nil, fmt.Errorf("tls: %w", err)
	}
	tc := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	if f.CA != "" {
		pool, err := loadPool(f.CA)
		if err != nil {
			return nil, err
		}
		tc.ClientCAs = pool
		tc.ClientAuth = tls.RequireAndVerifyClientCert
	}
	return tc, nil
}

// Client builds a client configuration: nil, nil when f is the zero value. With CA the server
// is verified against it (else the system roots); with Cert and Key the client presents them.
func (f Files) Client() (*tls.Config, error) {
	if !f.Enabled() {
		return nil, nil
	}
	if (f.Cert == "") != (f.Key == "") {
		return nil, errors.New("tls: a client certificate needs its key and a key its certificate")
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: f.ServerName}
	if f.CA != "" {
		pool, err := loadPool(f.CA)
		if err != nil {
			return nil, err
		}
		tc.RootCAs = pool
	}
	if f.Cert != "" {
		cert, err := tls.LoadX509KeyPair(f.Cert, f.Key)
		if err != nil {
			return nil, fmt.Errorf("tls: %w", err)
		}
		tc.Certificates = []tls.Certificate{cert}
	}
	return tc, nil
}

func loadPool(path string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("tls CA: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("tls CA %s: no PEM certificate in it", path)
	}
	return pool, nil
}

// AddServerFlags registers --<prefix>tls-cert, --<prefix>tls-key and --<prefix>tls-ca for a
// server; what names what it serves ("ext_proc", "the relay").
func (f *Files) AddServerFlags(fs *pflag.FlagSet, prefix, what string) {
	fs.StringVar(&f.Cert, prefix+"tls-cert", f.Cert, "serve "+what+" over TLS with this certificate (PEM)")
	fs.StringVar(&f.Key, prefix+"tls-key", f.Key, "private key of --"+prefix+"tls-cert (PEM)")
	fs.StringVar(&f.CA, prefix+"tls-ca", f.CA, "require client certificates signed by this CA for "+what+" (mTLS)")
}

// AddClientFlags registers --<prefix>tls-ca, --<prefix>tls-cert, --<prefix>tls-key and
// --<prefix>tls-server-name for a client of what.
func (f *Files) AddClientFlags(fs *pflag.FlagSet, prefix, what string) {
	fs.StringVar(&f.CA, prefix+"tls-ca", f.CA, "connect to "+what+" over TLS, verifying it with this CA (PEM)")
	fs.StringVar(&f.Cert, prefix+"tls-cert", f.Cert, "client certificate presented to "+what+" (mTLS, PEM)")
	fs.StringVar(&f.Key, prefix+"tls-key", f.Key, "private key of --"+prefix+"tls-cert (PEM)")
	fs.StringVar(&f.ServerName, prefix+"tls-server-name", f.ServerName, "name "+what+"'s certificate is verified for (default: the host dialled)")
}
