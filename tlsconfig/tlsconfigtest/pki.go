// Package tlsconfigtest writes a throwaway certificate authority and certificates for tests.
package tlsconfigtest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/kvgate/kvgate/tlsconfig"
)

// PKI is a CA with one server certificate (for 127.0.0.1, ::1 and localhost) and one client
// certificate, all files in a test's temporary directory.
type PKI struct {
	Server tlsconfig.Files // server certificate and key; CA set, so clients must present one
	Client tlsconfig.Files // client certificate and key; CA set to verify the server
	CA     string          // the CA's certificate file
	Pool   *x509.CertPool  // the CA as a pool
	// Other is a second, unrelated CA's client identity (for "wrong CA is refused" tests).
	Other tlsconfig.Files
}

// New writes a PKI into t.TempDir().
func New(t testing.TB) PKI {
	t.Helper()
	dir := t.TempDir()
	ca, caKey, caFile := authority(t, dir, "ca")
	p := PKI{CA: caFile, Pool: x509.NewCertPool()}
	p.Pool.AddCert(ca)
	sc, sk := leaf(t, dir, "server", 2, ca, caKey, x509.ExtKeyUsageServerAuth)
	cc, ck := leaf(t, dir, "client", 3, ca, caKey, x509.ExtKeyUsageClientAuth)
	p.Server = tlsconfig.Files{Cert: sc, Key: sk, CA: caFile}
	p.Client = tlsconfig.Files{Cert: cc, Key: ck, CA: caFile}
	other, otherKey, _ := authority(t, dir, "other-ca")
	oc, ok := leaf(t, dir, "other-client", 4, other, otherKey, x509.ExtKeyUsageClientAuth)
	p.Other = tlsconfig.Files{Cert: oc, Key: ok, CA: caFile}
	return p
}

func authority(t testing.TB, dir, name string) (*x509.Certificate, *ecdsa.PrivateKey, string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "kvgate test " + name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(dir, name+".crt")
	write(t, file, "CERTIFICATE", der)
	return cert, key, file
}

func leaf(t testing.TB, dir, name string, serial int64, ca *x509.Certificate, caKey *ecdsa.PrivateKey, usage x509.ExtKeyUsage) (string, string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage},
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1"), net.ParseIP("::1")},
		DNSNames:    []string{"localhost"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	cert, keyFile := filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key")
	write(t, cert, "CERTIFICATE", der)
	write(t, keyFile, "EC PRIVATE KEY", kder)
	return cert, keyFile
}

func write(t testing.TB, path, typ string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}
