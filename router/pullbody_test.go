package router

import (
	"encoding/json"
	"testing"
)

// FuzzPullBody: any request body either gets a remote_kv_source naming the source at the port,
// with every other top-level field kept, or an error; never a panic.
func FuzzPullBody(f *testing.F) {
	f.Add([]byte(`{"model":"m","messages":[]}`))
	f.Add([]byte(`{"model":"m","kv_transfer_params":{"keep":1}}`))
	f.Add([]byte(`{"kv_transfer_params":null}`))
	f.Add([]byte(`{"kv_transfer_params":"x"}`))
	f.Add([]byte(`[1,2]`))
	d := &Decision{Pull: &Pull{From: Endpoint{Name: "a", Address: "10.0.0.5:8000"}}}
	f.Fuzz(func(t *testing.T, body []byte) {
		out, err := d.PullBody(body, 7777)
		if err != nil {
			return
		}
		var in, got map[string]json.RawMessage
		if json.Unmarshal(body, &in) != nil {
			t.Fatalf("rewrote a body that is not a JSON object: %q", body)
		}
		if err := json.Unmarshal(out, &got); err != nil {
			t.Fatalf("result %q: %v", out, err)
		}
		for k := range in {
			if _, ok := got[k]; !ok {
				t.Fatalf("lost field %q", k)
			}
		}
		var kv struct {
			Src struct {
				Host string `json:"remote_host"`
				Port int    `json:"remote_port"`
			} `json:"remote_kv_source"`
		}
		if err := json.Unmarshal(got["kv_transfer_params"], &kv); err != nil || kv.Src.Host != "10.0.0.5" || kv.Src.Port != 7777 {
			t.Fatalf("kv_transfer_params %s (%v)", got["kv_transfer_params"], err)
		}
	})
}
