package conformance

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"sort"
	"strings"
	"sync"

	"github.com/kvgate/kvgate/gateway"
	"github.com/kvgate/kvgate/router"
)

// frontDoor is kvgate's remote-EPP gateway in front of the pool, driven by the EPP under
// test: the behaviour checks send real requests through it to the engines.
type frontDoor struct {
	url    string
	stop   func()
	client *http.Client
}

func (s *Suite) frontDoor(ctx context.Context) (*frontDoor, error) {
	var pool []router.Endpoint
	for _, e := range s.cfg.Endpoints {
		pool = append(pool, router.Endpoint{Address: e, Models: []string{s.cfg.Model}})
	}
	gw, err := gateway.NewEPP(gateway.Config{Addr: "127.0.0.1:0"}, gateway.EPPConfig{
		Addr: s.cfg.EPP, TLS: s.cfg.TLS, Pool: pool, Timeout: s.cfg.Timeout,
	}, s.log, nil)
	if err != nil {
		return nil, err
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		gw.Close()
		return nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = gw.Serve(ctx, lis)
	}()
	tr := &http.Transport{MaxIdleConnsPerHost: 64}
	return &frontDoor{
		url:    "http://" + lis.Addr().String(),
		client: &http.Client{Transport: tr},
		stop: func() {
			cancel()
			<-done
			tr.CloseIdleConnections()
			gw.Close()
		},
	}, nil
}

// chat sends one completion through the front door and returns the engine that served it.
func (f *frontDoor) chat(ctx context.Context, body []byte) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, f.url+"/v1/chat/completions", strings.NewReader(string(body)))
	if err != nil {
		return "", err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := f.client.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("HTTP %d: %s", resp.StatusCode, strings.TrimSpace(string(b)))
	}
	if !json.Valid(b) {
		return "", fmt.Errorf("the answer is not JSON: %q", b)
	}
	return resp.Header.Get(router.HeaderEndpoint), nil
}

// nonce makes this run's prompts its own, so an earlier run's cache does not count.
func nonce() string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

func prefixAffinity(ctx context.Context, s *Suite) (string, error) {
	f, err := s.frontDoor(ctx)
	if err != nil {
		return "", err
	}
	defer f.stop()
	body := s.chatBody("Conformance "+nonce()+": a long prompt sent again. "+filler(3, 12000), 2)
	first, err := f.chat(ctx, body)
	if err != nil {
		return "", err
	}
	var got []string
	for range 3 {
		ep, err := f.chat(ctx, body)
		if err != nil {
			return "", err
		}
		got = append(got, ep)
	}
	for _, ep := range got {
		if ep != first {
			return "", fmt.Errorf("first served by %s, the repeats by %v", first, got)
		}
	}
	return fmt.Sprintf("a %d-byte prompt and its 3 repeats all served by %s", len(body), first), nil
}

func loadSpread(ctx context.Context, s *Suite) (string, error) {
	n := len(s.cfg.Endpoints)
	if n < 2 {
		return "", errSkip("needs at least two endpoints")
	}
	f, err := s.frontDoor(ctx)
	if err != nil {
		return "", err
	}
	defer f.stop()
	run := nonce()
	total := 4 * n
	var (
		mu    sync.Mutex
		count = map[string]int{}
		first error
		wg    sync.WaitGroup
	)
	for i := range total {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// The distinct part first: no block of the prompt is shared.
			body := s.chatBody(fmt.Sprintf("%s-%d conformance load spread: %s", run, i, filler(100+i, 3000)), 64)
			ep, err := f.chat(ctx, body)
			mu.Lock()
			defer mu.Unlock()
			if err != nil && first == nil {
				first = err
			}
			count[ep]++
		}()
	}
	wg.Wait()
	if first != nil {
		return "", first
	}
	var eps []string
	most := 0
	for ep, c := range count {
		eps = append(eps, fmt.Sprintf("%s:%d", ep, c))
		most = max(most, c)
	}
	sort.Strings(eps)
	if len(count) < 2 || most*4 > total*3 {
		return "", fmt.Errorf("%d concurrent requests with distinct prefixes went %v (want at least two engines, none over 75%%)", total, eps)
	}
	return fmt.Sprintf("%d concurrent requests with distinct prefixes spread %v", total, eps), nil
}
