package extproc

import "google.golang.org/grpc"

// ServerOptions are the gRPC server options every Server uses, for the protocol floor
// benchmark's bare server (BenchmarkExtProcFloor), which must be configured alike.
func ServerOptions() []grpc.ServerOption { return serverOptions() }
