package relay

import (
	"slices"
	"strings"

	relayv1 "github.com/kvgate/kvgate/api/relay/v1"
	"github.com/kvgate/kvgate/engine"
)

// blockKey names a cached block: the same hash may be held on GPU and offloaded to CPU.
type blockKey struct {
	hash   engine.BlockHash
	medium string
}

type blockEntry struct {
	order     uint64 // insertion counter: snapshots list parents before children
	parent    engine.BlockHash
	tokens    []uint32
	blockSize int
	loraID    *int
	loraName  string
}

// blockSet is one engine's current KV blocks, kept from its events. It is not safe for
// concurrent use; the relay holds its lock around every call.
type blockSet struct {
	blocks map[blockKey]*blockEntry
	next   uint64
}

func newBlockSet() *blockSet { return &blockSet{blocks: map[blockKey]*blockEntry{}} }

func (s *blockSet) len() int { return len(s.blocks) }

func (s *blockSet) clear() { clear(s.blocks) }

// apply updates the set with one event.
func (s *blockSet) apply(e *engine.Event) {
	medium := e.Medium
	if medium == "" {
		medium = engine.MediumGPU
	}
	switch e.Kind {
	case engine.AllBlocksCleared:
		s.clear()
	case engine.BlockRemoved:
		for _, h := range e.BlockHashes {
			delete(s.blocks, blockKey{h, medium})
		}
	case engine.BlockStored:
		bs := e.BlockSize
		parent := e.Parent
		for i, h := range e.BlockHashes {
			var toks []uint32
			if bs > 0 && (i+1)*bs <= len(e.TokenIDs) {
				// The batch is ours (engine.Handler's contract): share its token array
				// instead of copying each block's slice. Capacity is clipped so nothing
				// can append into a neighbour.
				toks = e.TokenIDs[i*bs : (i+1)*bs : (i+1)*bs]
			}
			k := blockKey{h, medium}
			if old, ok := s.blocks[k]; ok { // stored again: keep its place, refresh the data
				old.parent, old.tokens, old.blockSize, old.loraID, old.loraName = parent, toks, bs, e.LoRAID, e.LoRAName
			} else {
				s.next++
				s.blocks[k] = &blockEntry{order: s.next, parent: parent, tokens: toks, blockSize: bs, loraID: e.LoRAID, loraName: e.LoRAName}
			}
			parent = h
		}
	}
}

// snapshot returns the set as BLOCK_STORED events of one block each, oldest first, so
// every parent that is present precedes its children.
func (s *blockSet) snapshot() []*relayv1.Event {
	type kv struct {
		k blockKey
		e *blockEntry
	}
	all := make([]kv, 0, len(s.blocks))
	for k, e := range s.blocks {
		all = append(all, kv{k, e})
	}
	slices.SortFunc(all, func(a, b kv) int {
		switch {
		case a.e.order < b.e.order:
			return -1
		case a.e.order > b.e.order:
			return 1
		}
		return 0
	})
	out := make([]*relayv1.Event, len(all))
	for i, x := range all {
		ev := &relayv1.Event{
			Kind:        relayv1.EventKind_BLOCK_STORED,
			BlockHashes: [][]byte{[]byte(x.k.hash)},
			TokenIds:    x.e.tokens,
			BlockSize:   int32(x.e.blockSize),
			LoraName:    x.e.loraName,
			Medium:      x.k.medium,
		}
		if x.e.parent != "" {
			ev.Parent = []byte(x.e.parent)
		}
		if x.e.loraID != nil {
			v := int32(*x.e.loraID)
			ev.LoraId = &v
		}
		out[i] = ev
	}
	return out
}

// toProto converts an engine event to the relay's wire form.
func toProto(e *engine.Event) *relayv1.Event {
	out := &relayv1.Event{
		BlockSize: int32(e.BlockSize),
		TokenIds:  e.TokenIDs,
		LoraName:  e.LoRAName,
		Medium:    e.Medium,
	}
	switch e.Kind {
	case engine.BlockStored:
		out.Kind = relayv1.EventKind_BLOCK_STORED
	case engine.BlockRemoved:
		out.Kind = relayv1.EventKind_BLOCK_REMOVED
	case engine.AllBlocksCleared:
		out.Kind = relayv1.EventKind_ALL_BLOCKS_CLEARED
	}
	if len(e.BlockHashes) > 0 {
		// One backing array for every hash of the event.
		n := 0
		for _, h := range e.BlockHashes {
			n += len(h)
		}
		buf := make([]byte, 0, n)
		out.BlockHashes = make([][]byte, len(e.BlockHashes))
		for i, h := range e.BlockHashes {
			start := len(buf)
			buf = append(buf, h...)
			out.BlockHashes[i] = buf[start:len(buf):len(buf)]
		}
	}
	if e.Parent != "" {
		out.Parent = []byte(e.Parent)
	}
	if e.LoRAID != nil {
		v := int32(*e.LoRAID)
		out.LoraId = &v
	}
	return out
}

// fromProto converts a relay event back to the engine form. An unknown kind yields ok=false.
func fromProto(p *relayv1.Event) (engine.Event, bool) {
	e := engine.Event{
		BlockSize: max(int(p.GetBlockSize()), 0),
		TokenIDs:  p.GetTokenIds(),
		LoRAName:  p.GetLoraName(),
		Medium:    p.GetMedium(),
		Parent:    engine.BlockHash(p.GetParent()),
	}
	if e.Medium == "" {
		e.Medium = engine.MediumGPU
	}
	switch p.GetKind() {
	case relayv1.EventKind_BLOCK_STORED:
		e.Kind = engine.BlockStored
	case relayv1.EventKind_BLOCK_REMOVED:
		e.Kind = engine.BlockRemoved
	case relayv1.EventKind_ALL_BLOCKS_CLEARED:
		e.Kind = engine.AllBlocksCleared
	default:
		return engine.Event{}, false
	}
	if hs := p.GetBlockHashes(); len(hs) > 0 {
		// One string for every hash of the event; each hash is a substring of it.
		n := 0
		for _, h := range hs {
			n += len(h)
		}
		var sb strings.Builder
		sb.Grow(n)
		for _, h := range hs {
			sb.Write(h)
		}
		all := sb.String()
		e.BlockHashes = make([]engine.BlockHash, len(hs))
		off := 0
		for i, h := range hs {
			e.BlockHashes[i] = engine.BlockHash(all[off : off+len(h)])
			off += len(h)
		}
	}
	if p.LoraId != nil {
		v := int(p.GetLoraId())
		e.LoRAID = &v
	}
	return e, true
}
