package router

import (
	"bytes"
	"unsafe"

	"github.com/kvgate/kvgate/tokenizer"
)

// maxPooledTokens and maxPooledText bound the buffers kept for reuse (1 MiB each): a rare
// huge prompt's buffer is left to the garbage collector rather than held.
const (
	maxPooledTokens = 1 << 18
	maxPooledText   = 1 << 20
)

// renderPooled renders a chat into a text buffer of the router's pool and returns it with
// the text, a string that shares its bytes; the caller hands the buffer back with putText
// once nothing reads the text (a decision keeps none: p.Text is hashed, not stored).
func (r *Router) renderPooled(tok *tokenizer.Tokenizer, in tokenizer.ChatInput) (*[]byte, string, error) {
	buf, _ := r.textBufs.Get().(*[]byte)
	if buf == nil {
		buf = new([]byte)
	}
	b, err := tok.AppendRenderChat((*buf)[:0], in)
	*buf = b
	return buf, unsafe.String(unsafe.SliceData(b), len(b)), err
}

// putText returns a buffer of renderPooled to the pool.
func (r *Router) putText(buf *[]byte) {
	if cap(*buf) <= maxPooledText {
		r.textBufs.Put(buf)
	}
}

// encodePooled encodes text into a token buffer of the router's pool and returns it; the
// caller hands it back with putTokens once nothing reads the ids (a decision keeps none).
// Every byte a decision allocates costs a share of a garbage-collection cycle over the
// router's heap (the tokenizer's included), so the ids of a 4k-token prompt are not
// allocated anew for each request.
func (r *Router) encodePooled(tok *tokenizer.Tokenizer, text string) *[]uint32 {
	buf, _ := r.tokenBufs.Get().(*[]uint32)
	if buf == nil {
		buf = new([]uint32)
	}
	*buf = tok.AppendEncode((*buf)[:0], text)
	return buf
}

// putTokens returns a buffer of encodePooled to the pool.
func (r *Router) putTokens(buf *[]uint32) {
	if cap(*buf) <= maxPooledTokens {
		r.tokenBufs.Put(buf)
	}
}

// containsOutside is bytes.Contains(body, key) for an inner subslice of body that cannot
// hold a part of an occurrence (key holds neither inner's first nor its last byte, so an
// occurrence is wholly inside inner or wholly outside), when the caller's answer does not
// depend on occurrences inside inner: the large messages array of a chat body is not
// searched. If inner is not a subslice of body it searches all of body.
func containsOutside(body, inner, key []byte) bool {
	off := cap(body) - cap(inner)
	if len(inner) == 0 || off < 0 || off+len(inner) > len(body) || &body[off] != &inner[0] ||
		bytes.IndexByte(key, inner[0]) >= 0 || bytes.IndexByte(key, inner[len(inner)-1]) >= 0 {
		return bytes.Contains(body, key)
	}
	return bytes.Contains(body[:off], key) || bytes.Contains(body[off+len(inner):], key)
}
