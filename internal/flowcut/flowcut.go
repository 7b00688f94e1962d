// Package flowcut removes from the kernel's connection tracking table the
// flows an isolation policy does not allow, for Cordon's host firewall
// plugins. Drop rules stop the packets of such a flow; deleting its
// conntrack entry also keeps a later rule that accepts "established"
// traffic (of the host's own firewall, after release) from taking it up
// again, and makes the kernel forget NAT state the attacker set up.
package flowcut

import (
	"net"
	"net/netip"

	"github.com/cordon-ir/cordon/pkg/policy"
)

// Tuple is one direction of a tracked flow, as conntrack(8) prints it.
type Tuple struct {
	Src, Dst         netip.Addr
	SrcPort, DstPort uint16
}

// Flow is a conntrack entry: the original direction (from the side that
// opened it) and the reply direction, which differ under NAT.
type Flow struct {
	Proto uint8 // IP protocol number: 6 is TCP
	Orig  Tuple
	Reply Tuple
}

// ProtoTCP is the IP protocol number of TCP (RFC 9293).
const ProtoTCP = 6

// Keep reports whether the isolation policy eff (canonical) lets fl go on:
// traffic over loopback (both ends local), to or from an allowlisted CIDR,
// or a TCP connection that a local address opened to a controller
// endpoint's address and port, the only kind the rules let the
// controller's address talk over. A flow the other way round (from the
// controller's address and port to the host) is not kept: that is what
// someone who took the controller's address would open. Under NAT the
// original and reply directions differ; either may show the flow as the
// host's.
func Keep(fl Flow, eff policy.Policy, local func(netip.Addr) bool) bool {
	for _, t := range []Tuple{fl.Orig, fl.Reply} {
		if t.Src.IsLoopback() || t.Dst.IsLoopback() || (local(t.Src) && local(t.Dst)) {
			return true
		}
		for _, a := range eff.Allow {
			if a.Contains(t.Src) || a.Contains(t.Dst) {
				return true
			}
		}
	}
	if fl.Proto != ProtoTCP {
		return false
	}
	for _, e := range eff.Controllers {
		if (fl.Orig.Dst == e.Addr && fl.Orig.DstPort == e.Port && local(fl.Orig.Src)) ||
			(fl.Reply.Src == e.Addr && fl.Reply.SrcPort == e.Port && local(fl.Reply.Dst)) {
			return true
		}
	}
	return false
}

// LocalAddrs returns a test for the host's own addresses (those of the
// caller's network namespace). When they cannot be listed it takes every
// address as local, which keeps more flows rather than cutting the agent's
// own.
func LocalAddrs() func(netip.Addr) bool {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return func(netip.Addr) bool { return true }
	}
	set := map[netip.Addr]bool{}
	for _, a := range addrs {
		if p, err := netip.ParsePrefix(a.String()); err == nil {
			set[p.Addr().Unmap()] = true
		}
	}
	return func(a netip.Addr) bool { return set[a.Unmap()] }
}
