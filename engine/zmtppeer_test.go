package engine_test

import (
	"encoding/binary"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

// zmtpPeer is a hand-driven ZMTP 3.0 peer over a raw TCP connection: it does the real
// greeting and NULL handshake as a socket of the kind it claims, then writes whatever the
// test asks, including what no ZMQ library would send.
type zmtpPeer struct {
	t *testing.T
	c net.Conn
}

// dialZMTP connects to a tcp:// endpoint; the handshake is the caller's.
func dialZMTP(t *testing.T, endpoint string) *zmtpPeer {
	t.Helper()
	c, err := net.DialTimeout("tcp", strings.TrimPrefix(endpoint, "tcp://"), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &zmtpPeer{t: t, c: c}
}

// acceptZMTP waits for the next connection on ln.
func acceptZMTP(t *testing.T, ln net.Listener) *zmtpPeer {
	t.Helper()
	type res struct {
		c   net.Conn
		err error
	}
	ch := make(chan res, 1)
	go func() { c, err := ln.Accept(); ch <- res{c, err} }()
	select {
	case r := <-ch:
		if r.err != nil {
			t.Fatal(r.err)
		}
		t.Cleanup(func() { r.c.Close() })
		return &zmtpPeer{t: t, c: r.c}
	case <-time.After(10 * time.Second):
		t.Fatal("no connection to accept")
		return nil
	}
}

func zmtpGreeting() []byte {
	g := make([]byte, 64)
	g[0], g[9], g[10] = 0xff, 0x7f, 3
	copy(g[12:], "NULL")
	return g
}

// readyBody is a READY command's body announcing socket type typ.
func readyBody(typ string) []byte {
	b := append([]byte{5}, "READY"...)
	b = append(b, byte(len("Socket-Type")))
	b = append(b, "Socket-Type"...)
	b = binary.BigEndian.AppendUint32(b, uint32(len(typ)))
	return append(b, typ...)
}

// zmtpFrame encodes one frame (flags 0x01 more, 0x04 command) with the shortest header.
func zmtpFrame(flags byte, body []byte) []byte {
	if len(body) > 255 {
		b := binary.BigEndian.AppendUint64([]byte{flags | 0x02}, uint64(len(body)))
		return append(b, body...)
	}
	return append([]byte{flags, byte(len(body))}, body...)
}

// zmtpMessage encodes a multipart message.
func zmtpMessage(frames ...[]byte) []byte {
	var b []byte
	for i, f := range frames {
		var more byte
		if i < len(frames)-1 {
			more = 0x01
		}
		b = append(b, zmtpFrame(more, f)...)
	}
	return b
}

// hostileHeader is a long frame header claiming 2^62 bytes.
var hostileHeader = binary.BigEndian.AppendUint64([]byte{0x02}, 1<<62)

func (p *zmtpPeer) write(b []byte) {
	p.t.Helper()
	_ = p.c.SetWriteDeadline(time.Now().Add(5 * time.Second))
	if _, err := p.c.Write(b); err != nil {
		p.t.Fatalf("write to the socket under test: %v", err)
	}
}

// handshake sends the greeting and READY as a socket of kind typ and reads the other
// side's greeting and READY.
func (p *zmtpPeer) handshake(typ string) {
	p.t.Helper()
	p.write(append(zmtpGreeting(), zmtpFrame(0x04, readyBody(typ))...))
	_ = p.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	var g [64]byte
	if _, err := io.ReadFull(p.c, g[:]); err != nil {
		p.t.Fatalf("read greeting: %v", err)
	}
	flags, body, err := p.readFrame()
	if err != nil || flags&0x04 == 0 || !strings.HasPrefix(string(body), "\x05READY") {
		p.t.Fatalf("read READY: flags %x body %q err %v", flags, body, err)
	}
}

func (p *zmtpPeer) readFrame() (flags byte, body []byte, err error) {
	var h [9]byte
	if _, err = io.ReadFull(p.c, h[:2]); err != nil {
		return 0, nil, err
	}
	flags, size := h[0], uint64(h[1])
	if flags&0x02 != 0 {
		if _, err = io.ReadFull(p.c, h[2:9]); err != nil {
			return 0, nil, err
		}
		size = binary.BigEndian.Uint64(h[1:9])
	}
	if size > 1<<20 {
		return 0, nil, errors.New("frame too large for a test")
	}
	body = make([]byte, size)
	_, err = io.ReadFull(p.c, body)
	return flags, body, err
}

// readMessage reads the frames of one message.
func (p *zmtpPeer) readMessage() ([][]byte, error) {
	_ = p.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	var out [][]byte
	for {
		flags, body, err := p.readFrame()
		if err != nil {
			return out, err
		}
		out = append(out, body)
		if flags&0x01 == 0 {
			return out, nil
		}
	}
}

// waitClosed reads (and drops) what the other side sends until it closes the connection.
func (p *zmtpPeer) waitClosed() {
	p.t.Helper()
	_ = p.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, err := io.Copy(io.Discard, p.c)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		p.t.Fatal("the socket under test did not close the connection")
	}
}
