package sim

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"time"
)

// HeaderKVCacheSource names another engine (ip:port of its OpenAI server) that holds the
// request's prompt prefix: llm-d's header, set by its scheduler's p2p-source producer and
// read by its routing sidecar. The sim reads it itself: it asks that engine for its transfer
// address (GET PathKVTransferSource) and pulls the prefix from there.
const HeaderKVCacheSource = "x-kv-cache-source-host-port"

// PathKVTransferSource is where a sim says where its blocks can be pulled from.
const PathKVTransferSource = "/kv_transfer_source"

// kvSource is kv_transfer_params.remote_kv_source: the peer whose cached prefix to pull,
// at its block-transfer port (llm-d's sidecar fills it from HeaderKVCacheSource and its
// --p2p-connector-port).
type kvSource struct {
	KVRequestID string `json:"kv_request_id,omitempty"`
	RemoteHost  string `json:"remote_host"`
	RemotePort  int    `json:"remote_port"`
}

// transferSource is the answer of GET PathKVTransferSource.
type transferSource struct {
	EngineID   string `json:"engine_id"`
	RemoteHost string `json:"remote_host"`
	RemotePort int    `json:"remote_port"`
	BlockSize  int    `json:"block_size"`
	BlockBytes int    `json:"block_bytes"`
}

// Why a peer pull got nothing: the reason label of MetricP2PFailures.
const (
	p2pBadSource = "bad_source" // the header is not a bare host:port
	p2pResolve   = "resolve"    // the source's transfer address could not be learned
	p2pConnect   = "connect"    // the source's transfer port could not be reached
	p2pRefused   = "refused"    // the source answered with an error
	p2pMiss      = "miss"       // the source holds none of the blocks
	p2pProtocol  = "protocol"   // a malformed or cut-short answer
	p2pTLS       = "tls"        // TLS failed: an untrusted certificate either way, or one side plaintext
)

var p2pReasons = [...]string{p2pBadSource, p2pResolve, p2pConnect, p2pRefused, p2pMiss, p2pProtocol, p2pTLS}

// p2pError is a failed pull and its reason.
type p2pError struct {
	reason string
	err    error
}

func (e *p2pError) Error() string { return e.reason + ": " + e.err.Error() }
func (e *p2pError) Unwrap() error { return e.err }

// p2pErr is a failed pull for reason, or for p2pTLS when err is a TLS failure.
func p2pErr(reason string, err error) error {
	if tlsFailure(err) {
		reason = p2pTLS
	}
	return &p2pError{reason: reason, err: err}
}

func (s *Server) handleTransferSource(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, transferSource{EngineID: s.cfg.EngineID, RemoteHost: s.cfg.AdvertiseHost,
		RemotePort: s.TransferPort(), BlockSize: s.cfg.Engine.BlockSize, BlockBytes: s.cfg.BlockBytes})
}

// pullSource returns the transfer address to pull g's prefix from: kv_transfer_params'
// remote_kv_source, else the engine HeaderKVCacheSource names (asked for its transfer
// address); "" when neither is given or the source is this engine.
func (s *Server) pullSource(ctx context.Context, r *http.Request, g generation) (string, error) {
	if g.kv != nil && g.kv.RemoteKVSource != nil {
		addr := net.JoinHostPort(g.kv.RemoteKVSource.RemoteHost, strconv.Itoa(g.kv.RemoteKVSource.RemotePort))
		if addr == s.TransferAddr() || addr == net.JoinHostPort(s.cfg.AdvertiseHost, strconv.Itoa(s.TransferPort())) {
			return "", nil
		}
		return addr, nil
	}
	hp := r.Header.Get(HeaderKVCacheSource)
	if hp == "" {
		return "", nil
	}
	host, port, err := net.SplitHostPort(hp)
	if err != nil || host == "" || badPort(port) {
		return "", p2pErr(p2pBadSource, fmt.Errorf("%s %q is not host:port", HeaderKVCacheSource, hp))
	}
	if hp == s.Addr() {
		return "", nil
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	u := url.URL{Scheme: "http", Host: hp, Path: PathKVTransferSource}
	if s.cfg.PeerTLS != nil {
		u.Scheme = "https"
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return "", p2pErr(p2pBadSource, err)
	}
	resp, err := s.peers.Do(req)
	if err != nil {
		return "", p2pErr(p2pResolve, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", p2pErr(p2pResolve, fmt.Errorf("GET %s: status %d", u.String(), resp.StatusCode))
	}
	var ts transferSource
	if err := json.NewDecoder(io.LimitReader(resp.Body, 64<<10)).Decode(&ts); err != nil {
		return "", p2pErr(p2pResolve, fmt.Errorf("GET %s: %v", u.String(), err))
	}
	if ts.RemoteHost == "" || ts.RemotePort <= 0 || ts.RemotePort > 65535 {
		return "", p2pErr(p2pResolve, fmt.Errorf("GET %s: no transfer address in %+v", u.String(), ts))
	}
	if ts.EngineID == s.cfg.EngineID {
		return "", nil
	}
	return net.JoinHostPort(ts.RemoteHost, strconv.Itoa(ts.RemotePort)), nil
}

// badPort reports whether port is not a number in 1-65535.
func badPort(port string) bool {
	n, err := strconv.Atoi(port)
	return err != nil || n <= 0 || n > 65535
}

// pullPrefix pulls the first prompt's cached prefix from a peer named by the request, after
// the blocks this engine holds itself, and returns how many leading prompt blocks the request
// may then treat as present (0: recompute). It never fails the request: a failure is counted
// by reason, logged, and the prompt is recomputed.
func (s *Server) pullPrefix(ctx context.Context, r *http.Request, g generation) int {
	if len(g.prompts) == 0 {
		return 0
	}
	addr, err := s.pullSource(ctx, r, g)
	if err != nil {
		s.pullFailed(r, addr, err)
		return 0
	}
	if addr == "" {
		return 0
	}
	hs, local := s.drv.holds(g.prompts[0], g.lora, g.cacheSalt)
	if local.Blocks >= len(hs) {
		return 0 // everything is here already
	}
	start := time.Now()
	n, bytes, err := pullHashes(ctx, addr, s.cfg.PeerTLS, s.cfg.Engine.BlockSize, hs[local.Blocks:])
	s.metrics.p2pBytes.Add(float64(bytes))
	if err != nil {
		s.pullFailed(r, addr, err)
		return 0
	}
	s.metrics.p2pBlocks.Add(float64(n))
	s.metrics.p2pSeconds.Observe(time.Since(start).Seconds())
	s.log.Debug("p2p prefix pulled", "source", addr, "blocks", n, "bytes", bytes, "local_blocks", local.Blocks)
	return local.Blocks + n
}

// pullFailed counts and logs a pull that got nothing.
func (s *Server) pullFailed(r *http.Request, addr string, err error) {
	reason := p2pProtocol
	var pe *p2pError
	if errors.As(err, &pe) {
		reason = pe.reason
	}
	s.metrics.p2pFails.WithLabelValues(reason).Inc()
	s.log.Warn("p2p prefix pull failed, recomputing", "source", addr, "header", r.Header.Get(HeaderKVCacheSource), "reason", reason, "err", err)
}

// pullHashes runs the puller's side of a P2P pull: it asks addr for hs and reads the leading
// blocks the source holds, checking that each block starts with its hash; over TLS when tc
// is set.
func pullHashes(ctx context.Context, addr string, tc *tls.Config, blockSize int, hs []BlockHash) (blocks int, bytes int64, err error) {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	conn, err := dialPeer(ctx, addr, tc)
	if err != nil {
		return 0, 0, p2pErr(p2pConnect, err)
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	req := pullRequest{BlockHashes: make([]string, len(hs)), BlockSize: blockSize}
	for i, h := range hs {
		req.BlockHashes[i] = hex.EncodeToString(h[:])
	}
	b, _ := json.Marshal(req)
	if _, err := conn.Write(append(b, '\n')); err != nil {
		return 0, 0, p2pErr(p2pConnect, err)
	}
	br := bufio.NewReader(conn)
	line, err := br.ReadBytes('\n')
	if err != nil {
		return 0, 0, p2pErr(p2pProtocol, err)
	}
	var rep pullReply
	if err := json.Unmarshal(line, &rep); err != nil {
		return 0, 0, p2pErr(p2pProtocol, err)
	}
	switch {
	case rep.Error == errTLSRequired:
		return 0, 0, p2pErr(p2pTLS, errors.New(rep.Error))
	case rep.Error != "":
		return 0, 0, p2pErr(p2pRefused, errors.New(rep.Error))
	case rep.Blocks == 0:
		return 0, 0, p2pErr(p2pMiss, fmt.Errorf("%s holds none of %d blocks", addr, len(hs)))
	case rep.Blocks < 0 || rep.Blocks > len(hs) || rep.BlockBytes <= 0 || rep.BlockBytes > 1<<30:
		return 0, 0, p2pErr(p2pProtocol, fmt.Errorf("got %d blocks of %d bytes for %d", rep.Blocks, rep.BlockBytes, len(hs)))
	}
	buf := make([]byte, min(rep.BlockBytes, 256<<10))
	for i := range rep.Blocks {
		for left := rep.BlockBytes; left > 0; {
			k, err := io.ReadFull(br, buf[:min(left, len(buf))])
			bytes += int64(k)
			if err != nil {
				return 0, bytes, p2pErr(p2pProtocol, fmt.Errorf("block %d: %w", i, err))
			}
			if left == rep.BlockBytes && !blockStartsWith(buf[:k], hs[i]) {
				return 0, bytes, p2pErr(p2pProtocol, fmt.Errorf("block %d carries another block's bytes", i))
			}
			left -= k
		}
	}
	return rep.Blocks, bytes, nil
}

// fillBlock writes a block's stand-in bytes: its hash, repeated.
func fillBlock(buf []byte, h BlockHash) {
	for i := 0; i < len(buf); i += len(h) {
		copy(buf[i:], h[:])
	}
}

func blockStartsWith(b []byte, h BlockHash) bool {
	n := min(len(b), len(h))
	return string(b[:n]) == string(h[:n])
}

// servePrefix is the source's side of a P2P pull: the leading blocks of req it holds on any
// medium, each block_bytes long and starting with its hash.
func (s *Server) servePrefix(conn net.Conn, req pullRequest, reply func(pullReply) error) {
	if req.BlockSize != 0 && req.BlockSize != s.cfg.Engine.BlockSize {
		_ = reply(pullReply{Error: fmt.Sprintf("block size %d, this engine's is %d", req.BlockSize, s.cfg.Engine.BlockSize)})
		return
	}
	h := s.drv.holdsHashes(req.hashes)
	if reply(pullReply{Blocks: h.Blocks, BlockBytes: s.cfg.BlockBytes}) != nil || h.Blocks == 0 {
		return
	}
	buf := make([]byte, min(s.cfg.BlockBytes, 256<<10))
	for _, bh := range req.hashes[:h.Blocks] {
		fillBlock(buf, bh)
		for left := s.cfg.BlockBytes; left > 0; {
			n, err := conn.Write(buf[:min(left, len(buf))])
			s.metrics.p2pServed.Add(float64(n))
			if err != nil {
				return
			}
			left -= n
		}
	}
	s.metrics.p2pServedBlocks.WithLabelValues(MediumGPU.String()).Add(float64(h.GPU))
	s.metrics.p2pServedBlocks.WithLabelValues(MediumCPU.String()).Add(float64(h.CPU))
	s.metrics.p2pServedBlocks.WithLabelValues(MediumDisk.String()).Add(float64(h.Disk))
}
