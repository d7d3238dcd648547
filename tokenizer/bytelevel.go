package tokenizer

import "unicode/utf8"

// byteChar is GPT-2's bytes_to_unicode: printable Latin-1 bytes map to themselves, the others
// to U+0100 onwards, so that every byte is a visible character in the vocabulary.
var byteChar, charByte = func() ([256]rune, map[rune]byte) {
	var bc [256]rune
	cb := make(map[rune]byte, 256)
	n := 0
	for b := 0; b < 256; b++ {
		if (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF) {
			bc[b] = rune(b)
		} else {
			bc[b] = rune(256 + n)
			n++
		}
		cb[bc[b]] = byte(b)
	}
	return bc, cb
}()

// appendByteLevel appends the byte-level form of s (each byte as its character) to dst.
func appendByteLevel(dst []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		dst = utf8.AppendRune(dst, byteChar[s[i]])
	}
	return dst
}

// fromByteLevel appends the bytes of byte-level characters s to dst; ok is false when s holds
// a character outside the alphabet (dst is then partly written).
func fromByteLevel(dst []byte, s string) ([]byte, bool) {
	for _, r := range s {
		b, ok := charByte[r]
		if !ok {
			return dst, false
		}
		dst = append(dst, b)
	}
	return dst, true
}
