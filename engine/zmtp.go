package engine

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"strings"
	"time"

	"github.com/go-zeromq/zmq4"
)

// Defaults of ZMQLimits.
const (
	DefaultMaxZMQMessage    = 64 << 20 // bytes; a real KV-event batch is kilobytes
	DefaultHandshakeTimeout = 10 * time.Second
	DefaultWriteTimeout     = 10 * time.Second
)

// ZMQLimits bounds what a ZMQ peer may send to a socket of this package. A peer that
// exceeds them has its connection closed (the socket and its other peers carry on) and is
// counted in ZMQMetrics. Zero fields take the defaults.
type ZMQLimits struct {
	// MaxFrame is the largest frame accepted, in bytes (MaxMessage when 0).
	MaxFrame int64
	// MaxMessage is the largest multipart message accepted, in bytes, each frame counted as
	// its body plus frameOverhead (DefaultMaxZMQMessage when 0).
	MaxMessage int64
	// HandshakeTimeout is how long a peer has to complete the ZMTP greeting and NULL
	// handshake (DefaultHandshakeTimeout when 0).
	HandshakeTimeout time.Duration
	// WriteTimeout is how long one write to a peer may block (DefaultWriteTimeout when 0):
	// a peer that stops reading is disconnected instead of stalling the socket (zmq4's PUB
	// writes to its subscribers one after the other, so one that stops reading holds back
	// every other).
	WriteTimeout time.Duration
}

func (l ZMQLimits) withDefaults() ZMQLimits {
	if l.MaxMessage <= 0 {
		l.MaxMessage = DefaultMaxZMQMessage
	}
	if l.MaxFrame <= 0 || l.MaxFrame > l.MaxMessage {
		l.MaxFrame = l.MaxMessage
	}
	if l.HandshakeTimeout <= 0 {
		l.HandshakeTimeout = DefaultHandshakeTimeout
	}
	if l.WriteTimeout <= 0 {
		l.WriteTimeout = DefaultWriteTimeout
	}
	return l
}

const (
	// frameOverhead is what one frame costs besides its body (the slice header and
	// allocation zmq4 spends on it), so a flood of empty frames meets MaxMessage too.
	frameOverhead = 64
	// maxHandshake bounds the peer's READY command (a few hundred bytes in practice).
	maxHandshake = 64 << 10
	// maxSubscribe bounds one subscription message a PUB socket accepts, and
	// maxSubscriptions how many one connection may send.
	maxSubscribe     = 64 << 10
	maxSubscriptions = 10_000
	greetingLen      = 64
)

// Reasons a connection is rejected: the values of the reason label of MetricZMQRejected.
const (
	ReasonFrameTooLarge   = "frame_too_large"
	ReasonMessageTooLarge = "message_too_large"
	ReasonProtocol        = "protocol"    // a malformed greeting, frame or handshake command
	ReasonUnexpected      = "unexpected"  // a message this socket kind never receives
	ReasonHandshake       = "handshake"   // the handshake did not complete in time (or at all)
	ReasonSlowReader      = "slow_reader" // the peer read nothing for WriteTimeout
)

// zmtpError is why a connection was rejected. It is a non-timeout net.Error, so zmq4 treats
// the connection as closed (and a dialing socket re-dials).
type zmtpError struct {
	reason string
	detail string
}

func (e *zmtpError) Error() string   { return "zmtp: " + e.detail }
func (e *zmtpError) Timeout() bool   { return false }
func (e *zmtpError) Temporary() bool { return false }

func reject(reason, format string, args ...any) *zmtpError {
	return &zmtpError{reason: reason, detail: fmt.Sprintf(format, args...)}
}

// frameReader follows the bytes a ZMTP 3 peer sends (greeting, frames) without copying
// them and fails on the first thing zmq4 must not see: a frame or message above the
// limits (zmq4 allocates whatever a header claims, and panics above its maximum slice
// size), a malformed greeting or READY command (zmq4's metadata parser panics on some),
// reserved flag bits, a multi-frame command, or (for a PUB socket) anything but a
// subscription. It is fed the stream in pieces of any size; it is not safe for
// concurrent use.
type frameReader struct {
	maxFrame, maxMsg uint64
	self             zmq4.SocketType // the socket kind reading (its peer's type is checked)

	state   int
	hdr     [greetingLen]byte // the greeting, then a frame's size bytes
	n, need int               // bytes gathered in hdr, bytes wanted
	flags   byte
	left    uint64 // body bytes still to come
	msgSize uint64 // accounted bytes of the message so far
	frames  int    // frames of the message so far
	first   int    // first body byte of the message's first frame, -1 before it
	cmd     []byte // the handshake command's body, gathered
	ready   bool   // the peer's READY has been read: the handshake is done
	subs    int    // subscription messages seen (PUB)
}

const (
	stGreeting = iota
	stFlags
	stSize
	stBody
)

func newFrameReader(self zmq4.SocketType, lim ZMQLimits) *frameReader {
	lim = lim.withDefaults()
	return &frameReader{maxFrame: uint64(lim.MaxFrame), maxMsg: uint64(lim.MaxMessage), self: self,
		need: greetingLen, first: -1}
}

// feed reads the next bytes of the stream.
func (z *frameReader) feed(p []byte) error {
	for len(p) > 0 {
		switch z.state {
		case stGreeting, stSize:
			k := copy(z.hdr[z.n:z.need], p)
			z.n += k
			p = p[k:]
			if z.n < z.need {
				continue
			}
			var err error
			if z.state == stGreeting {
				err = z.greeting()
			} else {
				err = z.size()
			}
			if err != nil {
				return err
			}
		case stFlags:
			if err := z.flag(p[0]); err != nil {
				return err
			}
			p = p[1:]
		case stBody:
			k := len(p)
			if uint64(k) > z.left {
				k = int(z.left)
			}
			if z.first < 0 && k > 0 {
				z.first = int(p[0])
			}
			if z.flags&flagCommand != 0 && !z.ready {
				z.cmd = append(z.cmd, p[:k]...)
			}
			z.left -= uint64(k)
			p = p[k:]
			if z.left == 0 {
				if err := z.endFrame(); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

const (
	flagMore     = 0x01
	flagLong     = 0x02
	flagCommand  = 0x04
	flagReserved = 0xf8
)

func (z *frameReader) greeting() error {
	g := z.hdr[:greetingLen]
	if g[0] != 0xff || g[9] != 0x7f {
		return reject(ReasonProtocol, "not a ZMTP greeting")
	}
	if g[10] < 3 {
		return reject(ReasonProtocol, "ZMTP version %d.%d, want 3 or later", g[10], g[11])
	}
	if mech := bytes.TrimRight(g[12:32], "\x00"); string(mech) != "NULL" {
		return reject(ReasonProtocol, "security mechanism %q, want NULL", mech)
	}
	z.state, z.n = stFlags, 0
	return nil
}

func (z *frameReader) flag(b byte) error {
	if b&flagReserved != 0 {
		return reject(ReasonProtocol, "reserved frame flags 0x%02x", b)
	}
	if b&flagCommand != 0 {
		if b&flagMore != 0 {
			return reject(ReasonProtocol, "multi-frame command")
		}
		if z.frames > 0 {
			return reject(ReasonProtocol, "command inside a multipart message")
		}
	} else if !z.ready {
		return reject(ReasonProtocol, "message before the READY command")
	}
	z.flags, z.state, z.n, z.need = b, stSize, 0, 1
	if b&flagLong != 0 {
		z.need = 8
	}
	return nil
}

func (z *frameReader) size() error {
	size := uint64(z.hdr[0])
	if z.need == 8 {
		size = binary.BigEndian.Uint64(z.hdr[:8])
	}
	max := z.maxFrame
	switch {
	case z.flags&flagCommand != 0 && !z.ready:
		max = maxHandshake
	case z.self == zmq4.Pub:
		max = min(max, maxSubscribe)
	}
	if size > max {
		return reject(ReasonFrameTooLarge, "frame of %d bytes, limit %d", size, max)
	}
	if z.msgSize += size + frameOverhead; z.msgSize > z.maxMsg {
		return reject(ReasonMessageTooLarge, "message of more than %d bytes", z.maxMsg)
	}
	z.frames++
	z.state, z.left = stBody, size
	if size == 0 {
		return z.endFrame()
	}
	return nil
}

func (z *frameReader) endFrame() error {
	z.state = stFlags
	switch {
	case z.flags&flagCommand != 0 && !z.ready:
		if err := z.handshake(); err != nil {
			return err
		}
		z.ready, z.cmd = true, nil
	case z.flags&flagMore != 0:
		return nil
	case z.self == zmq4.Pub:
		// A subscriber sends a PUB socket nothing but (un)subscriptions (and, rarely, a
		// command such as PING), which zmq4 keeps per connection: bound them.
		if z.flags&flagCommand == 0 && (z.frames != 1 || (z.first != 0 && z.first != 1)) {
			return reject(ReasonUnexpected, "a message that is not a subscription")
		}
		if z.subs++; z.subs > maxSubscriptions {
			return reject(ReasonUnexpected, "more than %d subscriptions", maxSubscriptions)
		}
	}
	z.msgSize, z.frames, z.first = 0, 0, -1
	return nil
}

// handshake checks the peer's first command: READY with well-formed metadata naming a
// socket type compatible with ours.
func (z *frameReader) handshake() error {
	c := z.cmd
	if len(c) == 0 || int(c[0]) > len(c)-1 {
		return reject(ReasonProtocol, "malformed command")
	}
	if name := string(c[1 : 1+c[0]]); name != "READY" {
		return reject(ReasonProtocol, "handshake command %q, want READY", name)
	}
	var peer string
	for p := c[1+c[0]:]; len(p) > 0; {
		klen := int(p[0])
		if len(p) < 1+klen+4 {
			return reject(ReasonProtocol, "truncated READY property")
		}
		key := string(p[1 : 1+klen])
		vlen := binary.BigEndian.Uint32(p[1+klen:])
		p = p[1+klen+4:]
		if uint64(vlen) > uint64(len(p)) {
			return reject(ReasonProtocol, "truncated READY property %q", key)
		}
		if strings.EqualFold(key, "Socket-Type") {
			peer = string(p[:vlen])
		}
		p = p[vlen:]
	}
	if !compatible(z.self, peer) {
		return reject(ReasonProtocol, "peer socket type %q cannot talk to %s", peer, z.self)
	}
	return nil
}

// compatible is ZMTP's table of valid socket combinations for the kinds this package opens.
// (zmq4's SocketType.IsCompatible panics on a type it does not know, so an unknown peer
// type must be turned away before zmq4 sees it.)
func compatible(self zmq4.SocketType, peer string) bool {
	switch zmq4.SocketType(peer) {
	case zmq4.Pub, zmq4.XPub:
		return self == zmq4.Sub
	case zmq4.Sub, zmq4.XSub:
		return self == zmq4.Pub
	case zmq4.Req:
		return self == zmq4.Router
	case zmq4.Rep:
		return self == zmq4.Dealer
	case zmq4.Dealer, zmq4.Router:
		return self == zmq4.Router || self == zmq4.Dealer
	}
	return false
}
