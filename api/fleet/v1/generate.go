// Package fleetv1 is the generated code of fleet.proto, the workerd scaling API.
// Regenerate from the repository root with protoc 3.21+, protoc-gen-go v1.36.12 and
// protoc-gen-go-grpc v1.5.1:
//
//	go generate ./api/fleet/v1
package fleetv1

//go:generate sh -c "cd ../../.. && protoc --go_out=. --go_opt=module=github.com/kvgate/kvgate --go-grpc_out=. --go-grpc_opt=module=github.com/kvgate/kvgate api/fleet/v1/fleet.proto"
