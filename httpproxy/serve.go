package httpproxy

import (
	"context"
	"net"
	"net/http"
	"time"
)

// ShutdownGrace is how long Serve lets open requests finish once its context ends.
const ShutdownGrace = 10 * time.Second

// Serve serves srv on lis (over TLS when srv.TLSConfig is set) until ctx ends, then stops
// accepting and gives open requests ShutdownGrace before closing them. It returns the
// server's error if serving fails first, nil after a shutdown.
func Serve(ctx context.Context, srv *http.Server, lis net.Listener) error {
	errc := make(chan error, 1)
	go func() {
		if srv.TLSConfig != nil {
			errc <- srv.ServeTLS(lis, "", "")
			return
		}
		errc <- srv.Serve(lis)
	}()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), ShutdownGrace)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		_ = srv.Close()
	}
	<-errc
	return nil
}
