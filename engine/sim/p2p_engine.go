package sim

import "time"

// PromptHashes returns the hashes of prompt's full blocks that a request could reuse (all
// but the last token's block, as admission does), for a request with the given LoRA adapter
// and cache salt: the hashes a peer engine looks up when this engine pulls the prefix.
func (e *Engine) PromptHashes(prompt []uint32, lora, salt string) []BlockHash {
	s := seq{req: Request{LoRAName: lora, CacheSalt: salt}, tokens: prompt}
	if len(prompt) == 0 {
		return nil
	}
	e.ensureHashes(&s, (len(prompt)-1)/e.cfg.BlockSize)
	return s.hashes
}

// Holdings is where the leading run of a list of block hashes is held: in the GPU prefix
// cache, the host tier or the disk tier, block by block.
type Holdings struct {
	Blocks         int // the leading run's length
	GPU, CPU, Disk int // of those, found on each medium (the GPU wins when several hold one)
}

// Holds reports how many of hashes, from the first, this engine holds on any medium at now
// (a lower-tier copy counts once its offload completed). Found lower-tier blocks count as a
// use for their tier's LRU order. It is what a peer's pull of those blocks would get.
func (e *Engine) Holds(hashes []BlockHash, now time.Duration) Holdings {
	var h Holdings
	for _, x := range hashes {
		if _, ok := e.kv.cached[x]; ok {
			h.GPU++
			h.Blocks++
			continue
		}
		found := false
		for t := e.kv.lower; t != nil; t = t.next {
			if _, ok := t.lookup(x, now); ok {
				if t.medium == MediumCPU {
					h.CPU++
				} else {
					h.Disk++
				}
				found = true
				break
			}
		}
		if !found {
			break
		}
		h.Blocks++
	}
	return h
}
