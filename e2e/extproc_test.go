package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	filterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/kvgate/kvgate/extproc/extproctest"
	"github.com/kvgate/kvgate/porttest"
)

// TestExtProcEnvoyPath plays Envoy in front of `kvgate up --ext-proc`: the ext_proc stream
// picks an engine, the test sends the request there itself (as the ORIGINAL_DST cluster
// would) and streams the engine's answer back through ext_proc. A repeated long prompt must
// be picked for the same engine, with cached blocks counted.
func TestExtProcEnvoyPath(t *testing.T) {
	grpcAddr := fmt.Sprintf("127.0.0.1:%d", porttest.Free(t))
	// No in-flight credit: only the engines' KV events can send the repeat back.
	base, _ := up(t, "--engines", "2", "--sim-speed", "20", "--ext-proc", grpcAddr, "--pending-ttl=-1s")
	c, err := extproctest.Dial(grpcAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for {
		r, err := healthpb.NewHealthClient(c.Conn()).Check(ctx, &healthpb.HealthCheckRequest{Service: "readiness"})
		if err == nil && r.GetStatus() == healthpb.HealthCheckResponse_SERVING {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("ext_proc never ready: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}

	prompt := longPrompt("envoy", 200)
	mode := extproctest.Mode{RequestBody: filterv3.ProcessingMode_FULL_DUPLEX_STREAMED, ResponseBody: filterv3.ProcessingMode_FULL_DUPLEX_STREAMED, RequestChunk: 4096}
	var picked []string
	var cachedHeader string
	for i := range 2 {
		// The first client does not ask for usage, the second does: the chunk the router
		// forced for its accounting must reach only the second.
		req := map[string]any{
			"model": model, "stream": true, "max_tokens": 4,
			"messages": []map[string]string{{"role": "user", "content": prompt}},
		}
		if i == 1 {
			req["stream_options"] = map[string]bool{"include_usage": true}
		}
		body, _ := json.Marshal(req)
		var upstreamErr error
		res, err := c.Do(ctx, mode, extproctest.Request{Method: "POST", Path: "/v1/chat/completions",
			Header: http.Header{"Content-Type": {"application/json"}}, Body: body},
			func(r *extproctest.Result) extproctest.Upstream {
				dest := strings.Split(r.Destination(), ",")[0]
				picked = append(picked, dest)
				cachedHeader = r.Header.Get("x-kvgate-cached-blocks")
				up, err := forward(ctx, dest, r)
				upstreamErr = err
				return up
			})
		if err != nil {
			t.Fatal(err)
		}
		if upstreamErr != nil {
			t.Fatal(upstreamErr)
		}
		if res.Immediate != nil {
			t.Fatalf("immediate %s", res.Immediate.GetBody())
		}
		if !bytes.Contains(res.ResponseBody, []byte("[DONE]")) {
			t.Errorf("request %d: the stream through ext_proc lacks [DONE]: %q", i, tail(string(res.ResponseBody), 300))
		}
		if hasUsage := bytes.Contains(res.ResponseBody, []byte(`"usage":{`)); hasUsage != (i == 1) {
			t.Errorf("request %d: usage in the stream %v, want %v: %q", i, hasUsage, i == 1, tail(string(res.ResponseBody), 300))
		}
		if res.ResponseHeader.Get("x-kvgate-endpoint") != picked[i] {
			t.Errorf("response names %q, picked %q", res.ResponseHeader.Get("x-kvgate-endpoint"), picked[i])
		}
		if i == 0 { // the engine's KV events reach the router's index: the prompt's blocks
			waitIndexed(t, base, picked[0], float64(len(prompt)/4/16/2))
		}
	}
	if picked[0] != picked[1] {
		t.Errorf("repeat picked %s after %s", picked[1], picked[0])
	}
	if n, _ := strconv.Atoi(cachedHeader); n == 0 {
		t.Errorf("repeat: x-kvgate-cached-blocks %q", cachedHeader)
	}
}

// forward sends the picked request to the engine at dest as Envoy's upstream would, and
// returns its response in the pieces it arrived in.
func forward(ctx context.Context, dest string, r *extproctest.Result) (extproctest.Upstream, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+dest+"/v1/chat/completions", bytes.NewReader(r.Body))
	if err != nil {
		return extproctest.Upstream{}, err
	}
	req.Header = r.Header.Clone()
	req.Header.Del("content-length")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return extproctest.Upstream{}, err
	}
	defer resp.Body.Close()
	up := extproctest.Upstream{Status: resp.StatusCode, Header: resp.Header.Clone(), Served: dest}
	buf := make([]byte, 16<<10)
	for {
		n, err := resp.Body.Read(buf)
		if n > 0 {
			up.Chunks = append(up.Chunks, append([]byte(nil), buf[:n]...))
		}
		if err == io.EOF {
			return up, nil
		}
		if err != nil {
			return up, err
		}
	}
}
