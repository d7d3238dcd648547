package envoy

import (
	"fmt"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tls "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	matcher "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// TLSTransportSocket is the name of Envoy's TLS transport socket.
const TLSTransportSocket = "envoy.transport_sockets.tls"

// Any packs m deterministically (equal messages give equal bytes, so content hashes of the
// resources are stable). It panics on a message that cannot be marshalled, which only a
// programming error produces.
func Any(m proto.Message) *anypb.Any {
	a := &anypb.Any{}
	if err := anypb.MarshalFrom(a, m, proto.MarshalOptions{Deterministic: true}); err != nil {
		panic(fmt.Sprintf("envoy: packing %T: %v", m, err))
	}
	return a
}

// UpstreamTLS is the transport socket of a TLS (mTLS when cert and key are given) connection
// to a gRPC server: the client certificate, the CA that signs the server's, and when sni is
// set, the name sent and verified against the server certificate's DNS names. ALPN is h2,
// which gRPC servers require.
func UpstreamTLS(cert, key, ca, sni string) *core.TransportSocket {
	ctx := &tls.CommonTlsContext{AlpnProtocols: []string{"h2"}}
	if cert != "" || key != "" {
		ctx.TlsCertificates = []*tls.TlsCertificate{{
			CertificateChain: file(cert),
			PrivateKey:       file(key),
		}}
	}
	if ca != "" {
		vc := &tls.CertificateValidationContext{TrustedCa: file(ca)}
		if sni != "" {
			// Verify the name too, not only the chain.
			vc.MatchTypedSubjectAltNames = []*tls.SubjectAltNameMatcher{{
				SanType: tls.SubjectAltNameMatcher_DNS,
				Matcher: &matcher.StringMatcher{MatchPattern: &matcher.StringMatcher_Exact{Exact: sni}},
			}}
		}
		ctx.ValidationContextType = &tls.CommonTlsContext_ValidationContext{ValidationContext: vc}
	}
	return &core.TransportSocket{
		Name:       TLSTransportSocket,
		ConfigType: &core.TransportSocket_TypedConfig{TypedConfig: Any(&tls.UpstreamTlsContext{CommonTlsContext: ctx, Sni: sni})},
	}
}

func file(name string) *core.DataSource {
	return &core.DataSource{Specifier: &core.DataSource_Filename{Filename: name}}
}
