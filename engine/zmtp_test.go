package engine

import (
	"encoding/binary"
	"errors"
	"testing"

	"github.com/go-zeromq/zmq4"
)

func fuzzGreeting() []byte {
	g := make([]byte, greetingLen)
	g[0], g[9], g[10] = 0xff, 0x7f, 3
	copy(g[12:], "NULL")
	return g
}

func fuzzReady(typ string) []byte {
	b := append([]byte{5}, "READY"...)
	b = append(b, 11)
	b = append(b, "Socket-Type"...)
	b = binary.BigEndian.AppendUint32(b, uint32(len(typ)))
	b = append(b, typ...)
	return append([]byte{flagCommand, byte(len(b))}, b...)
}

// FuzzFrameReader feeds the ZMTP frame reader arbitrary streams, whole and in pieces of
// every size: it never panics, the pieces change nothing, and what it accepts holds no
// frame above the limit.
func FuzzFrameReader(f *testing.F) {
	valid := append(fuzzGreeting(), fuzzReady("PUB")...)
	valid = append(valid, 0x01, 2, 'k', 'v', 0x01, 8, 0, 0, 0, 0, 0, 0, 0, 1, 0x00, 1, 0x90)
	f.Add(valid, uint8(0), false)
	f.Add(valid, uint8(3), false)
	f.Add(append(append(fuzzGreeting(), fuzzReady("SUB")...), 0x00, 3, 1, 'k', 'v'), uint8(1), true)
	f.Add(append(append(fuzzGreeting(), fuzzReady("PUB")...), binary.BigEndian.AppendUint64([]byte{flagLong}, 1<<62)...), uint8(2), false)
	f.Add(append(fuzzGreeting(), flagCommand, 9, 5, 'R', 'E', 'A', 'D', 'Y', 3, 'a', 'b'), uint8(5), false)
	f.Add(append(fuzzGreeting(), 0xff), uint8(0), false)
	const limit = 1 << 12
	f.Fuzz(func(t *testing.T, data []byte, split uint8, pub bool) {
		self := zmq4.Sub
		if pub {
			self = zmq4.Pub
		}
		lim := ZMQLimits{MaxMessage: limit}
		whole := newFrameReader(self, lim)
		errWhole := whole.feed(data)

		pieces := newFrameReader(self, lim)
		var errPieces error
		for p, n := data, int(split)%7+1; len(p) > 0 && errPieces == nil; p = p[min(n, len(p)):] {
			errPieces = pieces.feed(p[:min(n, len(p))])
		}
		if reason(errWhole) != reason(errPieces) {
			t.Fatalf("whole: %v; in pieces of %d: %v", errWhole, int(split)%7+1, errPieces)
		}
		if errWhole != nil {
			return
		}
		if whole.state != pieces.state || whole.left != pieces.left || whole.msgSize != pieces.msgSize || whole.ready != pieces.ready {
			t.Fatalf("states differ: %+v vs %+v", whole, pieces)
		}
		// An accepted stream holds no frame above the limit.
		for p := data[min(greetingLen, len(data)):]; len(p) >= 2; {
			size, hdr := uint64(p[1]), 2
			if p[0]&flagLong != 0 {
				if len(p) < 9 {
					break
				}
				size, hdr = binary.BigEndian.Uint64(p[1:9]), 9
			}
			if size > limit {
				t.Fatalf("accepted a frame of %d bytes, limit %d", size, limit)
			}
			if uint64(len(p)-hdr) < size {
				break
			}
			p = p[hdr+int(size):]
		}
	})
}

func reason(err error) string {
	var ze *zmtpError
	if errors.As(err, &ze) {
		return ze.reason
	}
	if err != nil {
		return "other: " + err.Error()
	}
	return ""
}

// BenchmarkFrameReader times the guard on the receive path against what a subscriber already
// does with every batch (decoding it), in the same run: a stream of [topic, seq, payload]
// messages with a 16-event, 4,096-token batch, fed in 32 KiB reads.
func BenchmarkFrameReader(b *testing.B) {
	batch := EventBatch{TS: 1}
	for e := range 16 {
		ev := Event{Kind: BlockStored, BlockSize: 16, Medium: "GPU"}
		for blk := range 16 {
			ev.BlockHashes = append(ev.BlockHashes, HashFromUint64(uint64(e*16+blk+1)*0x9e3779b97f4a7c15))
			for t := range 16 {
				ev.TokenIDs = append(ev.TokenIDs, uint32((e*256+blk*16+t)*7919%151000))
			}
		}
		batch.Events = append(batch.Events, ev)
	}
	payload, err := EncodeBatch(batch, ShapeMap, HashInt)
	if err != nil {
		b.Fatal(err)
	}
	frame := func(more bool, body []byte) []byte {
		fl := byte(0)
		if more {
			fl = flagMore
		}
		if len(body) > 255 {
			return append(binary.BigEndian.AppendUint64([]byte{fl | flagLong}, uint64(len(body))), body...)
		}
		return append([]byte{fl, byte(len(body))}, body...)
	}
	var msg []byte
	msg = append(msg, frame(true, []byte("kv"))...)
	msg = append(msg, frame(true, make([]byte, 8))...)
	msg = append(msg, frame(false, payload)...)
	const perStream = 256
	stream := append(fuzzGreeting(), fuzzReady("PUB")...)
	head := len(stream)
	for range perStream {
		stream = append(stream, msg...)
	}
	b.Run("guard", func(b *testing.B) {
		b.SetBytes(int64(len(msg)))
		b.ReportAllocs()
		for i := 0; i < b.N; i += perStream {
			z := newFrameReader(zmq4.Sub, ZMQLimits{})
			if err := z.feed(stream[:head]); err != nil {
				b.Fatal(err)
			}
			for p := stream[head:]; len(p) > 0; p = p[min(len(p), 32<<10):] {
				if err := z.feed(p[:min(len(p), 32<<10)]); err != nil {
					b.Fatal(err)
				}
			}
		}
	})
	b.Run("decode", func(b *testing.B) {
		b.SetBytes(int64(len(msg)))
		b.ReportAllocs()
		for b.Loop() {
			if _, err := DecodeBatch(payload); err != nil {
				b.Fatal(err)
			}
		}
	})
}
