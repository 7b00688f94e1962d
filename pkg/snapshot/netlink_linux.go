package snapshot

import (
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"strconv"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// conntrackReady says why conntrack cannot be read without loading a
// kernel module, or nil when it can.
func conntrackReady() error {
	mods, err := readFile("/proc/modules")
	if err != nil {
		if !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		// No loadable modules: conntrack is built in or absent.
		if _, err := readFile("/proc/sys/net/netfilter/nf_conntrack_max"); err != nil {
			return errors.New("the kernel has no connection tracking (nf_conntrack)")
		}
		return nil
	}
	for line := range bytes.SplitSeq(mods, []byte{'\n'}) {
		if bytes.HasPrefix(line, []byte("nf_conntrack_netlink ")) {
			return nil
		}
	}
	var uts unix.Utsname
	if unix.Uname(&uts) == nil {
		b, err := readFile("/lib/modules/" + unix.ByteSliceToString(uts.Release[:]) + "/modules.builtin")
		if err == nil && bytes.Contains(b, []byte("/nf_conntrack_netlink.ko")) {
			return nil
		}
	}
	if !bytes.Contains(mods, []byte("nf_conntrack ")) {
		return errors.New("nf_conntrack is not loaded: the host tracks no connections; the snapshot does not load kernel modules")
	}
	return errors.New("nf_conntrack_netlink is not loaded, and reading the table over netlink would load it; the snapshot does not load kernel modules")
}

// conntrackTCPStates names enum tcp_conntrack
// (include/uapi/linux/netfilter/nf_conntrack_tcp.h).
var conntrackTCPStates = [...]string{"NONE", "SYN_SENT", "SYN_RECV", "ESTABLISHED", "FIN_WAIT", "CLOSE_WAIT", "LAST_ACK", "TIME_WAIT", "CLOSE", "SYN_SENT2"}

// collectConntrack dumps the conntrack table of every namespace.
func (c *collection) collectConntrack(nss []*netNS) {
	a := c.art[ConntrackArtifact]
	defer a.close()
	if err := conntrackReady(); err != nil {
		for _, ns := range nss {
			a.errorf("%s: %v", ns.label(), err)
		}
		return
	}
	var line []byte
	for i, ns := range nss {
		if c.ctx.Err() != nil {
			a.cutShort(fmt.Sprintf("%d of %d network namespaces read", i, len(nss)))
			return
		}
		if ns.nsfd < 0 {
			a.errorf("%s: %s", ns.label(), ns.err)
			continue
		}
		h, err := netlink.NewHandleAt(netns.NsHandle(ns.nsfd), unix.NETLINK_NETFILTER)
		if err != nil {
			a.errorf("%s: netlink: %v", ns.label(), err)
			continue
		}
		// One dump for both families (AF_UNSPEC): each dump walks the
		// whole hash table, shared by every namespace.
		{
			flows, err := h.ConntrackTableList(netlink.ConntrackTable, unix.AF_UNSPEC)
			if err != nil {
				if errors.Is(err, netlink.ErrDumpInterrupted) {
					a.errorf("%s: conntrack dump interrupted (the table changed while read): entries may be missing or repeated", ns.label())
				} else {
					a.errorf("%s: conntrack: %v", ns.label(), err)
				}
			}
			for _, f := range flows {
				r := ConntrackRecord{
					NetNS: ns.inode, NetNSName: ns.name,
					Family:         famName(int(f.FamilyType)),
					Protocol:       f.Forward.Protocol,
					Original:       tuple(f.Forward),
					Reply:          tuple(f.Reverse),
					Mark:           f.Mark,
					Zone:           f.Zone,
					TimeoutSeconds: f.TimeOut,
					StartUnixNS:    f.TimeStart,
				}
				if len(f.Labels) > 0 && bytes.Count(f.Labels, []byte{0}) != len(f.Labels) {
					r.Labels = hex.EncodeToString(f.Labels)
				}
				if t, ok := f.ProtoInfo.(*netlink.ProtoInfoTCP); ok {
					if int(t.State) < len(conntrackTCPStates) {
						r.TCPState = conntrackTCPStates[t.State]
					} else {
						r.TCPState = strconv.Itoa(int(t.State))
					}
				}
				line = appendJSON(line[:0], &r)
				if !a.lines(line) {
					h.Close()
					return
				}
			}
		}
		h.Close()
	}
}

func tuple(t netlink.IPTuple) ConntrackTuple {
	return ConntrackTuple{Src: ipString(t.SrcIP), Dst: ipString(t.DstIP), SrcPort: t.SrcPort, DstPort: t.DstPort, Packets: t.Packets, Bytes: t.Bytes}
}

func ipString(ip net.IP) string {
	if ip == nil {
		return ""
	}
	return ip.String()
}

func famName(f int) string {
	switch f {
	case unix.AF_INET:
		return "inet"
	case unix.AF_INET6:
		return "inet6"
	}
	return strconv.Itoa(f)
}

// collectNetlink writes the interfaces, routes and neighbours of every
// namespace, with the raw /proc/net text they have.
func (c *collection) collectNetlink(nss []*netNS) {
	ra, na, ia := c.art[RoutesArtifact], c.art[NeighboursArtifact], c.art[InterfacesArtifact]
	defer ra.close()
	defer na.close()
	defer ia.close()
	var line []byte
	for i, ns := range nss {
		if c.ctx.Err() != nil {
			what := fmt.Sprintf("%d of %d network namespaces read", i, len(nss))
			ra.cutShort(what)
			na.cutShort(what)
			ia.cutShort(what)
			return
		}
		if ns.nsfd < 0 {
			for _, a := range []*artifact{ra, na, ia} {
				a.errorf("%s: %s", ns.label(), ns.err)
			}
			continue
		}
		bp := bufPool.Get().(*[]byte)
		for _, f := range []struct {
			a    *artifact
			file string
		}{{ra, "route"}, {ra, "ipv6_route"}, {na, "arp"}, {ia, "dev"}} {
			b, err := ns.readNetFile(f.file, *bp)
			*bp = b[:0]
			if err != nil {
				if !gone(err) {
					f.a.errorf("%s: /proc/net/%s: %v", ns.label(), f.file, err)
				}
				continue
			}
			f.a.raw(ns.rawPath(f.file), b)
		}
		bufPool.Put(bp)

		h, err := netlink.NewHandleAt(netns.NsHandle(ns.nsfd), unix.NETLINK_ROUTE)
		if err != nil {
			for _, a := range []*artifact{ra, na, ia} {
				a.errorf("%s: netlink: %v", ns.label(), err)
			}
			continue
		}
		names := map[int]string{}
		links, err := h.LinkList()
		if err != nil {
			ia.errorf("%s: links: %v", ns.label(), err)
		}
		addrs, aerr := h.AddrList(nil, netlink.FAMILY_ALL)
		if aerr != nil {
			ia.errorf("%s: addresses: %v", ns.label(), aerr)
		}
		byLink := map[int][]InterfaceAddr{}
		for _, ad := range addrs {
			if ad.IPNet == nil {
				continue
			}
			fam := unix.AF_INET6
			if ad.IP.To4() != nil {
				fam = unix.AF_INET
			}
			byLink[ad.LinkIndex] = append(byLink[ad.LinkIndex], InterfaceAddr{
				Address: ad.IPNet.String(), Family: famName(fam), Scope: netlink.Scope(ad.Scope).String(),
				Label: ad.Label, ValidLifetime: ad.ValidLft, PreferredLifetime: ad.PreferedLft,
			})
		}
		for _, l := range links {
			at := l.Attrs()
			names[at.Index] = at.Name
			r := InterfaceRecord{
				NetNS: ns.inode, NetNSName: ns.name,
				Index: at.Index, Name: at.Name, Type: l.Type(), MTU: at.MTU,
				Flags: linkFlags(at.RawFlags), OperState: at.OperState.String(),
				MasterIndex: at.MasterIndex, PeerNetNSID: at.NetNsID,
				Addresses: byLink[at.Index],
			}
			if r.Addresses == nil {
				r.Addresses = []InterfaceAddr{}
			}
			if len(at.HardwareAddr) > 0 {
				r.HardwareAddr = at.HardwareAddr.String()
			}
			if s := at.Statistics; s != nil {
				r.Stats = InterfaceStats{RxBytes: s.RxBytes, TxBytes: s.TxBytes, RxPackets: s.RxPackets, TxPackets: s.TxPackets,
					RxErrors: s.RxErrors, TxErrors: s.TxErrors, RxDropped: s.RxDropped, TxDropped: s.TxDropped}
			}
			line = appendJSON(line[:0], &r)
			ia.lines(line)
		}

		routes, err := h.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Table: unix.RT_TABLE_UNSPEC}, netlink.RT_FILTER_TABLE)
		if err != nil {
			ra.errorf("%s: routes: %v", ns.label(), err)
		}
		for _, rt := range routes {
			if rt.Family != unix.AF_INET && rt.Family != unix.AF_INET6 {
				continue
			}
			r := RouteRecord{
				NetNS: ns.inode, NetNSName: ns.name,
				Family: famName(rt.Family), Table: rt.Table, Type: routeType(rt.Type),
				Dst: "default", Gateway: ipString(rt.Gw), PrefSrc: ipString(rt.Src),
				Dev: names[rt.LinkIndex], InterfaceIndex: rt.LinkIndex,
				Protocol: rt.Protocol.String(), Scope: rt.Scope.String(), Metric: rt.Priority,
			}
			if rt.Dst != nil {
				if ones, _ := rt.Dst.Mask.Size(); ones != 0 || !rt.Dst.IP.IsUnspecified() {
					r.Dst = rt.Dst.String()
				}
			}
			for _, nh := range rt.MultiPath {
				r.Multipath = append(r.Multipath, NextHop{Gateway: ipString(nh.Gw), InterfaceIndex: nh.LinkIndex, Weight: nh.Hops + 1})
			}
			line = appendJSON(line[:0], &r)
			ra.lines(line)
		}

		for _, fam := range []int{unix.AF_INET, unix.AF_INET6} {
			neighs, err := h.NeighList(0, fam)
			if err != nil {
				na.errorf("%s: neighbours %s: %v", ns.label(), famName(fam), err)
			}
			for _, n := range neighs {
				r := NeighbourRecord{
					NetNS: ns.inode, NetNSName: ns.name,
					Family: famName(fam), IP: ipString(n.IP), Dev: names[n.LinkIndex], InterfaceIndex: n.LinkIndex,
					State: neighState(n.State), Router: n.Flags&unix.NTF_ROUTER != 0,
				}
				if len(n.HardwareAddr) > 0 {
					r.LLAddr = n.HardwareAddr.String()
				}
				line = appendJSON(line[:0], &r)
				na.lines(line)
			}
		}
		h.Close()
	}
}

var linkFlagNames = []struct {
	bit  uint32
	name string
}{
	{unix.IFF_UP, "up"}, {unix.IFF_BROADCAST, "broadcast"}, {unix.IFF_DEBUG, "debug"},
	{unix.IFF_LOOPBACK, "loopback"}, {unix.IFF_POINTOPOINT, "pointopoint"}, {unix.IFF_NOTRAILERS, "notrailers"},
	{unix.IFF_RUNNING, "running"}, {unix.IFF_NOARP, "noarp"}, {unix.IFF_PROMISC, "promisc"},
	{unix.IFF_ALLMULTI, "allmulti"}, {unix.IFF_MASTER, "master"}, {unix.IFF_SLAVE, "slave"},
	{unix.IFF_MULTICAST, "multicast"}, {unix.IFF_PORTSEL, "portsel"}, {unix.IFF_AUTOMEDIA, "automedia"},
	{unix.IFF_DYNAMIC, "dynamic"}, {unix.IFF_LOWER_UP, "lower_up"}, {unix.IFF_DORMANT, "dormant"},
	{unix.IFF_ECHO, "echo"},
}

func linkFlags(raw uint32) []string {
	out := []string{}
	for _, f := range linkFlagNames {
		if raw&f.bit != 0 {
			out = append(out, f.name)
		}
	}
	return out
}

var routeTypes = [...]string{"unspec", "unicast", "local", "broadcast", "anycast", "multicast", "blackhole", "unreachable", "prohibit", "throw", "nat", "xresolve"}

func routeType(t int) string {
	if t >= 0 && t < len(routeTypes) {
		return routeTypes[t]
	}
	return strconv.Itoa(t)
}

var nudNames = []struct {
	bit  int
	name string
}{
	{unix.NUD_INCOMPLETE, "INCOMPLETE"}, {unix.NUD_REACHABLE, "REACHABLE"}, {unix.NUD_STALE, "STALE"},
	{unix.NUD_DELAY, "DELAY"}, {unix.NUD_PROBE, "PROBE"}, {unix.NUD_FAILED, "FAILED"},
	{unix.NUD_NOARP, "NOARP"}, {unix.NUD_PERMANENT, "PERMANENT"},
}

func neighState(s int) string {
	if s == 0 {
		return "NONE"
	}
	var out []string
	for _, n := range nudNames {
		if s&n.bit != 0 {
			out = append(out, n.name)
		}
	}
	return strings.Join(out, "|")
}
