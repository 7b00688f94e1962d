package flowcut

import (
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Available returns nil when conntrack entries can be listed and deleted
// here: the conntrack netlink interface (nfnetlink_conntrack, as
// conntrack(8) uses it) answers in the caller's network namespace.
func Available() error {
	h, err := netlink.NewHandle(unix.NETLINK_NETFILTER)
	if err != nil {
		return fmt.Errorf("conntrack netlink: %w", err)
	}
	h.Close()
	return nil
}

// Cut deletes the conntrack entries of one IP family (IPv6 when v6) of the
// caller's network namespace for which keep returns false, and returns how
// many it deleted.
func Cut(v6 bool, keep func(Flow) bool) (uint64, error) {
	fam, name := netlink.InetFamily(netlink.FAMILY_V4), "IPv4"
	if v6 {
		fam, name = netlink.FAMILY_V6, "IPv6"
	}
	n, err := netlink.ConntrackDeleteFilters(netlink.ConntrackTable, fam, filter{keep})
	if err != nil {
		return uint64(n), fmt.Errorf("delete %s conntrack entries: %w", name, err)
	}
	return uint64(n), nil
}

// filter matches the entries to delete: those keep rejects.
type filter struct{ keep func(Flow) bool }

func (f filter) MatchConntrackFlow(c *netlink.ConntrackFlow) bool {
	return !f.keep(Flow{Proto: c.Forward.Protocol, Orig: toTuple(c.Forward), Reply: toTuple(c.Reverse)})
}

func toTuple(t netlink.IPTuple) Tuple {
	return Tuple{Src: ipAddr(t.SrcIP), Dst: ipAddr(t.DstIP), SrcPort: t.SrcPort, DstPort: t.DstPort}
}

func ipAddr(ip net.IP) netip.Addr {
	a, _ := netip.AddrFromSlice(ip)
	return a.Unmap()
}
