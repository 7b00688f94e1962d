package main

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/cordon-ir/cordon/pkg/firewall"
	"github.com/cordon-ir/cordon/pkg/policy"
)

// TableName is the name of Cordon's table, in the inet family (IPv4 and
// IPv6 together). The plugin never touches any other table.
const TableName = "cordon"

// Priority is the priority of Cordon's base chains on the input, output
// and forward hooks: NF_IP_PRI_NAT_DST + 1 (-99). It is after connection
// tracking (-200), so ct state can be matched, and after destination NAT
// (-100), so that on the output hook the rules judge the address a packet
// really goes to, not one a NAT rule rewrites afterwards; and it is before
// the filter chains of iptables (0), firewalld (filter + 10), ufw and
// Docker.
//
// Every base chain registered on a hook sees the packet, in priority
// order, whatever table it belongs to: an accept ends only the chain that
// says it, and the packet goes on to the next base chain; a drop ends the
// packet's path at once (nft(8), "VERDICT STATEMENT"). So no verdict of a
// chain of another table, whatever its priority, can let past what
// Cordon's chains drop: an earlier accept only hands the packet on to
// Cordon's chain, and a later one never sees it. The same holds for
// iptables-legacy, whose chains are registered on the same hooks.
//
// What another chain can do is rewrite packets: one that changes addresses
// or ports (NAT, "payload set") in prerouting, before input, or in
// postrouting, after output, can make traffic to or from anywhere look
// like traffic with the controller to Cordon's chains; so can tc, XDP and
// a netdev ingress or egress chain, which run outside these hooks. All of
// them need root on the host, as flushing the rules does; the cloud layer
// is the answer to that, and the drift check to the flushing.
const Priority = -99

// Layout names the shape of the rules this version writes; it is in the
// comment of the table's first rule, so that a plugin that writes
// different rules for the same policy knows these are not its own.
const Layout = "cordon-nftables/1"

// ndTypes are the ICMPv6 neighbour discovery types (RFC 4861: router
// solicitation and advertisement, neighbour solicitation and
// advertisement) kept open so that IPv6 on the link, to the controller
// too, keeps working, and their names in nft(8).
var ndTypes = []struct {
	typ  byte
	name string
}{{133, "nd-router-solicit"}, {134, "nd-router-advert"}, {135, "nd-neighbor-solicit"}, {136, "nd-neighbor-advert"}}

// chainSpec is one of Cordon's base chains.
type chainSpec struct {
	name string
	hook *nftables.ChainHook
}

var chainSpecs = []chainSpec{
	{"input", nftables.ChainHookInput},
	{"output", nftables.ChainHookOutput},
	{"forward", nftables.ChainHookForward},
}

// ruleSpec is one rule: its role in the policy, its expressions, and its
// text in nft(8) syntax. Its comment is "ROLE: TEXT", so that `nft list
// ruleset` shows where each rule came from, and Status can read the policy
// back from the comments (checked against the expressions).
type ruleSpec struct {
	chain string
	role  string // one of roles
	text  string
	exprs []expr.Any
}

// Roles of rules, as their comments name them.
const (
	roleLoopback   = "loopback"
	roleController = "controller"
	rolePMTU       = "pmtu"
	roleAllow      = "allow"
	roleND         = "nd"
	roleDNS        = "dns"
	roleDHCP       = "dhcp"
	roleReset      = "reset"
)

var roles = []string{roleLoopback, roleController, rolePMTU, roleAllow, roleND, roleDNS, roleDHCP, roleReset}

// plan is the complete content of Cordon's table for one policy.
type plan struct {
	rules []ruleSpec // in chainSpecs order, then in order within a chain
}

// newPlan returns the rules that enforce eff (canonical).
//
// input: accept iifname lo; accept from each controller endpoint (its
// address and TCP source port) only what conntrack counts as established,
// that is replies of connections the host opened; accept the ICMP errors
// path-MTU discovery needs, related to a tracked connection; accept from
// each allowlist CIDR; accept replies from each DNS resolver (UDP and TCP
// from port 53, established); when the policy keeps DHCP, accept DHCP
// replies (udp 67 to 68, established; DHCPv6 547 to 546 from link-local
// servers); accept IPv6 neighbour discovery (ICMPv6 types 133 to 136 with
// hop limit 255, as RFC 4861 requires of them). output: accept oifname lo;
// accept to each controller endpoint new and established; to each
// allowlist CIDR; to each DNS resolver's port 53 (UDP and TCP, new and
// established); DHCP requests (68 to 67; 546 to 547 at ff02::1:2 or
// link-local); neighbour discovery; resetRule. forward: accept from and to
// each allowlist CIDR. Each chain's policy drops the rest.
func newPlan(eff policy.Policy) plan {
	var pl plan
	add := func(chain, role, text string, exprs ...[]expr.Any) {
		var all []expr.Any
		for _, e := range exprs {
			all = append(all, e...)
		}
		all = append(all, &expr.Verdict{Kind: expr.VerdictAccept})
		pl.rules = append(pl.rules, ruleSpec{chain: chain, role: role, text: text + " accept", exprs: all})
	}
	host := func(a netip.Addr) netip.Prefix { return netip.PrefixFrom(a, a.BitLen()) }
	// DHCP as clients filtered by netfilter use it: a client talks
	// through packet sockets (no netfilter) until it has an address, then
	// renews over UDP. DHCPv4: requests from port 68 to a server's 67 at
	// any address (a renewal goes to the server's own, which the policy
	// does not know), and only replies back (conntrack established).
	// DHCPv6: to the All_DHCP_Relay_Agents_and_Servers group ff02::1:2 or
	// a link-local server, and from link-local servers (RFC 8415).
	lla := netip.MustParsePrefix("fe80::/10")
	dhcpServers := netip.MustParseAddr("ff02::1:2")
	dhcpIn := func() {
		if !eff.DHCP {
			return
		}
		add("input", roleDHCP, "meta nfproto ipv4 udp sport 67 udp dport 68 ct state established",
			nfproto(false), portsMatch(unix.IPPROTO_UDP, 67, 68), ctState(expr.CtStateBitESTABLISHED))
		add("input", roleDHCP, "ip6 saddr fe80::/10 udp sport 547 udp dport 546",
			addrMatch(true, lla), portsMatch(unix.IPPROTO_UDP, 547, 546))
	}
	dhcpOut := func() {
		if !eff.DHCP {
			return
		}
		add("output", roleDHCP, "meta nfproto ipv4 udp sport 68 udp dport 67",
			nfproto(false), portsMatch(unix.IPPROTO_UDP, 68, 67))
		add("output", roleDHCP, "ip6 daddr ff02::1:2 udp sport 546 udp dport 547",
			addrMatch(false, host(dhcpServers)), portsMatch(unix.IPPROTO_UDP, 546, 547))
		add("output", roleDHCP, "ip6 daddr fe80::/10 udp sport 546 udp dport 547",
			addrMatch(false, lla), portsMatch(unix.IPPROTO_UDP, 546, 547))
	}
	ndRules := func(chain string) {
		for _, nd := range ndTypes {
			add(chain, roleND, fmt.Sprintf("icmpv6 type %s ip6 hoplimit 255", nd.name),
				l4(unix.NFPROTO_IPV6, unix.IPPROTO_ICMPV6), byteAt(0, nd.typ), hopLimit255())
		}
	}
	// input
	add("input", roleLoopback, "iifname lo", ifname(expr.MetaKeyIIFNAME, "lo"))
	for _, e := range eff.Controllers {
		add("input", roleController, fmt.Sprintf("%s saddr %s tcp sport %d ct state established", ipWord(e.Addr), e.Addr, e.Port),
			addrMatch(true, host(e.Addr)), portMatch(unix.IPPROTO_TCP, true, e.Port), ctState(expr.CtStateBitESTABLISHED))
	}
	add("input", rolePMTU, "icmp type destination-unreachable icmp code frag-needed ct state related",
		l4(unix.NFPROTO_IPV4, unix.IPPROTO_ICMP), byteAt(0, 3), byteAt(1, 4), ctState(expr.CtStateBitRELATED))
	add("input", rolePMTU, "icmpv6 type packet-too-big ct state related",
		l4(unix.NFPROTO_IPV6, unix.IPPROTO_ICMPV6), byteAt(0, 2), ctState(expr.CtStateBitRELATED))
	for _, a := range eff.Allow {
		add("input", roleAllow, fmt.Sprintf("%s saddr %s", ipWord(a.Addr()), prefixText(a)), addrMatch(true, a))
	}
	for _, r := range eff.DNS {
		for _, proto := range []struct {
			name string
			num  byte
		}{{"udp", unix.IPPROTO_UDP}, {"tcp", unix.IPPROTO_TCP}} {
			add("input", roleDNS, fmt.Sprintf("%s saddr %s %s sport 53 ct state established", ipWord(r), r, proto.name),
				addrMatch(true, host(r)), portMatch(proto.num, true, 53), ctState(expr.CtStateBitESTABLISHED))
		}
	}
	dhcpIn()
	ndRules("input")
	// output
	add("output", roleLoopback, "oifname lo", ifname(expr.MetaKeyOIFNAME, "lo"))
	for _, e := range eff.Controllers {
		add("output", roleController, fmt.Sprintf("%s daddr %s tcp dport %d ct state established,new", ipWord(e.Addr), e.Addr, e.Port),
			addrMatch(false, host(e.Addr)), portMatch(unix.IPPROTO_TCP, false, e.Port),
			ctState(expr.CtStateBitESTABLISHED|expr.CtStateBitNEW))
	}
	for _, a := range eff.Allow {
		add("output", roleAllow, fmt.Sprintf("%s daddr %s", ipWord(a.Addr()), prefixText(a)), addrMatch(false, a))
	}
	for _, r := range eff.DNS {
		for _, proto := range []struct {
			name string
			num  byte
		}{{"udp", unix.IPPROTO_UDP}, {"tcp", unix.IPPROTO_TCP}} {
			add("output", roleDNS, fmt.Sprintf("%s daddr %s %s dport 53 ct state established,new", ipWord(r), r, proto.name),
				addrMatch(false, host(r)), portMatch(proto.num, false, 53), ctState(expr.CtStateBitESTABLISHED|expr.CtStateBitNEW))
		}
	}
	dhcpOut()
	ndRules("output")
	// forward
	for _, a := range eff.Allow {
		add("forward", roleAllow, fmt.Sprintf("%s saddr %s", ipWord(a.Addr()), prefixText(a)), addrMatch(true, a))
		add("forward", roleAllow, fmt.Sprintf("%s daddr %s", ipWord(a.Addr()), prefixText(a)), addrMatch(false, a))
	}
	// output ends with the reset rule; the plan lists chains in
	// chainSpecs order.
	var ordered []ruleSpec
	for _, c := range chainSpecs {
		for _, r := range pl.rules {
			if r.chain == c.name {
				ordered = append(ordered, r)
			}
		}
		if c.name == "output" {
			ordered = append(ordered, resetRule(c.name))
		}
	}
	pl.rules = ordered
	return pl
}

// resetRule, last in output, answers a segment that a local process sends
// on a TCP connection the policy does not allow (neither SYN nor RST set:
// the middle of a stream) with a TCP reset to that process (nft(8) "reject
// with tcp reset"; the reset is delivered over loopback, which the rules
// allow): a program whose connection isolation cut gets ECONNRESET at
// once instead of retrying for minutes. Remote peers get no reset: a reset
// sent to them would be a packet out of an isolated host, and accepting
// resets on output would be a channel out (their headers carry 96 bits of
// choice); their segments are dropped and they time out. New connections
// (SYN) are dropped silently by the chains' policy, so the host does not
// answer scans.
func resetRule(chain string) ruleSpec {
	return ruleSpec{chain: chain, role: roleReset, text: "tcp flags & (syn | rst) == 0x0 reject with tcp reset", exprs: []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_TCP}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 13, Len: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 1, Mask: []byte{0x02 | 0x04}, Xor: []byte{0}},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{0}},
		&expr.Reject{Type: unix.NFT_REJECT_TCP_RST},
	}}
}

// ipWord is nft's name of an address's protocol: "ip" or "ip6".
func ipWord(a netip.Addr) string {
	if a.Is4() {
		return "ip"
	}
	return "ip6"
}

// prefixText writes a prefix as nft does: a single address without a
// length.
func prefixText(p netip.Prefix) string {
	if p.IsSingleIP() {
		return p.Addr().String()
	}
	return p.String()
}

// The expressions below are what nft(8) generates for the same matches in
// an inet table (see `nft --debug=netlink`): the network protocol is
// checked with meta nfproto before any address is loaded, the transport
// protocol with meta l4proto before any port.

func ifname(key expr.MetaKey, name string) []expr.Any {
	b := make([]byte, unix.IFNAMSIZ)
	copy(b, name)
	return []expr.Any{
		&expr.Meta{Key: key, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: b},
	}
}

func nfproto(v6 bool) []expr.Any {
	p := byte(unix.NFPROTO_IPV4)
	if v6 {
		p = unix.NFPROTO_IPV6
	}
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{p}},
	}
}

// addrMatch matches the source (src) or destination address against p.
func addrMatch(src bool, p netip.Prefix) []expr.Any {
	a := p.Addr()
	off := uint32(16) // IPv4 header: saddr at 12, daddr at 16 (RFC 791)
	if src {
		off = 12
	}
	if a.Is6() {
		off = 24 // IPv6 header: saddr at 8, daddr at 24 (RFC 8200)
		if src {
			off = 8
		}
	}
	n := uint32(a.BitLen() / 8)
	out := append(nfproto(a.Is6()), &expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: n})
	if !p.IsSingleIP() {
		mask := make([]byte, n)
		for i := 0; i < p.Bits(); i++ {
			mask[i/8] |= 0x80 >> (i % 8)
		}
		out = append(out, &expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: n, Mask: mask, Xor: make([]byte, n)})
	}
	return append(out, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: p.Masked().Addr().AsSlice()})
}

func l4(nfp, proto byte) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{nfp}},
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}},
	}
}

// portMatch matches the source (src) or destination port of a TCP or UDP
// packet (proto, an IPPROTO_ number).
func portMatch(proto byte, src bool, port uint16) []expr.Any {
	off := uint32(2)
	if src {
		off = 0
	}
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: off, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binary.BigEndian.AppendUint16(nil, port)},
	}
}

// portsMatch matches both ports of a TCP or UDP packet.
func portsMatch(proto byte, sport, dport uint16) []expr.Any {
	return append(portMatch(proto, true, sport),
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binary.BigEndian.AppendUint16(nil, dport)})
}

// byteAt matches one byte of the transport header (an ICMP type or code).
func byteAt(off uint32, v byte) []expr.Any {
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: off, Len: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{v}},
	}
}

// hopLimit255 matches an IPv6 hop limit of 255 (RFC 8200: byte 7).
func hopLimit255() []expr.Any {
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 7, Len: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{255}},
	}
}

// ctState matches a conntrack state among bits (expr.CtStateBit*).
func ctState(bits uint32) []expr.Any {
	return []expr.Any{
		&expr.Ct{Register: 1, Key: expr.CtKeySTATE},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: binary.NativeEndian.AppendUint32(nil, bits), Xor: make([]byte, 4)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: make([]byte, 4)},
	}
}

// renderExprs writes expressions in a form that compares equal when they
// mean the same, whichever side built them (this plan, or the kernel's
// answer as google/nftables decodes it).
func renderExprs(es []expr.Any) string {
	var b strings.Builder
	for i, e := range es {
		if i > 0 {
			b.WriteString(" ; ")
		}
		fmt.Fprintf(&b, "%T%+v", e, e)
	}
	return b.String()
}

// Text lines, as Isolate and Status report them: an nft(8) script that
// would build the same table.

func tableLine() string { return "add table inet " + TableName }

func chainLine(name, hook string, prio int32, pol string) string {
	return fmt.Sprintf("add chain inet %s %s { type filter hook %s priority %d; policy %s; }", TableName, name, hook, prio, pol)
}

func ruleLine(chain, role, text string) string {
	return fmt.Sprintf("add rule inet %s %s %s comment \"%s\"", TableName, chain, text, commentText(role, text))
}

// commentText is a rule's comment: "ROLE: TEXT", or TEXT for a rule with
// no role (not Cordon's, put back as it was).
func commentText(role, text string) string {
	if role == "" {
		return text
	}
	return role + ": " + text
}

// parseComment splits a comment into role and text; role is "" when the
// comment does not start with one of roles.
func parseComment(c string) (role, text string) {
	r, t, ok := strings.Cut(c, ": ")
	if ok && slices.Contains(roles, r) {
		return r, t
	}
	return "", c
}

// hookNames names the hooks of Cordon's chains.
var hookNames = map[nftables.ChainHook]string{
	*nftables.ChainHookInput:   "input",
	*nftables.ChainHookOutput:  "output",
	*nftables.ChainHookForward: "forward",
}

// lines returns the plan's text lines.
func (pl plan) lines() []string {
	out := []string{tableLine()}
	for _, c := range chainSpecs {
		out = append(out, chainLine(c.name, c.name, Priority, "drop"))
	}
	for _, r := range pl.rules {
		out = append(out, ruleLine(r.chain, r.role, r.text))
	}
	return out
}

// digestLines is firewall.DigestLines.
func digestLines(lines []string) string { return firewall.DigestLines(lines) }

// reconstruct reads back the policy that the rules in place name by their
// roles and texts: controller endpoints from controller rules, allowlist
// CIDRs from allow rules, resolvers from dns rules, DHCP from any dhcp
// rule. A part of the policy named by any one of its rules counts, so that
// a rule deleted behind Cordon's back shows as missing rather than as a
// narrower policy. What it returns is checked by comparing the rules in
// place with newPlan of it, expressions and all, so a comment that lies
// makes the table not Cordon's.
func reconstruct(rules []ruleSpec) policy.Policy {
	var p policy.Policy
	for _, r := range rules {
		f := strings.Fields(r.text)
		switch r.role {
		case roleController:
			if len(f) < 6 {
				continue
			}
			a, err := netip.ParseAddr(f[2])
			port, perr := strconv.ParseUint(f[5], 10, 16)
			if err == nil && perr == nil && port > 0 {
				p.Controllers = append(p.Controllers, policy.Endpoint{Addr: a, Port: uint16(port)})
			}
		case roleAllow:
			if len(f) < 3 {
				continue
			}
			if a, err := netip.ParseAddr(f[2]); err == nil {
				p.Allow = append(p.Allow, netip.PrefixFrom(a, a.BitLen()))
			} else if pf, err := netip.ParsePrefix(f[2]); err == nil && pf.Bits() > 0 {
				p.Allow = append(p.Allow, pf)
			}
		case roleDNS:
			if len(f) < 3 {
				continue
			}
			if a, err := netip.ParseAddr(f[2]); err == nil {
				p.DNS = append(p.DNS, a)
			}
		case roleDHCP:
			p.DHCP = true
		}
	}
	return p.Canonical()
}

// comment returns the comment of a rule's user data (the TLV list nft(8)
// writes, libnftnl's NFTNL_UDATA_RULE_COMMENT), checking every length:
// userdata.Get of google/nftables slices before it checks.
func comment(udata []byte) (string, bool) {
	for len(udata) >= 2 {
		typ, n := udata[0], int(udata[1])
		if len(udata) < 2+n {
			return "", false
		}
		if typ == 0 { // NFTNL_UDATA_RULE_COMMENT
			s, _ := strings.CutSuffix(string(udata[2:2+n]), "\x00")
			return s, true
		}
		udata = udata[2+n:]
	}
	return "", false
}

// commentData is the user data holding comment text, as nft(8) writes it.
func commentData(text string) []byte {
	return append(append([]byte{0, byte(len(text) + 1)}, text...), 0)
}
