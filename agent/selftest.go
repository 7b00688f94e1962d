package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"syscall"
	"time"

	"github.com/cordon-ir/cordon/internal/flowcut"
	"github.com/cordon-ir/cordon/pkg/policy"
	"github.com/cordon-ir/cordon/pkg/wire"
)

// selfTestTimeout bounds each half of the self-test.
const selfTestTimeout = 3 * time.Second

// errLeak says that the self-test found traffic the policy forbids getting
// through: the rules are in place but do not contain the host.
var errLeak = errors.New("isolation self-test failed")

// selfTest checks, once the rules are verified, that isolation works as
// seen from the host: the controller still answers on the agent's
// connection (an SSH keepalive round trip), and a datagram that the policy
// forbids, to the controller's own address (forbiddenProbe), does not
// leave the host. It returns what it found, for the order's report, and
// errLeak (wrapped) when the forbidden datagram left. A controller that
// does not answer is not an error: the host stays isolated (fail closed)
// and the agent reconnects.
func (a *Agent) selfTest(ctx context.Context, pol policy.Policy) (string, error) {
	conn, remote, _ := a.current()
	var found []string
	switch {
	case conn == nil:
		found = append(found, "controller: not connected at the time; the agent keeps dialling the controller endpoints the rules allow")
	default:
		start := time.Now()
		errc := make(chan error, 1)
		go func() {
			_, _, err := conn.SendRequest(wire.ReqKeepalive, true, nil)
			errc <- err
		}()
		select {
		case err := <-errc:
			if err != nil {
				found = append(found, "controller: the connection failed ("+err.Error()+"); the host stays isolated and the agent reconnects")
			} else {
				found = append(found, fmt.Sprintf("controller answered in %v", time.Since(start).Round(time.Millisecond)))
			}
		case <-time.After(selfTestTimeout):
			found = append(found, fmt.Sprintf("controller: no answer within %v; the host stays isolated and the agent reconnects", selfTestTimeout))
		case <-ctx.Done():
			return "", ctx.Err()
		}
	}
	probe, ok := forbiddenProbe(pol, remote)
	if !ok {
		found = append(found, "forbidden traffic: nothing to try (the controller's address is allowlisted, or unknown)")
		return joinFound(found), nil
	}
	if flowcut.LocalAddrs()(probe.Addr()) {
		// A datagram to the host's own address goes over loopback,
		// which the rules allow.
		found = append(found, "forbidden traffic: nothing to try (the controller's address is this host's own)")
		return joinFound(found), nil
	}
	// One UDP datagram to a port the policy does not allow. Dropped by
	// the host's output rules, it fails at once with EPERM (a drop on
	// the output hook is returned to the sender); sent, it has left the
	// host, which the policy forbids. TCP would not do: a dropped SYN is
	// retried until connect times out.
	c, err := net.Dial("udp", probe.String())
	if err != nil {
		return joinFound(append(found, "forbidden udp "+probe.String()+": "+err.Error())), nil
	}
	defer c.Close()
	_, err = c.Write([]byte("cordon isolation self-test\n"))
	switch {
	case errors.Is(err, syscall.EPERM) || errors.Is(err, syscall.EACCES):
		found = append(found, "forbidden udp "+probe.String()+": dropped by the host's rules")
	case err == nil:
		return joinFound(append(found, "forbidden udp "+probe.String()+": sent")),
			fmt.Errorf("%w: a datagram to %s, which the policy forbids, left the host", errLeak, probe)
	default:
		found = append(found, "forbidden udp "+probe.String()+": "+err.Error())
	}
	return joinFound(found), nil
}

// forbiddenProbe picks a destination the policy forbids that is known to
// be routable and harmless to try: UDP port 9 (discard) of the
// controller's own address (the one the agent is connected to, else the
// policy's first); the policy allows the controller only over TCP. None
// when the address is allowlisted (all of it is then allowed).
func forbiddenProbe(pol policy.Policy, remote netip.AddrPort) (netip.AddrPort, bool) {
	addr := remote.Addr().Unmap()
	if !remote.IsValid() {
		if len(pol.Controllers) == 0 {
			return netip.AddrPort{}, false
		}
		addr = pol.Controllers[0].Addr
	}
	for _, a := range pol.Allow {
		if a.Contains(addr) {
			return netip.AddrPort{}, false
		}
	}
	return netip.AddrPortFrom(addr, 9), true
}

func joinFound(found []string) string {
	return strings.Join(found, "; ")
}
