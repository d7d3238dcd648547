package sim

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// FuzzHTTPRequest sends arbitrary bodies to every POST endpoint: the server must answer each
// with JSON or SSE, never panic, and leave no request behind in the engine.
func FuzzHTTPRequest(f *testing.F) {
	seeds := []string{
		`{"prompt":"hello","max_tokens":3}`,
		`{"messages":[{"role":"user","content":"hi"}],"n":2,"stream":true,"stream_options":{"include_usage":true}}`,
		`{"prompt":[[1,2,3],[4,5]],"max_tokens":2,"stop":["a"," the"],"ignore_eos":true}`,
		`{"prompt":"x","kv_transfer_params":{"do_remote_decode":true}}`,
		`{"prompt":"x","kv_transfer_params":{"do_remote_prefill":true,"remote_block_ids":[[1]],"remote_host":"127.0.0.1","remote_port":1}}`,
		`{"messages":"nope"}`, `{"prompt":""}`, `[]`, `{`, `{"prompt":[]}`, `{"model":"m","messages":[]}`,
		`{"lora_name":"a","lora_path":"/x"}`, `{"lora_name":"a"}`, `{"model":"a","prompt":"x","max_tokens":2}`,
		`{"messages":[{"role":"user","content":"hi"},{"role":"assistant","content":" the of"}],"continue_final_message":true,"add_generation_prompt":false,"max_tokens":2}`,
	}
	for i, s := range seeds {
		f.Add(uint8(i), []byte(s))
	}
	s, err := NewServer(ServerConfig{Engine: Config{NumBlocks: 64, Timing: Timing{Speed: 1000}, MaxLoRAs: 1}, BlockBytes: 64,
		RuntimeLoRA: true, ChainOutput: true}, nil, nil)
	if err != nil {
		f.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	f.Cleanup(func() {
		cancel()
		<-done
	})
	h := s.Handler()
	paths := []string{"/v1/completions", "/v1/chat/completions", "/tokenize", "/v1/load_lora_adapter", "/v1/unload_lora_adapter"}
	f.Fuzz(func(t *testing.T, which uint8, body []byte) {
		rctx, rcancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer rcancel()
		req := httptest.NewRequestWithContext(rctx, http.MethodPost, paths[int(which)%len(paths)], bytes.NewReader(body))
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		out := rec.Body.Bytes()
		switch ct := rec.Header().Get("Content-Type"); {
		case rctx.Err() != nil:
			// The client gave up (a pull from an unreachable remote_host can take that long):
			// the handler returns without an answer, as to a client that went away.
		case strings.HasPrefix(ct, "text/plain"):
			if rec.Code != http.StatusOK || !bytes.HasPrefix(out, []byte("Success: ")) {
				t.Fatalf("text answer %d %q", rec.Code, out)
			}
		case ct == "text/event-stream":
			if !bytes.HasSuffix(out, []byte("data: [DONE]\n\n")) && rctx.Err() == nil {
				t.Fatalf("stream without [DONE]: %q", out)
			}
		default:
			if !json.Valid(out) {
				t.Fatalf("status %d, body not JSON: %q", rec.Code, out)
			}
		}
		if st := s.Stats(); st.Running+st.Waiting != 0 {
			t.Fatalf("requests left in the engine: %+v", st)
		}
	})
}

// FuzzTransferRequest sends arbitrary bytes to the block-transfer listener: it must answer
// (or hang up) without panicking, and never release blocks nobody holds.
func FuzzTransferRequest(f *testing.F) {
	for _, s := range []string{`{"request_id":"x","block_ids":[1,2]}` + "\n", `{"block_ids":[0]}` + "\n", "{}\n", "garbage", ""} {
		f.Add([]byte(s))
	}
	s, err := NewServer(ServerConfig{Engine: Config{NumBlocks: 64}, BlockBytes: 64}, nil, nil)
	if err != nil {
		f.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	f.Cleanup(func() {
		cancel()
		<-done
	})
	f.Fuzz(func(t *testing.T, in []byte) {
		conn, err := net.DialTimeout("tcp", s.TransferAddr(), 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := conn.Write(in); err != nil {
			return
		}
		conn.(*net.TCPConn).CloseWrite()
		if _, err := io.ReadAll(conn); err != nil {
			t.Fatalf("transfer server did not finish: %v", err)
		}
		if st := s.Stats(); st.FreeBlocks != st.NumBlocks {
			t.Fatalf("blocks changed: %+v", st)
		}
	})
}

// FuzzPullReply feeds arbitrary replies to the decode side of the transfer: it must return
// (an error or the blocks) without panicking.
func FuzzPullReply(f *testing.F) {
	for _, s := range []string{`{"blocks":2,"block_bytes":3}` + "\nabcdef", `{"error":"gone"}` + "\n", `{"blocks":1,"block_bytes":100}` + "\nshort", "x"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, reply []byte) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		go func() {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close()
			c.Write(reply)
		}()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		n, _, err := pullBlocks(ctx, ln.Addr().String(), nil, "r", []int{1, 2})
		if err == nil && n != 2 {
			t.Fatalf("pulled %d blocks without an error", n)
		}
	})
}
