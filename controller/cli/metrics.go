package cli

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strconv"

	"github.com/cordon-ir/cordon/controller/server"
)

// checkMetricsListen checks --metrics-listen: "" (no metrics) or host:port.
func checkMetricsListen(addr string) error {
	if addr == "" {
		return nil
	}
	return checkListen("--metrics-listen", addr, "127.0.0.1:9469")
}

// checkListen checks a listen address given to flag: host:port, the port
// a number (0 to 65535), the host empty (every address) or anything
// net.Listen takes.
func checkListen(flag, addr, example string) error {
	_, port, err := net.SplitHostPort(addr)
	if err != nil || port == "" {
		return usageErr("%s %q: want host:port, such as %s", flag, addr, example)
	}
	if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		return usageErr("%s %q: port %q is not a port number", flag, addr, port)
	}
	return nil
}

// serveMetrics listens on addr and serves srv's Prometheus metrics there
// until ctx ends or stop is called; stop returns once the listener is shut.
// A metrics listener that fails later is logged; the controller goes on.
func serveMetrics(ctx context.Context, log *slog.Logger, srv *server.Server, addr string) (stop func(), err error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("--metrics-listen: listen on %s: %w", addr, err)
	}
	if ap, err := netip.ParseAddrPort(ln.Addr().String()); err == nil && !ap.Addr().IsLoopback() {
		log.Warn("the metrics endpoint has no authentication and listens beyond localhost: keep it on a management network", "addr", ln.Addr().String())
	}
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.ServeMetrics(ctx, ln); err != nil {
			log.Error("metrics listener stopped; the controller goes on without it", "addr", ln.Addr().String(), "err", err)
		}
	}()
	return func() { cancel(); <-done }, nil
}
