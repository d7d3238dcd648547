package kvindex

// Block is one cached block as an engine reports it: its external hash and
// the token ids it holds.
type Block struct {
	External ExternalHash
	Tokens   []uint32
}

// Stored says an endpoint now holds Blocks on Tier. The blocks form a chain:
// block i's parent is block i-1, block 0's parent is the block the endpoint
// knows as Parent, or the root when HasParent is false. Each block's node key
// is HashBlock(Seed, block.Tokens), so the chain from the root is the token
// prefix and the engine's own hash function never matters.
type Stored struct {
	Parent    ExternalHash
	HasParent bool
	Blocks    []Block
	Tier      Tier
	Seed      uint64
}

// Removed says an endpoint dropped the named blocks from Tier; copies on
// other tiers stay.
type Removed struct {
	Hashes []ExternalHash
	Tier   Tier
}
