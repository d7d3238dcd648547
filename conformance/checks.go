package conformance

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/protobuf/types/known/structpb"
)

// checks is the suite, in the order it runs: protocol first, then behaviour.
var checks = []check{
	{"health/liveness", healthCheck("liveness")},
	{"health/readiness", healthCheck("readiness")},
	{"health/ext_proc", healthCheck(extProcService)},
	{"streaming-mode", streamingMode},
	{"destination/header-metadata-agree", destinationAgree},
	{"destination/fallbacks-in-pool", fallbacksInPool},
	{"subset/list", subsetList},
	{"subset/string", subsetString},
	{"subset/empty-503", subsetEmpty},
	{"subset/unsatisfiable-503", subsetUnsatisfiable},
	{"no-ready-endpoint-503", noReadyEndpoint},
	{"shed-429", shed},
	{"served-accepted", servedAccepted},
	{"body/chunked-within-limits", bodyChunks},
	{"client-gone", clientGone},
	{"behaviour/prefix-affinity", prefixAffinity},
	{"behaviour/load-spread", loadSpread},
}

func healthCheck(service string) func(context.Context, *Suite) (string, error) {
	return func(ctx context.Context, s *Suite) (string, error) {
		ctx, cancel := context.WithTimeout(ctx, s.cfg.Timeout)
		defer cancel()
		r, err := healthpb.NewHealthClient(s.health).Check(ctx, &healthpb.HealthCheckRequest{Service: service})
		if err != nil {
			return "", fmt.Errorf("health check of %q: %w", service, err)
		}
		if r.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			return "", fmt.Errorf("%q is %s", service, r.GetStatus())
		}
		return fmt.Sprintf("%q SERVING", service), nil
	}
}

// chatBody is a chat completion request for the suite's model.
func (s *Suite) chatBody(content string, maxTokens int) []byte {
	b, _ := json.Marshal(map[string]any{
		"model": s.cfg.Model, "max_tokens": maxTokens,
		"messages": []map[string]string{{"role": "user", "content": content}},
	})
	return b
}

// pick runs one request path and closes the stream.
func (s *Suite) pick(ctx context.Context, r request) (*exchange, error) {
	x, err := s.open(ctx)
	if err != nil {
		return nil, fmt.Errorf("opening a stream: %w", err)
	}
	defer x.close()
	return x.requestPath(r, s.cfg.Timeout)
}

// candidates is the pick's list (metadata first, as Envoy's override_host reads it).
func (ex *exchange) candidates() []string {
	v := ex.meta
	if v == "" {
		v = ex.header
	}
	var out []string
	for _, a := range strings.Split(v, ",") {
		if a = strings.TrimSpace(a); a != "" {
			out = append(out, a)
		}
	}
	return out
}

// picked fails unless the exchange named at least one endpoint.
func picked(ex *exchange) ([]string, error) {
	if ex.immediate != nil {
		return nil, fmt.Errorf("ImmediateResponse %d (%s) where a pick was due", ex.immediate.GetStatus().GetCode(), bodyText(ex.immediate))
	}
	c := ex.candidates()
	if len(c) == 0 {
		return nil, errors.New("no destination in the header or the envoy.lb metadata")
	}
	return c, nil
}

func bodyText(im *extprocv3.ImmediateResponse) string {
	b := string(im.GetBody())
	if len(b) > 200 {
		b = b[:200] + "..."
	}
	if b == "" {
		b = im.GetDetails()
	}
	return b
}

// wantStatus fails unless the exchange is an ImmediateResponse with status.
func wantStatus(ex *exchange, status int) (string, error) {
	if ex.immediate == nil {
		return "", fmt.Errorf("picked %v, want an ImmediateResponse %d", ex.candidates(), status)
	}
	if got := int(ex.immediate.GetStatus().GetCode()); got != status {
		return "", fmt.Errorf("ImmediateResponse %d (%s), want %d", got, bodyText(ex.immediate), status)
	}
	return fmt.Sprintf("ImmediateResponse %d", status), nil
}

func streamingMode(ctx context.Context, s *Suite) (string, error) {
	body := s.chatBody("Conformance: a request whose body arrives in pieces.", 4)
	ex, err := s.pick(ctx, request{body: body, chunk: max(1, len(body)/3)})
	if err != nil {
		return "", err
	}
	c, err := picked(ex)
	if err != nil {
		return "", err
	}
	if ex.early {
		return "", errors.New("answered before the whole body was sent (a header mutation before the body is complete)")
	}
	if err := sameMessages(body, ex.body); err != nil {
		return "", err
	}
	return fmt.Sprintf("FULL_DUPLEX_STREAMED: picked %s after the body, body returned in %d piece(s)", strings.Join(c, ","), len(ex.chunks)), nil
}

// sameMessages fails unless got is a JSON chat request with sent's model and messages.
func sameMessages(sent, got []byte) error {
	type req struct {
		Model    string            `json:"model"`
		Messages []json.RawMessage `json:"messages"`
	}
	var a, b req
	if err := json.Unmarshal(sent, &a); err != nil {
		return err
	}
	if err := json.Unmarshal(got, &b); err != nil {
		return fmt.Errorf("the body sent back is not JSON (%d bytes): %w", len(got), err)
	}
	if len(a.Messages) != len(b.Messages) {
		return fmt.Errorf("the body sent back has %d messages, want %d", len(b.Messages), len(a.Messages))
	}
	for i := range a.Messages {
		if string(compact(a.Messages[i])) != string(compact(b.Messages[i])) {
			return fmt.Errorf("message %d changed in the body sent back", i)
		}
	}
	return nil
}

func compact(m json.RawMessage) []byte {
	var v any
	if json.Unmarshal(m, &v) != nil {
		return m
	}
	b, _ := json.Marshal(v)
	return b
}

func destinationAgree(ctx context.Context, s *Suite) (string, error) {
	ex, err := s.pick(ctx, request{body: s.chatBody("Conformance: where does this go?", 4)})
	if err != nil {
		return "", err
	}
	if _, err := picked(ex); err != nil {
		return "", err
	}
	switch {
	case ex.header == "":
		return "", fmt.Errorf("no %s header (metadata says %q)", headerDestination, ex.meta)
	case ex.meta == "":
		return "", fmt.Errorf("no %s in %s dynamic metadata (header says %q)", headerDestination, lbNamespace, ex.header)
	case ex.header != ex.meta:
		return "", fmt.Errorf("header %q and metadata %q differ", ex.header, ex.meta)
	}
	return fmt.Sprintf("header and metadata both %q", ex.header), nil
}

func fallbacksInPool(ctx context.Context, s *Suite) (string, error) {
	ex, err := s.pick(ctx, request{body: s.chatBody("Conformance: which endpoints, in which order?", 4)})
	if err != nil {
		return "", err
	}
	c, err := picked(ex)
	if err != nil {
		return "", err
	}
	seen := map[string]bool{}
	for _, a := range c {
		hp, err := hostPort(a)
		switch {
		case err != nil || hp != a:
			return "", fmt.Errorf("%q in %v is not ip:port", a, c)
		case !s.pool[hp]:
			return "", fmt.Errorf("%s in %v is not in the pool", a, c)
		case seen[hp]:
			return "", fmt.Errorf("%s appears twice in %v", a, c)
		}
		seen[hp] = true
	}
	if !slices.Contains(s.cfg.Endpoints, c[0]) {
		return "", fmt.Errorf("the target %s is not a ready endpoint", c[0])
	}
	return fmt.Sprintf("%d candidate(s), all in the pool: %s", len(c), strings.Join(c, ",")), nil
}

func list(ss ...string) *structpb.Value {
	vs := make([]*structpb.Value, len(ss))
	for i, s := range ss {
		vs[i] = structpb.NewStringValue(s)
	}
	return structpb.NewListValue(&structpb.ListValue{Values: vs})
}

// withinSubset picks with subset hint v and fails unless every candidate is in want; round
// varies the prompt.
func (s *Suite) withinSubset(ctx context.Context, v *structpb.Value, want []string, round int) ([]string, error) {
	ex, err := s.pick(ctx, request{body: s.chatBody(fmt.Sprintf("Conformance %d: pick from this subset only.", round), 4), subset: v})
	if err != nil {
		return nil, err
	}
	c, err := picked(ex)
	if err != nil {
		return nil, err
	}
	for _, a := range c {
		if !slices.Contains(want, a) {
			return nil, fmt.Errorf("picked %v with the subset %v", c, want)
		}
	}
	return c, nil
}

// subsetRounds is how often each endpoint is asked for alone: an EPP that ignores the hint
// and picks at random among n endpoints passes with odds of (1/n)^(n*subsetRounds), 1 in 256
// for two.
const subsetRounds = 4

// alone asks for each endpoint alone as the subset hint (hint makes the value),
// subsetRounds times in rotating order, the prompts distinct so that no affinity holds a pick
// in place.
func (s *Suite) alone(ctx context.Context, hint func(string) *structpb.Value) error {
	n := len(s.cfg.Endpoints)
	for round := range subsetRounds {
		for i := range n {
			e := s.cfg.Endpoints[(i+round)%n] // each round in another order
			if _, err := s.withinSubset(ctx, hint(e), []string{e}, round); err != nil {
				return fmt.Errorf("subset %q: %w", e, err)
			}
		}
	}
	return nil
}

func subsetList(ctx context.Context, s *Suite) (string, error) {
	if err := s.alone(ctx, func(e string) *structpb.Value { return list(e) }); err != nil {
		return "", err
	}
	return fmt.Sprintf("each of the %d endpoints as a one-entry list subset was picked alone, %d times", len(s.cfg.Endpoints), subsetRounds), nil
}

// subsetString asks for each endpoint alone (so that an EPP ignoring the hint cannot pass by
// picking the one endpoint asked for), then for a pair.
func subsetString(ctx context.Context, s *Suite) (string, error) {
	if err := s.alone(ctx, structpb.NewStringValue); err != nil {
		return "", fmt.Errorf("string %w", err)
	}
	if len(s.cfg.Endpoints) < 2 {
		return fmt.Sprintf("the string subset %q was honoured", s.cfg.Endpoints[0]), nil
	}
	two := s.cfg.Endpoints[:2]
	if _, err := s.withinSubset(ctx, structpb.NewStringValue(strings.Join(two, ",")), two, 0); err != nil {
		return "", fmt.Errorf("string subset %q: %w", strings.Join(two, ","), err)
	}
	return fmt.Sprintf("each of the %d endpoints as a string subset (%d times), and %q, were honoured", len(s.cfg.Endpoints), subsetRounds, strings.Join(two, ",")), nil
}

func subsetEmpty(ctx context.Context, s *Suite) (string, error) {
	ex, err := s.pick(ctx, request{body: s.chatBody("Conformance: an empty subset.", 4), subset: list()})
	if err != nil {
		return "", err
	}
	return wantStatus(ex, 503)
}

// unsatisfiable is an address in TEST-NET-1 (RFC 5737): never an endpoint of a pool.
const unsatisfiable = "192.0.2.1:8000"

func subsetUnsatisfiable(ctx context.Context, s *Suite) (string, error) {
	ex, err := s.pick(ctx, request{body: s.chatBody("Conformance: a subset outside the pool.", 4), subset: list(unsatisfiable)})
	if err != nil {
		return "", err
	}
	return wantStatus(ex, 503)
}

func noReadyEndpoint(ctx context.Context, s *Suite) (string, error) {
	if s.cfg.Unready == "" {
		return "", errSkip("pass --unready-endpoint, an endpoint of the EPP's pool that is down")
	}
	ex, err := s.pick(ctx, request{body: s.chatBody("Conformance: nothing ready.", 4), subset: list(s.cfg.Unready)})
	if err != nil {
		return "", err
	}
	d, err := wantStatus(ex, 503)
	if err != nil {
		return "", fmt.Errorf("with only %s (down) in the subset: %w", s.cfg.Unready, err)
	}
	return d + " with only a down endpoint eligible", nil
}

func shed(ctx context.Context, s *Suite) (string, error) {
	if s.cfg.ShedHeader == "" {
		return "", errSkip("pass --shed-header 'name: value', a header that makes a request sheddable")
	}
	name, value, ok := strings.Cut(s.cfg.ShedHeader, ":")
	if !ok {
		return "", fmt.Errorf("--shed-header %q is not 'name: value'", s.cfg.ShedHeader)
	}
	hdr := map[string]string{strings.TrimSpace(name): strings.TrimSpace(value)}
	// Picks held open (no response yet) are load on the pool: hold more and more until the
	// EPP sheds, or give up.
	var held []*stream
	defer func() {
		for _, x := range held {
			x.close()
		}
	}()
	limit := 64 * len(s.cfg.Endpoints)
	for i := range limit {
		x, err := s.open(ctx)
		if err != nil {
			return "", err
		}
		held = append(held, x)
		ex, err := x.requestPath(request{body: s.chatBody(fmt.Sprintf("Conformance: sheddable request %d. %s", i, filler(i, 2000)), 256), header: hdr}, s.cfg.Timeout)
		if err != nil {
			return "", err
		}
		if ex.immediate == nil {
			continue
		}
		if code := ex.immediate.GetStatus().GetCode(); code != 429 {
			return "", fmt.Errorf("ImmediateResponse %d where a shed (429) was due", code)
		}
		return fmt.Sprintf("429 after %d sheddable picks held open", i), nil
	}
	return "", fmt.Errorf("no 429 with %d sheddable picks held open", limit)
}

// engineAnswer is a non-streamed completion body, as an engine would send it.
const engineAnswer = `{"id":"cmpl-conformance","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}],"usage":{"prompt_tokens":8,"completion_tokens":1,"total_tokens":9}}`

func servedAccepted(ctx context.Context, s *Suite) (string, error) {
	x, err := s.open(ctx)
	if err != nil {
		return "", err
	}
	defer x.close()
	ex, err := x.requestPath(request{body: s.chatBody("Conformance: served by a fallback.", 4)}, s.cfg.Timeout)
	if err != nil {
		return "", err
	}
	c, err := picked(ex)
	if err != nil {
		return "", err
	}
	served := c[len(c)-1] // as if every earlier candidate had failed
	half := len(engineAnswer) / 2
	got, err := x.responsePath(served, [][]byte{[]byte(engineAnswer[:half]), []byte(engineAnswer[half:])}, s.cfg.Timeout)
	if err != nil {
		return "", err
	}
	if string(got) != engineAnswer {
		return "", fmt.Errorf("the response body came back changed: %q", got)
	}
	return fmt.Sprintf("%s=%s accepted; response streamed back intact; stream ended cleanly", servedKey, served), nil
}

// filler is n bytes of varied words, distinct per seed.
func filler(seed, n int) string {
	words := []string{"cache", "prefix", "engine", "token", "block", "route", "picker", "gateway", "pool", "stream", "model", "request"}
	var b strings.Builder
	for i := 0; b.Len() < n; i++ {
		fmt.Fprintf(&b, "%s%d ", words[(i*7+seed)%len(words)], (i*31+seed*17)%1000)
	}
	return b.String()
}

// prose is n bytes of plain words (about a token each): a large body whose prompt still
// fits a model's context.
func prose(n int) string {
	words := []string{"the", "cache", "keeps", "every", "prefix", "that", "an", "engine", "has", "seen", "and", "routes", "again"}
	var b strings.Builder
	for i := 0; b.Len() < n; i++ {
		b.WriteString(words[i%len(words)])
		b.WriteByte(' ')
	}
	return b.String()
}

func bodyChunks(ctx context.Context, s *Suite) (string, error) {
	body := s.chatBody("Conformance: a large body. "+prose(80<<10), 1)
	ex, err := s.pick(ctx, request{body: body, chunk: 16 << 10})
	if err != nil {
		return "", err
	}
	if _, err := picked(ex); err != nil {
		return "", err
	}
	biggest := 0
	for _, n := range ex.chunks {
		biggest = max(biggest, n)
	}
	if biggest > maxChunk {
		return "", fmt.Errorf("a body piece of %d bytes (limit %d)", biggest, maxChunk)
	}
	if err := sameMessages(body, ex.body); err != nil {
		return "", err
	}
	return fmt.Sprintf("%d-byte body sent in 16 KiB pieces, returned in %d piece(s) of at most %d bytes", len(body), len(ex.chunks), biggest), nil
}

func clientGone(ctx context.Context, s *Suite) (string, error) {
	body := s.chatBody("Conformance: a client that goes away. "+filler(2, 4000), 4)
	points := []string{"after the request headers", "mid body", "after the pick", "after the response headers"}
	var wg sync.WaitGroup
	errs := make(chan error, 5*len(points))
	for round := range 5 {
		for i, at := range points {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := s.abandon(ctx, i, body); err != nil {
					errs <- fmt.Errorf("round %d, %s: %w", round, at, err)
				}
			}()
		}
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return "", err
	}
	if _, err := healthCheck("readiness")(ctx, s); err != nil {
		return "", fmt.Errorf("after %d abandoned streams: %w", 5*len(points), err)
	}
	if _, err := servedAccepted(ctx, s); err != nil {
		return "", fmt.Errorf("after %d abandoned streams: %w", 5*len(points), err)
	}
	return fmt.Sprintf("%d streams abandoned at %d points; still ready and picking", 5*len(points), len(points)), nil
}

// abandon opens a stream and cancels it at point (0: after the headers, 1: mid body, 2:
// after the pick, 3: after the response headers).
func (s *Suite) abandon(ctx context.Context, point int, body []byte) error {
	x, err := s.open(ctx)
	if err != nil {
		return err
	}
	defer x.close()
	switch point {
	case 0, 1:
		if err := x.send(requestHeaders(request{body: body})); err != nil {
			return err
		}
		if point == 1 {
			return x.send(&extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_RequestBody{RequestBody: &extprocv3.HttpBody{Body: body[:len(body)/2]}}})
		}
		return nil
	}
	ex, err := x.requestPath(request{body: body}, s.cfg.Timeout)
	if err != nil {
		return err
	}
	c, err := picked(ex)
	if err != nil || point == 2 {
		return err
	}
	// Response headers as Envoy sends them (with :status): the client goes away after them.
	return x.send(responseHeaders(c[0]))
}
