package simtest

import (
	"net"
	"net/http"
	"testing"

	"github.com/kvgate/kvgate/engine/sim"
)

// TestStartServesUntilTheTestEnds: the server answers while its test runs and its port is
// closed once the test's cleanup has run.
func TestStartServesUntilTheTestEnds(t *testing.T) {
	var addr string
	t.Run("inner", func(t *testing.T) {
		s := Start(t, sim.ServerConfig{Addr: "127.0.0.1:0"}, nil, nil)
		addr = s.Addr()
		resp, err := http.Get(s.URL() + "/v1/models")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("/v1/models: %d", resp.StatusCode)
		}
	})
	if c, err := net.Dial("tcp", addr); err == nil {
		c.Close()
		t.Fatalf("%s still accepts connections after its test ended", addr)
	}
}
