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
	"strconv"
	"sync"
	"time"

	"github.com/kvgate/kvgate/openai"
)

// kvTransferParams is the kv_transfer_params object of vLLM's NixlConnector: what a prefill
// request asks for (do_remote_decode), what its response returns, and what the decode request
// carries (do_remote_prefill with the prefill engine's blocks and side channel).
type kvTransferParams struct {
	DoRemoteDecode  bool            `json:"do_remote_decode"`
	DoRemotePrefill bool            `json:"do_remote_prefill"`
	RemoteBlockIDs  json.RawMessage `json:"remote_block_ids,omitempty"`
	RemoteEngineID  string          `json:"remote_engine_id,omitempty"`
	RemoteRequestID string          `json:"remote_request_id,omitempty"`
	RemoteHost      string          `json:"remote_host,omitempty"`
	RemotePort      int             `json:"remote_port,omitempty"`
	TPSize          int             `json:"tp_size,omitempty"`
	// RemoteKVSource asks for a peer-to-peer pull of the prompt's cached prefix from another
	// engine's transfer port (llm-d's name for the block; P2P is its earlier name).
	RemoteKVSource *kvSource `json:"remote_kv_source,omitempty"`
	P2P            *kvSource `json:"p2p,omitempty"`

	blockIDs []int
}

// parseKVTransferParams reads kv_transfer_params; remote_block_ids may be a list of ids or,
// as newer vLLM sends it, a list of per-group lists (the first group is used).
func parseKVTransferParams(raw json.RawMessage) (*kvTransferParams, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return nil, nil
	}
	p := &kvTransferParams{}
	if err := json.Unmarshal(raw, p); err != nil {
		return nil, openai.BadRequest("kv_transfer_params", "Invalid kv_transfer_params: %v", err)
	}
	if len(p.RemoteBlockIDs) > 0 && string(p.RemoteBlockIDs) != "null" {
		if err := json.Unmarshal(p.RemoteBlockIDs, &p.blockIDs); err != nil {
			var groups [][]int
			if err := json.Unmarshal(p.RemoteBlockIDs, &groups); err != nil {
				return nil, openai.BadRequest("kv_transfer_params", "Invalid kv_transfer_params.remote_block_ids: want a list of block ids.")
			}
			if len(groups) > 0 {
				p.blockIDs = groups[0]
			}
		}
	}
	if p.DoRemotePrefill && len(p.blockIDs) > 0 && (p.RemoteHost == "" || p.RemotePort <= 0 || p.RemotePort > 65535) {
		return nil, openai.BadRequest("kv_transfer_params", "kv_transfer_params with do_remote_prefill need remote_host and remote_port.")
	}
	if p.RemoteKVSource == nil {
		p.RemoteKVSource = p.P2P
	}
	if src := p.RemoteKVSource; src != nil && (src.RemoteHost == "" || src.RemotePort <= 0 || src.RemotePort > 65535) {
		return nil, openai.BadRequest("kv_transfer_params", "kv_transfer_params.remote_kv_source needs remote_host and remote_port (1-65535).")
	}
	return p, nil
}

// transferParams is the kv_transfer_params of a finished prefill response: the blocks the
// first choice holds and where to pull them from, as NixlConnector's request_finished returns.
func (s *Server) transferParams(choices []*choice) json.RawMessage {
	if len(choices) == 0 || !choices[0].held {
		return nil
	}
	c := choices[0]
	ids := c.blockIDs
	if ids == nil {
		ids = []int{}
	}
	b, err := json.Marshal(map[string]any{
		"do_remote_prefill": true,
		"do_remote_decode":  false,
		"remote_block_ids":  ids,
		"remote_engine_id":  s.cfg.EngineID,
		"remote_request_id": c.id,
		"remote_host":       s.cfg.AdvertiseHost,
		"remote_port":       s.TransferPort(),
		"tp_size":           1,
	})
	if err != nil {
		return nil
	}
	return b
}

// The transfer protocol, one request per connection:
//
//	decode -> prefill: {"request_id": "...", "block_ids": [..]}\n
//	prefill -> decode: {"blocks": k, "block_bytes": b}\n then k*b bytes, or {"error": "..."}\n
//
// after which the prefill engine frees the request's blocks (they stay in its prefix cache).
//
// A peer-to-peer prefix pull (p2p.go) asks for blocks by hash instead:
//
//	puller -> source: {"block_hashes": ["<64 hex digits>", ...], "block_size": 16}\n
//	source -> puller: {"blocks": k, "block_bytes": b}\n then k*b bytes
//
// where k is how many of the hashes, from the first, the source holds on any medium (0 is a
// miss), and each block's bytes start with its hash.
type pullRequest struct {
	RequestID   string   `json:"request_id"`
	BlockIDs    []int    `json:"block_ids"`
	BlockHashes []string `json:"block_hashes,omitempty"`
	BlockSize   int      `json:"block_size,omitempty"`

	hashes []BlockHash
}

// maxPullBlocks bounds one pull request (a 256k-token prompt of 16-token blocks).
const maxPullBlocks = 1 << 14

// parsePullRequest reads one pull request line: block ids (P/D) or block hashes (P2P).
func parsePullRequest(line []byte) (pullRequest, error) {
	var req pullRequest
	if err := json.Unmarshal(line, &req); err != nil {
		return req, fmt.Errorf("bad pull request: %v", err)
	}
	switch {
	case len(req.BlockIDs) > 0 && len(req.BlockHashes) > 0:
		return req, errors.New("bad pull request: block_ids and block_hashes together")
	case len(req.BlockIDs) > maxPullBlocks || len(req.BlockHashes) > maxPullBlocks:
		return req, fmt.Errorf("bad pull request: more than %d blocks", maxPullBlocks)
	case len(req.BlockHashes) > 0:
		req.hashes = make([]BlockHash, len(req.BlockHashes))
		for i, h := range req.BlockHashes {
			if len(h) != 2*len(BlockHash{}) {
				return req, fmt.Errorf("bad pull request: block hash %d is not %d hex digits", i, 2*len(BlockHash{}))
			}
			if _, err := hex.Decode(req.hashes[i][:], []byte(h)); err != nil {
				return req, fmt.Errorf("bad pull request: block hash %d: %v", i, err)
			}
		}
		if req.BlockSize < 0 {
			return req, errors.New("bad pull request: negative block_size")
		}
	case len(req.BlockIDs) == 0:
		return req, errors.New("bad pull request: no blocks")
	}
	return req, nil
}

// errTLSRequired is the error a TLS transfer listener answers a plaintext pull with.
const errTLSRequired = "this transfer listener requires TLS (a plaintext pull was sent)"

type pullReply struct {
	Blocks     int    `json:"blocks"`
	BlockBytes int    `json:"block_bytes"`
	Error      string `json:"error,omitempty"`
}

// serveTransfer accepts block pulls until ctx ends. It starts no goroutine of its own
// before a pull arrives: the listener is closed by a context.AfterFunc, not by a watcher
// parked for the server's lifetime.
func (s *Server) serveTransfer(ctx context.Context) {
	stop := context.AfterFunc(ctx, func() { s.xferLn.Close() })
	defer stop()
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		conn, err := s.xferLn.Accept()
		if err != nil {
			return
		}
		wg.Go(func() { s.serveOne(ctx, conn) })
	}
}

func (s *Server) serveOne(ctx context.Context, conn net.Conn) {
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	_ = conn.SetDeadline(time.Now().Add(time.Minute))
	if tc, ok := conn.(*tls.Conn); ok {
		if err := tc.HandshakeContext(ctx); err != nil {
			s.log.Warn("kv transfer: TLS handshake failed", "peer", conn.RemoteAddr().String(), "err", err)
			// A plaintext puller gets a plaintext answer it can read, as net/http answers
			// HTTP sent to an HTTPS port.
			var rh tls.RecordHeaderError
			if errors.As(err, &rh) && rh.Conn != nil {
				b, _ := json.Marshal(pullReply{Error: errTLSRequired})
				_, _ = rh.Conn.Write(append(b, '\n'))
			}
			return
		}
	}
	line, err := bufio.NewReader(io.LimitReader(conn, 1<<20)).ReadBytes('\n')
	if err != nil {
		return
	}
	reply := func(r pullReply) error {
		b, _ := json.Marshal(r)
		_, err := conn.Write(append(b, '\n'))
		return err
	}
	req, err := parsePullRequest(line)
	if err != nil {
		_ = reply(pullReply{Error: err.Error()})
		return
	}
	if len(req.hashes) > 0 {
		s.servePrefix(conn, req, reply)
		return
	}
	id := req.RequestID
	if id == "" {
		id = s.drv.findHeld(req.BlockIDs[0])
	}
	held := s.drv.heldBlocks(id)
	if !prefixOf(req.BlockIDs, held) {
		_ = reply(pullReply{Error: fmt.Sprintf("request %q holds no such blocks (expired or never prefilled)", id)})
		return
	}
	if reply(pullReply{Blocks: len(req.BlockIDs), BlockBytes: s.cfg.BlockBytes}) != nil {
		return
	}
	buf := make([]byte, min(s.cfg.BlockBytes, 256<<10))
	for _, b := range req.BlockIDs {
		for i := range buf {
			buf[i] = byte(b + i)
		}
		for left := s.cfg.BlockBytes; left > 0; {
			n, err := conn.Write(buf[:min(left, len(buf))])
			if err != nil {
				return
			}
			left -= n
			s.metrics.xferServed.Add(float64(n))
		}
	}
	s.drv.release(id)
}

func prefixOf(want, held []int) bool {
	if len(want) > len(held) {
		return false
	}
	for i := range want {
		if want[i] != held[i] {
			return false
		}
	}
	return true
}

// pull fetches p's blocks from the prefill engine and returns how many arrived; 0 on any
// failure, which makes the request prefill locally.
func (s *Server) pull(ctx context.Context, p *kvTransferParams) int {
	start := time.Now()
	n, bytes, err := pullBlocks(ctx, net.JoinHostPort(p.RemoteHost, strconv.Itoa(p.RemotePort)), s.cfg.PeerTLS, p.RemoteRequestID, p.blockIDs)
	s.metrics.xferBytes.Add(float64(bytes))
	if err != nil {
		s.metrics.xferFails.Inc()
		s.log.Warn("kv transfer failed, prefilling locally", "remote", p.RemoteHost, "port", p.RemotePort, "tls", tlsFailure(err), "err", err)
		return 0
	}
	s.metrics.xferBlocks.Add(float64(n))
	s.metrics.xferSeconds.Observe(time.Since(start).Seconds())
	return n
}

// pullBlocks runs the client side of the transfer protocol, over TLS when tc is set.
func pullBlocks(ctx context.Context, addr string, tc *tls.Config, requestID string, ids []int) (blocks int, bytes int64, err error) {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	conn, err := dialPeer(ctx, addr, tc)
	if err != nil {
		return 0, 0, err
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	b, _ := json.Marshal(pullRequest{RequestID: requestID, BlockIDs: ids})
	if _, err := conn.Write(append(b, '\n')); err != nil {
		return 0, 0, err
	}
	br := bufio.NewReader(conn)
	line, err := br.ReadBytes('\n')
	if err != nil {
		return 0, 0, err
	}
	var rep pullReply
	if err := json.Unmarshal(line, &rep); err != nil {
		return 0, 0, err
	}
	if rep.Error != "" {
		return 0, 0, errors.New(rep.Error)
	}
	if rep.Blocks != len(ids) || rep.BlockBytes <= 0 {
		return 0, 0, fmt.Errorf("transfer: got %d blocks of %d bytes for %d", rep.Blocks, rep.BlockBytes, len(ids))
	}
	want := int64(rep.Blocks) * int64(rep.BlockBytes)
	bytes, err = io.CopyN(io.Discard, br, want)
	if err != nil {
		return 0, bytes, err
	}
	return rep.Blocks, bytes, nil
}
