package gateway_test

// routerLoad is the load the router still holds for requests it routed: requests, prefill
// tokens and decode blocks, summed over the endpoints. It is 0 once every decision is done.
func routerLoad(f *fixture) float64 {
	sum := int64(0)
	for _, l := range f.rt.Load() {
		sum += l.Requests + l.PrefillTokens + l.DecodeBlocks
	}
	return float64(sum)
}
