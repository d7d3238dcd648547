package router_test

import (
	"testing"

	"github.com/kvgate/kvgate/engine"
	"github.com/kvgate/kvgate/router"
)

// TestReplicasAgree: two router replicas subscribed to the same engines' KV events build the
// same index with no coordination between them (active-active): both send a prompt to the
// endpoint that stored it, and both forget it when the engine evicts it.
func TestReplicasAgree(t *testing.T) {
	eps := endpoints(3)
	pubs := make([]*engine.Publisher, len(eps))
	for i := range eps {
		p, err := engine.NewPublisher(engine.PublisherConfig{Endpoint: "tcp://127.0.0.1:0", Logger: testLogger(t)})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = p.Close() })
		pubs[i], eps[i].KVEvents = p, p.Addr()
	}
	var replicas []*router.Router
	for range 2 {
		r, _ := newRouter(t, eps, nil)
		run(t, r)
		replicas = append(replicas, r)
	}
	content := longText("replicas", 300)
	tokens := chatTokens(t, content)
	blocks := len(tokens) / 16
	batch := stored(tokens, 16, 5000, "")
	eventually(t, "both replicas index e2's blocks", func() bool {
		if _, err := pubs[2].Publish(batch); err != nil {
			t.Fatal(err)
		}
		return loadOf(replicas[0], "e2").CachedBlocks == blocks && loadOf(replicas[1], "e2").CachedBlocks == blocks
	})
	for i, r := range replicas {
		d := route(t, r, "/v1/chat/completions", chatBody(content, false))
		if d.Endpoint.Name != "e2" || d.CachedBlocks != blocks {
			t.Errorf("replica %d picked %s with %d cached blocks, want e2 with %d", i, d.Endpoint.Name, d.CachedBlocks, blocks)
		}
		d.Done(nil, nil)
	}
	rm := engine.EventBatch{Events: []engine.Event{{Kind: engine.BlockRemoved, BlockHashes: batch.Events[0].BlockHashes}}}
	if _, err := pubs[2].Publish(rm); err != nil {
		t.Fatal(err)
	}
	eventually(t, "both replicas drop e2's blocks", func() bool {
		return loadOf(replicas[0], "e2").CachedBlocks == 0 && loadOf(replicas[1], "e2").CachedBlocks == 0
	})
}
