// Package zmtptest is a hand-driven ZMTP 3.0 peer for tests: it does the real greeting and
// NULL handshake over a raw TCP connection, then writes whatever the test asks, including
// what no ZMQ library would send.
package zmtptest

import (
	"encoding/binary"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

// HostileHeader is a long frame header claiming 2^62 bytes.
var HostileHeader = binary.BigEndian.AppendUint64([]byte{0x02}, 1<<62)

// Peer is one raw ZMTP connection. Its methods fail the test on I/O errors and timeouts.
type Peer struct {
	t testing.TB
	c net.Conn
}

// Dial connects to a tcp:// endpoint; the handshake is the caller's. The connection closes
// when the test ends.
func Dial(t testing.TB, endpoint string) *Peer {
	t.Helper()
	c, err := net.DialTimeout("tcp", strings.TrimPrefix(endpoint, "tcp://"), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &Peer{t: t, c: c}
}

// Accept waits up to 10s for the next connection on ln.
func Accept(t testing.TB, ln net.Listener) *Peer {
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
		return &Peer{t: t, c: r.c}
	case <-time.After(10 * time.Second):
		t.Fatal("no connection to accept")
		return nil
	}
}

// Greeting is a ZMTP 3.0 greeting for the NULL mechanism.
func Greeting() []byte {
	g := make([]byte, 64)
	g[0], g[9], g[10] = 0xff, 0x7f, 3
	copy(g[12:], "NULL")
	return g
}

// ReadyBody is a READY command's body announcing socket type typ ("PUB", "DEALER", ...).
func ReadyBody(typ string) []byte {
	b := append([]byte{5}, "READY"...)
	b = append(b, byte(len("Socket-Type")))
	b = append(b, "Socket-Type"...)
	b = binary.BigEndian.AppendUint32(b, uint32(len(typ)))
	return append(b, typ...)
}

// Frame encodes one frame (flags 0x01 more, 0x04 command) with the shortest header.
func Frame(flags byte, body []byte) []byte {
	if len(body) > 255 {
		b := binary.BigEndian.AppendUint64([]byte{flags | 0x02}, uint64(len(body)))
		return append(b, body...)
	}
	return append([]byte{flags, byte(len(body))}, body...)
}

// Message encodes a multipart message.
func Message(frames ...[]byte) []byte {
	var b []byte
	for i, f := range frames {
		var more byte
		if i < len(frames)-1 {
			more = 0x01
		}
		b = append(b, Frame(more, f)...)
	}
	return b
}

// Write sends raw bytes.
func (p *Peer) Write(b []byte) {
	p.t.Helper()
	_ = p.c.SetWriteDeadline(time.Now().Add(5 * time.Second))
	if _, err := p.c.Write(b); err != nil {
		p.t.Fatalf("write to the socket under test: %v", err)
	}
}

// Handshake sends the greeting and READY as a socket of kind typ and reads the other
// side's greeting and READY.
func (p *Peer) Handshake(typ string) {
	p.t.Helper()
	p.Write(append(Greeting(), Frame(0x04, ReadyBody(typ))...))
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

func (p *Peer) readFrame() (flags byte, body []byte, err error) {
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

// ReadMessage reads the frames of one message (5s at most).
func (p *Peer) ReadMessage() ([][]byte, error) {
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

// WaitClosed reads (and drops) what the other side sends until it closes the connection;
// it fails the test if that takes 10s.
func (p *Peer) WaitClosed() {
	p.t.Helper()
	_ = p.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, err := io.Copy(io.Discard, p.c)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		p.t.Fatal("the socket under test did not close the connection")
	}
}
