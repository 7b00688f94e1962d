package main

import (
	"bufio"
	"bytes"
	"encoding/hex"
	"net"
	"net/netip"
	"strings"

	"github.com/cordon-ir/cordon/pkg/policy"
)

// flowTable is the kernel's connection tracking table as the plugin uses it.
type flowTable interface {
	// available returns nil when conntrack entries can be deleted here.
	available() error
	// cut deletes family f's entries for which keep returns false and
	// returns how many it deleted.
	cut(f family, keep func(flow) bool) (uint64, error)
}

// tuple is one direction of a tracked flow.
type tuple struct {
	src, dst     netip.Addr
	sport, dport uint16
}

// flow is a conntrack entry: the original direction (from the side that
// opened it) and the reply direction, which differ under NAT.
type flow struct {
	proto uint8 // IP protocol number: 6 is TCP
	orig  tuple
	reply tuple
}

const protoTCP = 6

// keepFlow reports whether the isolation policy eff lets fl go on: traffic
// over loopback (both ends local), to or from an allowlisted CIDR, or a TCP
// connection that a local address opened to a controller endpoint's address
// and port, the only kind the rules let the controller's address talk over.
// A flow the other way round (from the controller's address and port to the
// host) is cut: that is what someone who took the controller's address
// would open. Under NAT the original and reply directions differ; either
// may show the flow as the host's.
func keepFlow(fl flow, eff policy.Policy, local func(netip.Addr) bool) bool {
	for _, t := range []tuple{fl.orig, fl.reply} {
		if t.src.IsLoopback() || t.dst.IsLoopback() || (local(t.src) && local(t.dst)) {
			return true
		}
		for _, a := range eff.Allow {
			if a.Contains(t.src) || a.Contains(t.dst) {
				return true
			}
		}
	}
	if fl.proto != protoTCP {
		return false
	}
	for _, e := range eff.Controllers {
		if (fl.orig.dst == e.Addr && fl.orig.dport == e.Port && local(fl.orig.src)) ||
			(fl.reply.src == e.Addr && fl.reply.sport == e.Port && local(fl.reply.dst)) {
			return true
		}
	}
	return false
}

// localAddrs returns a test for the host's own addresses. When they cannot be
// listed it takes every address as local, which keeps more flows rather than
// cutting the agent's own.
func localAddrs() func(netip.Addr) bool {
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

// firstIPv6 returns the first address in /proc/net/if_inet6 text that is not
// on the loopback interface, or "" when there is none. Each line is: address
// (32 hex digits), interface index, prefix length, scope, flags, interface
// name (see the kernel's Documentation/networking/proc_net_if_inet6).
func firstIPv6(data []byte) string {
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 6 || f[5] == "lo" {
			continue
		}
		raw, err := hex.DecodeString(f[0])
		if err != nil || len(raw) != 16 {
			continue
		}
		a := netip.AddrFrom16([16]byte(raw))
		if a.IsLoopback() {
			continue
		}
		return a.String() + "%" + f[5]
	}
	return ""
}
