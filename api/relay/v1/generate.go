// Package relayv1 is the generated code of relay.proto, the workerd KV-event and load relay.
// Regenerate from the repository root with protoc 3.21+, protoc-gen-go v1.36.12 and
// protoc-gen-go-grpc v1.5.1:
//
//	go generate ./api/relay/v1
package relayv1

//go:generate sh -c "cd ../../.. && protoc --go_out=. --go_opt=module=github.com/kvgate/kvgate --go-grpc_out=. --go-grpc_opt=module=github.com/kvgate/kvgate api/relay/v1/relay.proto"
