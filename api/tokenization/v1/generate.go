// Package tokenizationv1 is the generated code of tokenization.proto, the tokenization service
// llm-d's Endpoint Picker dials (served by package tokenserver). Regenerate from the repository
// root with protoc 3.21+, protoc-gen-go v1.36.12 and protoc-gen-go-grpc v1.5.1:
//
//	go generate ./api/tokenization/v1
package tokenizationv1

//go:generate sh -c "cd ../../.. && protoc --go_out=. --go_opt=module=github.com/kvgate/kvgate --go-grpc_out=. --go-grpc_opt=module=github.com/kvgate/kvgate api/tokenization/v1/tokenization.proto"
