package kvindex_test

import (
	"encoding/binary"
	"testing"

	"github.com/kvgate/kvgate/kvindex"
	"github.com/zeebo/xxh3"
)

func TestHashBlocks(t *testing.T) {
	toks := make([]uint32, 50)
	for i := range toks {
		toks[i] = uint32(i * 7)
	}
	tests := []struct {
		name      string
		blockSize int
		want      int
	}{
		{"partial trailing block dropped", 16, 3},
		{"exact multiple", 10, 5},
		{"block larger than prompt", 64, 0},
		{"zero block size", 0, 0},
		{"negative block size", -1, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := kvindex.HashBlocks(nil, 0, toks, tc.blockSize)
			if len(got) != tc.want {
				t.Fatalf("got %d hashes, want %d", len(got), tc.want)
			}
			for i, h := range got {
				if w := kvindex.HashBlock(0, toks[i*tc.blockSize:(i+1)*tc.blockSize]); h != w {
					t.Fatalf("block %d: %x, want HashBlock %x", i, h, w)
				}
			}
		})
	}
}

func TestHashBlockDefinition(t *testing.T) {
	// The hash is xxh3 over the tokens' little-endian uint32 encoding under
	// the seed; other implementations (replay tools, tests) can reproduce it.
	toks := []uint32{1, 0x01020304, 0xffffffff}
	b := make([]byte, 0, 12)
	for _, x := range toks {
		b = binary.LittleEndian.AppendUint32(b, x)
	}
	for _, seed := range []uint64{0, 1, kvindex.Seed("lora")} {
		if got, want := kvindex.HashBlock(seed, toks), kvindex.BlockHash(xxh3.HashSeed(b, seed)); got != want {
			t.Fatalf("seed %d: %x, want %x", seed, got, want)
		}
	}
	if kvindex.HashBlock(0, toks) == kvindex.HashBlock(kvindex.Seed("lora"), toks) {
		t.Fatal("a LoRA seed must change the hash")
	}
	if kvindex.HashBlock(0, []uint32{1, 2}) == kvindex.HashBlock(0, []uint32{2, 1}) {
		t.Fatal("token order must change the hash")
	}
}

func TestHashBlocksNoAlloc(t *testing.T) {
	toks := make([]uint32, 4096)
	dst := make([]kvindex.BlockHash, 0, 256)
	if n := testing.AllocsPerRun(20, func() { dst = kvindex.HashBlocks(dst[:0], 0, toks, 16) }); n != 0 {
		t.Fatalf("HashBlocks allocates %v times with room in dst", n)
	}
}

func TestSeed(t *testing.T) {
	tests := []struct {
		name string
		a, b uint64
		same bool
	}{
		{"no lora no keys is zero", kvindex.Seed(""), 0, true},
		{"deterministic", kvindex.Seed("a", "k"), kvindex.Seed("a", "k"), true},
		{"lora differs from none", kvindex.Seed("a"), 0, false},
		{"extra key alone differs from none", kvindex.Seed("", "img1"), 0, false},
		{"lora vs extra key", kvindex.Seed("a"), kvindex.Seed("", "a"), false},
		{"key boundaries matter", kvindex.Seed("", "ab", "c"), kvindex.Seed("", "a", "bc"), false},
		{"empty extra key counts", kvindex.Seed("a", ""), kvindex.Seed("a"), false},
		{"different loras", kvindex.Seed("a"), kvindex.Seed("b"), false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if (tc.a == tc.b) != tc.same {
				t.Fatalf("%x vs %x: same=%v, want %v", tc.a, tc.b, tc.a == tc.b, tc.same)
			}
		})
	}
}

func TestExternalFromBytes(t *testing.T) {
	tests := []struct {
		name string
		in   []byte
		want kvindex.ExternalHash
	}{
		{"8 bytes big-endian", []byte{1, 2, 3, 4, 5, 6, 7, 8}, 0x0102030405060708},
		{"32-byte sha256 hashed", make([]byte, 32), kvindex.ExternalHash(xxh3.Hash(make([]byte, 32)))},
		{"empty hashed", nil, kvindex.ExternalHash(xxh3.Hash(nil))},
		{"4 bytes hashed", []byte{0, 0, 0, 1}, kvindex.ExternalHash(xxh3.Hash([]byte{0, 0, 0, 1}))},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := kvindex.ExternalFromBytes(tc.in); got != tc.want {
				t.Fatalf("got %x, want %x", got, tc.want)
			}
		})
	}
}

func TestTierFromMedium(t *testing.T) {
	tests := []struct {
		medium string
		want   kvindex.Tier
	}{
		{"", kvindex.TierGPU}, {"GPU", kvindex.TierGPU}, {"gpu", kvindex.TierGPU},
		{"cuda", kvindex.TierGPU}, {"cuda:1", kvindex.TierGPU},
		{"CPU", kvindex.TierCPU}, {"cpu", kvindex.TierCPU},
		{"DISK", kvindex.TierDisk}, {"disk", kvindex.TierDisk}, {"LocalDisk", kvindex.TierDisk},
		{"lmcache", kvindex.TierDisk}, {"cud", kvindex.TierDisk},
	}
	for _, tc := range tests {
		t.Run(tc.medium, func(t *testing.T) {
			if got := kvindex.TierFromMedium(tc.medium); got != tc.want {
				t.Fatalf("TierFromMedium(%q) = %v, want %v", tc.medium, got, tc.want)
			}
		})
	}
	for tier, s := range map[kvindex.Tier]string{kvindex.TierGPU: "gpu", kvindex.TierCPU: "cpu", kvindex.TierDisk: "disk", 9: "tier(9)"} {
		if tier.String() != s {
			t.Errorf("Tier(%d).String() = %q, want %q", tier, tier.String(), s)
		}
	}
}
