package sim

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"time"
)

// peerDialTimeout bounds connecting to another engine's transfer port, TLS handshake included.
const peerDialTimeout = 5 * time.Second

// dialPeer connects to another engine's transfer listener: over TLS, handshake done, when tc
// is set (the server name is the host of addr unless tc names one), else plaintext.
func dialPeer(ctx context.Context, addr string, tc *tls.Config) (net.Conn, error) {
	d := &net.Dialer{Timeout: peerDialTimeout}
	if tc == nil {
		return d.DialContext(ctx, "tcp", addr)
	}
	return (&tls.Dialer{NetDialer: d, Config: tc}).DialContext(ctx, "tcp", addr)
}

// tlsFailure reports whether err is a TLS failure between two engines rather than a network
// or protocol one: a certificate the client does not trust (or issued for another name), a
// peer that does not speak TLS, or an alert from the peer (which is how a server refusing
// the client's certificate answers, under TLS 1.3 only at the client's first read).
func tlsFailure(err error) bool {
	var (
		verify   *tls.CertificateVerificationError
		header   tls.RecordHeaderError
		unknown  x509.UnknownAuthorityError
		hostname x509.HostnameError
		invalid  x509.CertificateInvalidError
		op       *net.OpError
	)
	return errors.As(err, &verify) || errors.As(err, &header) || errors.As(err, &unknown) ||
		errors.As(err, &hostname) || errors.As(err, &invalid) ||
		(errors.As(err, &op) && op.Op == "remote error")
}
