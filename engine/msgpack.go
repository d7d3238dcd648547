package engine

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
)

// This file is a small msgpack reader and writer over byte slices: the KV-event
// codec needs a handful of types, exact control of the bytes written (to match
// msgspec byte for byte) and a bound on every length read from the wire, which
// a slice reader gives for free: no length can exceed the bytes left.

var errShort = errors.New("unexpected end of payload")

// maxDepth bounds the nesting of values the codec skips or flattens.
const maxDepth = 32

type reader struct {
	b   []byte
	off int
}

func (r *reader) remaining() int { return len(r.b) - r.off }

func (r *reader) peek() (byte, error) {
	if r.off >= len(r.b) {
		return 0, errShort
	}
	return r.b[r.off], nil
}

func (r *reader) next(n int) ([]byte, error) {
	if n < 0 || n > r.remaining() {
		return nil, errShort
	}
	p := r.b[r.off : r.off+n]
	r.off += n
	return p, nil
}

func (r *reader) u8() (byte, error) {
	p, err := r.next(1)
	if err != nil {
		return 0, err
	}
	return p[0], nil
}

// length reads a big-endian length of size bytes and checks that at least
// min(length, limit) bytes could follow: every element takes one byte or more.
func (r *reader) length(size int, perElem int) (int, error) {
	p, err := r.next(size)
	if err != nil {
		return 0, err
	}
	var n uint64
	switch size {
	case 1:
		n = uint64(p[0])
	case 2:
		n = uint64(binary.BigEndian.Uint16(p))
	case 4:
		n = uint64(binary.BigEndian.Uint32(p))
	}
	if n*uint64(perElem) > uint64(r.remaining()) {
		return 0, fmt.Errorf("length %d exceeds the %d bytes left", n, r.remaining())
	}
	return int(n), nil
}

// typeName names the msgpack type of a leading byte, for errors.
func typeName(c byte) string {
	switch {
	case c <= 0x7f || c >= 0xe0 || (c >= 0xcc && c <= 0xd3):
		return "int"
	case c <= 0x8f || c == 0xde || c == 0xdf:
		return "map"
	case c <= 0x9f || c == 0xdc || c == 0xdd:
		return "array"
	case c <= 0xbf || (c >= 0xd9 && c <= 0xdb):
		return "str"
	case c == 0xc0:
		return "nil"
	case c == 0xc2 || c == 0xc3:
		return "bool"
	case c >= 0xc4 && c <= 0xc6:
		return "bin"
	case c == 0xca || c == 0xcb:
		return "float"
	case (c >= 0xc7 && c <= 0xc9) || (c >= 0xd4 && c <= 0xd8):
		return "ext"
	}
	return fmt.Sprintf("invalid(0x%02x)", c)
}

func isArray(c byte) bool { return (c >= 0x90 && c <= 0x9f) || c == 0xdc || c == 0xdd }
func isMap(c byte) bool   { return (c >= 0x80 && c <= 0x8f) || c == 0xde || c == 0xdf }
func isInt(c byte) bool   { return c <= 0x7f || c >= 0xe0 || (c >= 0xcc && c <= 0xd3) }
func isStr(c byte) bool   { return (c >= 0xa0 && c <= 0xbf) || (c >= 0xd9 && c <= 0xdb) }
func isBin(c byte) bool   { return c >= 0xc4 && c <= 0xc6 }

// nilNext consumes a nil and reports true, or leaves a non-nil in place.
func (r *reader) nilNext() (bool, error) {
	c, err := r.peek()
	if err != nil {
		return false, err
	}
	if c == 0xc0 {
		r.off++
		return true, nil
	}
	return false, nil
}

func (r *reader) arrayLen() (int, error) {
	c, err := r.u8()
	if err != nil {
		return 0, err
	}
	switch {
	case c >= 0x90 && c <= 0x9f:
		n := int(c & 0x0f)
		if n > r.remaining() {
			return 0, errShort
		}
		return n, nil
	case c == 0xdc:
		return r.length(2, 1)
	case c == 0xdd:
		return r.length(4, 1)
	}
	r.off--
	return 0, fmt.Errorf("got %s, want array", typeName(c))
}

func (r *reader) mapLen() (int, error) {
	c, err := r.u8()
	if err != nil {
		return 0, err
	}
	switch {
	case c >= 0x80 && c <= 0x8f:
		n := int(c & 0x0f)
		if 2*n > r.remaining() {
			return 0, errShort
		}
		return n, nil
	case c == 0xde:
		return r.length(2, 2)
	case c == 0xdf:
		return r.length(4, 2)
	}
	r.off--
	return 0, fmt.Errorf("got %s, want map", typeName(c))
}

// str reads a str and returns a view into the payload.
func (r *reader) str() ([]byte, error) {
	c, err := r.u8()
	if err != nil {
		return nil, err
	}
	var n int
	switch {
	case c >= 0xa0 && c <= 0xbf:
		n = int(c & 0x1f)
	case c == 0xd9:
		n, err = r.length(1, 1)
	case c == 0xda:
		n, err = r.length(2, 1)
	case c == 0xdb:
		n, err = r.length(4, 1)
	default:
		r.off--
		return nil, fmt.Errorf("got %s, want str", typeName(c))
	}
	if err != nil {
		return nil, err
	}
	return r.next(n)
}

// strOrBin reads a str or a bin and returns a view into the payload.
func (r *reader) strOrBin() ([]byte, error) {
	c, err := r.peek()
	if err != nil {
		return nil, err
	}
	if !isBin(c) {
		return r.str()
	}
	r.off++
	var n int
	switch c {
	case 0xc4:
		n, err = r.length(1, 1)
	case 0xc5:
		n, err = r.length(2, 1)
	default:
		n, err = r.length(4, 1)
	}
	if err != nil {
		return nil, err
	}
	return r.next(n)
}

// integer reads any msgpack integer. For a negative value neg is true and v
// holds its two's-complement bits.
func (r *reader) integer() (v uint64, neg bool, err error) {
	c, err := r.u8()
	if err != nil {
		return 0, false, err
	}
	switch {
	case c <= 0x7f:
		return uint64(c), false, nil
	case c >= 0xe0:
		return uint64(int64(int8(c))), true, nil
	}
	var p []byte
	switch c {
	case 0xcc, 0xd0:
		p, err = r.next(1)
	case 0xcd, 0xd1:
		p, err = r.next(2)
	case 0xce, 0xd2:
		p, err = r.next(4)
	case 0xcf, 0xd3:
		p, err = r.next(8)
	default:
		r.off--
		return 0, false, fmt.Errorf("got %s, want int", typeName(c))
	}
	if err != nil {
		return 0, false, err
	}
	switch c {
	case 0xcc:
		return uint64(p[0]), false, nil
	case 0xcd:
		return uint64(binary.BigEndian.Uint16(p)), false, nil
	case 0xce:
		return uint64(binary.BigEndian.Uint32(p)), false, nil
	case 0xcf:
		return binary.BigEndian.Uint64(p), false, nil
	case 0xd0:
		s := int64(int8(p[0]))
		return uint64(s), s < 0, nil
	case 0xd1:
		s := int64(int16(binary.BigEndian.Uint16(p)))
		return uint64(s), s < 0, nil
	case 0xd2:
		s := int64(int32(binary.BigEndian.Uint32(p)))
		return uint64(s), s < 0, nil
	default:
		s := int64(binary.BigEndian.Uint64(p))
		return uint64(s), s < 0, nil
	}
}

// int64Val reads an integer that must fit an int64.
func (r *reader) int64Val() (int64, error) {
	v, neg, err := r.integer()
	if err != nil {
		return 0, err
	}
	if !neg && v > math.MaxInt64 {
		return 0, fmt.Errorf("integer %d overflows int64", v)
	}
	return int64(v), nil
}

// float reads a float32, float64 or integer as a float64.
func (r *reader) float() (float64, error) {
	c, err := r.peek()
	if err != nil {
		return 0, err
	}
	switch c {
	case 0xca:
		r.off++
		p, err := r.next(4)
		if err != nil {
			return 0, err
		}
		return float64(math.Float32frombits(binary.BigEndian.Uint32(p))), nil
	case 0xcb:
		r.off++
		p, err := r.next(8)
		if err != nil {
			return 0, err
		}
		return math.Float64frombits(binary.BigEndian.Uint64(p)), nil
	}
	if isInt(c) {
		v, neg, err := r.integer()
		if neg {
			return float64(int64(v)), err
		}
		return float64(v), err
	}
	return 0, fmt.Errorf("got %s, want float", typeName(c))
}

// skip consumes one value of any type.
func (r *reader) skip(depth int) error {
	if depth > maxDepth {
		return fmt.Errorf("nesting deeper than %d", maxDepth)
	}
	c, err := r.peek()
	if err != nil {
		return err
	}
	switch {
	case isArray(c):
		n, err := r.arrayLen()
		if err != nil {
			return err
		}
		for range n {
			if err := r.skip(depth + 1); err != nil {
				return err
			}
		}
		return nil
	case isMap(c):
		n, err := r.mapLen()
		if err != nil {
			return err
		}
		for range 2 * n {
			if err := r.skip(depth + 1); err != nil {
				return err
			}
		}
		return nil
	case isInt(c):
		_, _, err := r.integer()
		return err
	case isStr(c) || isBin(c):
		_, err := r.strOrBin()
		return err
	case c == 0xc0 || c == 0xc2 || c == 0xc3:
		r.off++
		return nil
	case c == 0xca || c == 0xcb:
		_, err := r.float()
		return err
	}
	r.off++
	var size int
	switch c {
	case 0xd4, 0xd5, 0xd6, 0xd7, 0xd8: // fixext: type byte + 1, 2, 4, 8, 16 bytes
		size = 1 + 1<<(c-0xd4)
	case 0xc7, 0xc8, 0xc9:
		n, err := r.length(1<<(c-0xc7), 1) // ext8/16/32: 1, 2, 4 length bytes
		if err != nil {
			return err
		}
		size = 1 + n
	default:
		r.off--
		return fmt.Errorf("invalid msgpack byte 0x%02x", c)
	}
	_, err = r.next(size)
	return err
}

// Writer side: the smallest encoding for every value, as msgspec writes it.

func appendNil(b []byte) []byte { return append(b, 0xc0) }

func appendUint(b []byte, v uint64) []byte {
	switch {
	case v <= 0x7f:
		return append(b, byte(v))
	case v <= math.MaxUint8:
		return append(b, 0xcc, byte(v))
	case v <= math.MaxUint16:
		return binary.BigEndian.AppendUint16(append(b, 0xcd), uint16(v))
	case v <= math.MaxUint32:
		return binary.BigEndian.AppendUint32(append(b, 0xce), uint32(v))
	}
	return binary.BigEndian.AppendUint64(append(b, 0xcf), v)
}

func appendInt(b []byte, v int64) []byte {
	switch {
	case v >= 0:
		return appendUint(b, uint64(v))
	case v >= -32:
		return append(b, byte(int8(v)))
	case v >= math.MinInt8:
		return append(b, 0xd0, byte(int8(v)))
	case v >= math.MinInt16:
		return binary.BigEndian.AppendUint16(append(b, 0xd1), uint16(int16(v)))
	case v >= math.MinInt32:
		return binary.BigEndian.AppendUint32(append(b, 0xd2), uint32(int32(v)))
	}
	return binary.BigEndian.AppendUint64(append(b, 0xd3), uint64(v))
}

func appendFloat(b []byte, f float64) []byte {
	return binary.BigEndian.AppendUint64(append(b, 0xcb), math.Float64bits(f))
}

func appendStr(b []byte, s string) []byte {
	n := len(s)
	switch {
	case n < 32:
		b = append(b, 0xa0|byte(n))
	case n <= math.MaxUint8:
		b = append(b, 0xd9, byte(n))
	case n <= math.MaxUint16:
		b = binary.BigEndian.AppendUint16(append(b, 0xda), uint16(n))
	default:
		b = binary.BigEndian.AppendUint32(append(b, 0xdb), uint32(n))
	}
	return append(b, s...)
}

func appendBin(b []byte, s string) []byte {
	n := len(s)
	switch {
	case n <= math.MaxUint8:
		b = append(b, 0xc4, byte(n))
	case n <= math.MaxUint16:
		b = binary.BigEndian.AppendUint16(append(b, 0xc5), uint16(n))
	default:
		b = binary.BigEndian.AppendUint32(append(b, 0xc6), uint32(n))
	}
	return append(b, s...)
}

func appendArrayLen(b []byte, n int) []byte {
	switch {
	case n < 16:
		return append(b, 0x90|byte(n))
	case n <= math.MaxUint16:
		return binary.BigEndian.AppendUint16(append(b, 0xdc), uint16(n))
	}
	return binary.BigEndian.AppendUint32(append(b, 0xdd), uint32(n))
}

func appendMapLen(b []byte, n int) []byte {
	switch {
	case n < 16:
		return append(b, 0x80|byte(n))
	case n <= math.MaxUint16:
		return binary.BigEndian.AppendUint16(append(b, 0xde), uint16(n))
	}
	return binary.BigEndian.AppendUint32(append(b, 0xdf), uint32(n))
}
