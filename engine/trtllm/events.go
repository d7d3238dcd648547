package trtllm

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"

	"github.com/kvgate/kvgate/engine"
)

// The block-hash algorithms a TRT-LLM event may name in its hash_algo field. An event
// without one uses HashV1.
const (
	HashV1          = "v1_block_key" // TRT-LLM's 64-bit block key hash: a JSON integer
	HashV2SHA256    = "v2_sha256"    // KV cache manager v2's sha256 block key: 64 hex digits
	HashV2SHA256x64 = "v2_sha256_64" // its first 8 bytes as an unsigned integer
)

// Cache levels of a stored block (KVCacheStoredBlockData.cache_level): 0 is the primary
// pool (GPU memory), 1 the secondary pool (host memory, offloading).
const (
	levelPrimary   = 0
	levelSecondary = 1
)

// Medium of the secondary (host) pool, as vLLM names its CPU tier.
const MediumCPU = "CPU"

// Decoder turns the event lists trtllm-serve returns from /kv_cache_events into kvgate's
// events. It is stateful (one per engine, not safe for concurrent use): it follows the
// attention window sizes announced by the "created" events, the event ids per attention-DP
// rank, and whether the engine has offloaded blocks to host memory.
type Decoder struct {
	// BlockSize is the engine's tokens_per_block. Stored blocks with fewer tokens (the
	// partial block at the end of a prompt, which TRT-LLM reports too) are dropped. 0: the
	// largest block of each event sets it.
	BlockSize int

	maxWindow int           // largest window size announced by the start-up "created" events
	started   bool          // an event other than "created" has been seen
	lastID    map[int]int64 // last event id per attention-DP rank
	secondary bool          // the engine has reported blocks in its secondary pool
	announced bool          // this run of "created" events has been reported as a clear
}

// Result is one decoded event list.
type Result struct {
	Batch engine.EventBatch
	// Gap is set when the event ids skipped (events were lost: the engine's buffer
	// overflowed between two polls) or went back (the engine restarted): what is known
	// about the engine's cache must be cleared before Batch is applied. ExpectedID and GotID
	// say where.
	Gap               bool
	ExpectedID, GotID int64
}

// wire is one event as TRT-LLM's KVCacheEventSerializer writes it.
type wire struct {
	EventID    *int64    `json:"event_id"`
	Data       *wireData `json:"data"`
	WindowSize *int      `json:"window_size"`
	DPRank     *int      `json:"attention_dp_rank"`
	HashAlgo   string    `json:"hash_algo"`
	// An event written without "data" (TRT-LLM's router accepts both) has its fields here.
	wireData
}

type wireData struct {
	Type       string            `json:"type"`
	HashAlgo   string            `json:"hash_algo"`
	ParentHash json.RawMessage   `json:"parent_hash"`
	Blocks     []wireBlock       `json:"blocks"`
	Hashes     []json.RawMessage `json:"block_hashes"`
	BlockHash  json.RawMessage   `json:"block_hash"`
	CacheLevel *wireDiff         `json:"cache_level"`
	NumBlocks  []int64           `json:"num_blocks_per_cache_level"`
}

type wireBlock struct {
	BlockHash  json.RawMessage `json:"block_hash"`
	Tokens     []wireToken     `json:"tokens"`
	LoRAID     *int            `json:"lora_id"`
	CacheLevel *int            `json:"cache_level"`
}

type wireToken struct {
	TokenID tokenID `json:"token_id"`
}

// tokenID is a token id read without an allocation; set tells a missing one from 0.
type tokenID struct {
	v   int64
	set bool
}

// UnmarshalJSON reads a non-negative decimal integer below 2^32.
func (t *tokenID) UnmarshalJSON(b []byte) error {
	if len(b) == 0 || len(b) > 10 {
		return fmt.Errorf("token_id %s is not a uint32", clip(b))
	}
	var v int64
	for _, c := range b {
		if c < '0' || c > '9' {
			return fmt.Errorf("token_id %s is not a uint32", clip(b))
		}
		v = v*10 + int64(c-'0')
	}
	if v > 1<<32-1 {
		return fmt.Errorf("token_id %s is not a uint32", clip(b))
	}
	t.v, t.set = v, true
	return nil
}

type wireDiff struct {
	Old *int `json:"old_value"`
	New *int `json:"new_value"`
}

// wrapper is an event list carried in an object: {"events": [...], "hash_algo": ...} (the
// events of a TRT-LLM KvCacheEventReport, with is_full_snapshot).
type wrapper struct {
	Events   []wire `json:"events"`
	HashAlgo string `json:"hash_algo"`
	Snapshot bool   `json:"is_full_snapshot"`
}

// Decode decodes one /kv_cache_events response: a JSON array of events, or an object with
// an "events" array (and optionally "hash_algo" and "is_full_snapshot"). Event kinds:
// "stored" (BlockStored: the blocks' hashes and tokens, parent_hash, cache level 1 as medium
// "CPU"), "removed" (BlockRemoved from the GPU, and from the CPU once the engine has used
// it), "updated" with a cache-level change (the block moves: removed from one medium, a
// token-less store on the other), "created" (the engine started: AllBlocksCleared once),
// "all_cleared". Events of an attention window other than the largest one announced at
// start-up are skipped (their blocks repeat the same tokens), as are priority-only updates.
// An unknown event type or hash algorithm is an error, and the whole list is refused: the
// caller clears the engine's state. Decode never panics.
func (d *Decoder) Decode(payload []byte) (Result, error) {
	var res Result
	evs, top, snapshot, err := split(payload)
	if err != nil {
		return res, fmt.Errorf("trtllm: decode KV events: %w", err)
	}
	if d.lastID == nil {
		d.lastID = map[int]int64{}
	}
	out := make([]engine.Event, 0, len(evs))
	if snapshot {
		out = append(out, engine.Event{Kind: engine.AllBlocksCleared})
	}
	rank := -1
	mixed := false
	// Validate everything before touching the decoder's state: a refused list changes nothing.
	datas := make([]*wireData, len(evs))
	for i := range evs {
		datas[i] = evs[i].Data
		if datas[i] == nil {
			datas[i] = &evs[i].wireData
		}
		algo := firstNonEmpty(evs[i].HashAlgo, datas[i].HashAlgo, top, HashV1)
		if err := checkAlgo(algo); err != nil {
			return res, fmt.Errorf("trtllm: decode KV events: event %d: %w", i, err)
		}
		evs[i].HashAlgo = algo
		switch datas[i].Type {
		case "stored", "removed", "updated", "created", "all_cleared":
		default:
			return res, fmt.Errorf("trtllm: decode KV events: event %d: unknown event type %q (known: stored, removed, updated, created, all_cleared)", i, datas[i].Type)
		}
	}
	conv := make([][]engine.Event, len(evs))
	for i := range evs {
		var err error
		if conv[i], err = d.convert(&evs[i], datas[i]); err != nil {
			return res, fmt.Errorf("trtllm: decode KV events: event %d (%s): %w", i, datas[i].Type, err)
		}
	}
	// Commit: ids, windows, events.
	for i := range evs {
		ev, data := &evs[i], datas[i]
		r := 0
		if ev.DPRank != nil {
			r = *ev.DPRank
		}
		if rank == -1 {
			rank = r
		} else if rank != r {
			mixed = true
		}
		if ev.EventID != nil {
			id := *ev.EventID
			last, seen := d.lastID[r]
			switch {
			case !seen && id != 0 && data.Type != "created" && !res.Gap:
				// Joined after the engine had published: it may hold blocks we never saw.
				res.Gap, res.ExpectedID, res.GotID = true, 0, id
			case seen && id != last+1 && !res.Gap:
				res.Gap, res.ExpectedID, res.GotID = true, last+1, id
			}
			d.lastID[r] = id
		}
		if data.Type == "created" {
			// The engine announces its pools at start-up, one event per attention window:
			// whatever was known about its cache is gone.
			if d.started {
				d.maxWindow, d.started, d.secondary = 0, false, false
			}
			if !d.announced {
				out = append(out, engine.Event{Kind: engine.AllBlocksCleared})
				d.announced = true
			}
			if ev.WindowSize != nil {
				d.maxWindow = max(d.maxWindow, *ev.WindowSize)
			}
			continue
		}
		d.announced = false
		d.started = true
		if ev.WindowSize != nil && d.maxWindow > 0 && *ev.WindowSize != d.maxWindow {
			continue
		}
		for _, e := range conv[i] {
			if e.Medium == MediumCPU {
				d.secondary = true
			}
		}
		if data.Type == "removed" && d.secondary && len(conv[i]) > 0 {
			// A removed block leaves the engine's reuse tree on whichever level it was.
			cpu := conv[i][0]
			cpu.Medium = MediumCPU
			conv[i] = append(conv[i], cpu)
		}
		out = append(out, conv[i]...)
	}
	res.Batch.Events = out
	if rank >= 0 && !mixed && rank != 0 {
		res.Batch.DPRank = &rank
	}
	return res, nil
}

func firstNonEmpty(ss ...string) string {
	for _, s := range ss {
		if s != "" {
			return s
		}
	}
	return ""
}

// checkAlgo refuses a hash algorithm kvgate does not know: its hashes could not be compared
// with those of removals and moves.
func checkAlgo(algo string) error {
	switch algo {
	case HashV1, HashV2SHA256, HashV2SHA256x64:
		return nil
	}
	return fmt.Errorf("unknown hash_algo %q (known: %s, %s, %s)", algo, HashV1, HashV2SHA256, HashV2SHA256x64)
}

// split returns the raw events of payload, the list-level hash algorithm and whether the
// list is a full snapshot.
func split(payload []byte) ([]wire, string, bool, error) {
	p := bytes.TrimSpace(payload)
	if len(p) == 0 {
		return nil, "", false, errors.New("empty body, want a JSON array of events")
	}
	switch p[0] {
	case '[':
		var evs []wire
		if err := strictUnmarshal(p, &evs); err != nil {
			return nil, "", false, err
		}
		return evs, "", false, nil
	case '{':
		var w wrapper
		if err := strictUnmarshal(p, &w); err != nil {
			return nil, "", false, err
		}
		if w.Events == nil {
			return nil, "", false, errors.New(`object without "events"`)
		}
		if w.HashAlgo != "" {
			if err := checkAlgo(w.HashAlgo); err != nil {
				return nil, "", false, err
			}
		}
		return w.Events, w.HashAlgo, w.Snapshot, nil
	case 'n':
		if string(p) == "null" { // trtllm-serve answers null when events are off
			return nil, "", false, nil
		}
	}
	return nil, "", false, fmt.Errorf("body starts with %q, want a JSON array of events", p[0])
}

func strictUnmarshal(b []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if dec.More() {
		return errors.New("trailing data")
	}
	return nil
}

// convert maps one event to kvgate's events; it does not change d.
func (d *Decoder) convert(ev *wire, data *wireData) ([]engine.Event, error) {
	switch data.Type {
	case "stored":
		return d.stored(ev.HashAlgo, data)
	case "removed":
		hs := make([]engine.BlockHash, 0, len(data.Hashes))
		for j, raw := range data.Hashes {
			h, err := parseHash(ev.HashAlgo, raw)
			if err != nil {
				return nil, fmt.Errorf("block_hashes[%d]: %w", j, err)
			}
			hs = append(hs, h)
		}
		if len(hs) == 0 {
			return nil, nil
		}
		return []engine.Event{{Kind: engine.BlockRemoved, BlockHashes: hs, Medium: engine.MediumGPU}}, nil
	case "updated":
		if data.CacheLevel == nil || data.CacheLevel.Old == nil || data.CacheLevel.New == nil ||
			*data.CacheLevel.Old == *data.CacheLevel.New {
			return nil, nil // a priority change: nothing the router tracks
		}
		h, err := parseHash(ev.HashAlgo, data.BlockHash)
		if err != nil {
			return nil, fmt.Errorf("block_hash: %w", err)
		}
		from, err := medium(*data.CacheLevel.Old)
		if err != nil {
			return nil, err
		}
		to, err := medium(*data.CacheLevel.New)
		if err != nil {
			return nil, err
		}
		return []engine.Event{
			{Kind: engine.BlockStored, BlockHashes: []engine.BlockHash{h}, Medium: to, BlockSize: d.BlockSize},
			{Kind: engine.BlockRemoved, BlockHashes: []engine.BlockHash{h}, Medium: from},
		}, nil
	case "all_cleared":
		return []engine.Event{{Kind: engine.AllBlocksCleared}}, nil
	}
	return nil, nil
}

func medium(level int) (string, error) {
	switch level {
	case levelPrimary:
		return engine.MediumGPU, nil
	case levelSecondary:
		return MediumCPU, nil
	}
	return "", fmt.Errorf("unknown cache level %d (0 primary, 1 secondary)", level)
}

// stored turns a "stored" event into BlockStored events, one per run of blocks on the same
// cache level, each block's tokens concatenated; partial blocks are dropped.
func (d *Decoder) stored(algo string, data *wireData) ([]engine.Event, error) {
	var parent engine.BlockHash
	if len(data.ParentHash) > 0 && string(data.ParentHash) != "null" {
		var err error
		if parent, err = parseHash(algo, data.ParentHash); err != nil {
			return nil, fmt.Errorf("parent_hash: %w", err)
		}
	}
	bs := d.BlockSize
	if bs <= 0 {
		for _, b := range data.Blocks {
			bs = max(bs, len(b.Tokens))
		}
	}
	var out []engine.Event
	for j := range data.Blocks {
		b := &data.Blocks[j]
		h, err := parseHash(algo, b.BlockHash)
		if err != nil {
			return nil, fmt.Errorf("blocks[%d].block_hash: %w", j, err)
		}
		level := levelPrimary
		if b.CacheLevel != nil {
			level = *b.CacheLevel
		}
		med, err := medium(level)
		if err != nil {
			return nil, fmt.Errorf("blocks[%d]: %w", j, err)
		}
		if len(b.Tokens) != bs {
			// A partial block (the tail of a prompt): not reusable by another prompt's
			// blocks, and it ends the chain kvgate can follow.
			break
		}
		if len(out) == 0 || out[len(out)-1].Medium != med || !sameLoRA(out[len(out)-1].LoRAID, b.LoRAID) {
			p := parent
			if len(out) > 0 {
				last := out[len(out)-1].BlockHashes
				p = last[len(last)-1]
			}
			out = append(out, engine.Event{Kind: engine.BlockStored, Parent: p, BlockSize: bs, Medium: med, LoRAID: b.LoRAID})
		}
		e := &out[len(out)-1]
		e.BlockHashes = append(e.BlockHashes, h)
		for k, t := range b.Tokens {
			if !t.TokenID.set {
				return nil, fmt.Errorf("blocks[%d].tokens[%d]: token_id missing", j, k)
			}
			e.TokenIDs = append(e.TokenIDs, uint32(t.TokenID.v))
		}
	}
	return out, nil
}

func sameLoRA(a, b *int) bool {
	if a == nil || b == nil {
		return a == b
	}
	return *a == *b
}

// parseHash reads one block hash of the given algorithm: an integer (v1_block_key,
// v2_sha256_64; negative values as their 64-bit two's complement) as 8 bytes, a v2_sha256
// hex string as its 32 bytes.
func parseHash(algo string, raw json.RawMessage) (engine.BlockHash, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || string(raw) == "null" {
		return "", errors.New("missing")
	}
	if algo == HashV2SHA256 {
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return "", fmt.Errorf("%s hash %s is not a hex string", algo, clip(raw))
		}
		b, err := hex.DecodeString(s)
		if err != nil || len(b) != 32 {
			return "", fmt.Errorf("%s hash %q is not 64 hex digits", algo, clip([]byte(s)))
		}
		return engine.BlockHash(b), nil
	}
	s := string(raw)
	if u, err := strconv.ParseUint(s, 10, 64); err == nil {
		return engine.HashFromUint64(u), nil
	}
	if i, err := strconv.ParseInt(s, 10, 64); err == nil {
		var b [8]byte
		binary.BigEndian.PutUint64(b[:], uint64(i))
		return engine.BlockHash(b[:]), nil
	}
	return "", fmt.Errorf("%s hash %s is not a 64-bit integer", algo, clip(raw))
}

func clip(b []byte) string {
	if len(b) > 40 {
		return string(b[:40]) + "..."
	}
	return string(b)
}
