package main

import (
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// conntrackTable is the kernel's conntrack table reached over netfilter
// netlink, as conntrack(8) reaches it; it works in the caller's network
// namespace.
type conntrackTable struct{}

func (conntrackTable) available() error {
	h, err := netlink.NewHandle(unix.NETLINK_NETFILTER)
	if err != nil {
		return fmt.Errorf("conntrack netlink: %w", err)
	}
	h.Close()
	return nil
}

func (conntrackTable) cut(f family, keep func(flow) bool) (uint64, error) {
	fam := netlink.InetFamily(netlink.FAMILY_V4)
	if f == ipv6 {
		fam = netlink.FAMILY_V6
	}
	n, err := netlink.ConntrackDeleteFilters(netlink.ConntrackTable, fam, flowFilter{keep})
	if err != nil {
		return uint64(n), fmt.Errorf("delete %s conntrack entries: %w", f, err)
	}
	return uint64(n), nil
}

// flowFilter matches the entries to delete: those keep rejects.
type flowFilter struct{ keep func(flow) bool }

func (ff flowFilter) MatchConntrackFlow(c *netlink.ConntrackFlow) bool {
	return !ff.keep(flow{
		proto: c.Forward.Protocol,
		orig:  toTuple(c.Forward),
		reply: toTuple(c.Reverse),
	})
}

func toTuple(t netlink.IPTuple) tuple {
	return tuple{src: ipAddr(t.SrcIP), dst: ipAddr(t.DstIP), sport: t.SrcPort, dport: t.DstPort}
}

func ipAddr(ip net.IP) netip.Addr {
	a, _ := netip.AddrFromSlice(ip)
	return a.Unmap()
}
