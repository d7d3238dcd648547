package fleet

import (
	"context"
	"testing"
	"time"

	"github.com/kvgate/kvgate/gpu"
	"github.com/kvgate/kvgate/tlsconfig/tlsconfigtest"
	"github.com/kvgate/kvgate/workerd"
)

// The planner reaches a workerd whose gRPC requires mutual TLS with the client flags'
// certificate; without TLS, or with another CA's certificate, it is refused.
func TestNodeOverMutualTLS(t *testing.T) {
	pki := tlsconfigtest.New(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	w, err := workerd.New(ctx, workerd.Config{Node: "n", TLS: pki.Server, GPUs: 2,
		Templates: []workerd.Template{{Name: "t", Kind: workerd.KindSim, GPUs: 1}}}, workerd.Options{GPUs: gpu.NewFake(gpu.Inventory{})})
	if err != nil {
		t.Fatal(err)
	}
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- w.Run(runCtx) }()
	defer func() { stop(); <-done }()

	state := func(files func() (*GRPCNode, error)) error {
		n, err := files()
		if err != nil {
			return err
		}
		defer n.Close()
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		st, err := n.State(cctx)
		if err == nil && (st.GetGpusTotal() != 2 || len(st.GetTemplates()) != 1) {
			t.Fatalf("node over mTLS: %v", st)
		}
		return err
	}
	if err := state(func() (*GRPCNode, error) {
		tc, err := pki.Client.Client()
		if err != nil {
			return nil, err
		}
		return NewGRPCNode(w.Addr(), tc)
	}); err != nil {
		t.Fatalf("mTLS planner refused: %v", err)
	}
	if err := state(func() (*GRPCNode, error) { return NewGRPCNode(w.Addr(), nil) }); err == nil {
		t.Error("a plaintext planner was served")
	}
	if err := state(func() (*GRPCNode, error) {
		tc, err := pki.Other.Client()
		if err != nil {
			return nil, err
		}
		return NewGRPCNode(w.Addr(), tc)
	}); err == nil {
		t.Error("a planner with another CA's certificate was served")
	}
}
