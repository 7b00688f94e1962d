package main

import (
	"cmp"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/coreos/go-iptables/iptables"

	"github.com/cordon-ir/cordon/pkg/firewall"
	"github.com/cordon-ir/cordon/pkg/policy"
)

// ChainPrefix starts the name of every chain the plugin creates. Release
// removes every chain of the filter table whose name starts with it, and every
// jump to one from INPUT, OUTPUT and FORWARD.
const ChainPrefix = "CORDON-"

// Layout names the shape of the rules this version writes. It goes into the
// generation suffix, so that a plugin that writes different rules for the
// same policy swaps generations instead of taking the old rules as its own.
//
// Layout 2 made the controller rules stateful (IN accepts only replies of
// connections the host opened) and added the path-MTU ICMP rule; layout 3
// added the reset rule at the end of OUT (resetOut).
const Layout = "cordon-iptables/3"

// filterTable is the only table the plugin touches.
const filterTable = "filter"

// ndTypes are the ICMPv6 neighbour discovery types (RFC 4861: router
// solicitation and advertisement, neighbour solicitation and advertisement)
// kept open so that IPv6 on the link, to the controller too, keeps working.
var ndTypes = []int{133, 134, 135, 136}

// chainKind is one of Cordon's chains per generation and the builtin chain
// that jumps to it.
type chainKind struct {
	short   string // IN, OUT, FWD
	builtin string // INPUT, OUTPUT, FORWARD
}

var chainKinds = []chainKind{
	{"IN", "INPUT"},
	{"OUT", "OUTPUT"},
	{"FWD", "FORWARD"},
}

// builtins are the builtin chains of the filter table Cordon links into, in
// the order it lists them.
var builtins = []string{"INPUT", "OUTPUT", "FORWARD"}

// family is an IP family with its own iptables command.
type family int

const (
	ipv4 family = iota
	ipv6
)

func (f family) String() string {
	if f == ipv6 {
		return "IPv6"
	}
	return "IPv4"
}

// command is the iptables command of the family; it prefixes the rule lines
// the plugin reports.
func (f family) command() string {
	if f == ipv6 {
		return "ip6tables"
	}
	return "iptables"
}

func (f family) proto() iptables.Protocol {
	if f == ipv6 {
		return iptables.ProtocolIPv6
	}
	return iptables.ProtocolIPv4
}

// has reports whether a belongs to the family.
func (f family) has(a netip.Addr) bool {
	if f == ipv6 {
		return a.Is6()
	}
	return a.Is4()
}

// chainName returns the name of a generation's chain, such as
// CORDON-IN-1a2b3c4d (at most 19 characters; iptables allows 28).
func chainName(short, gen string) string { return ChainPrefix + short + "-" + gen }

// genOf returns the generation of one of Cordon's generation chains, or false
// for any other name.
func genOf(chain string) (string, bool) {
	for _, k := range chainKinds {
		g, ok := strings.CutPrefix(chain, ChainPrefix+k.short+"-")
		if ok && isGen(g) {
			return g, true
		}
	}
	return "", false
}

// isGen reports whether s has the form of a generation: 8 lowercase hex digits.
func isGen(s string) bool {
	if len(s) != 8 {
		return false
	}
	for _, c := range s {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// kindOf returns the index in chainKinds of a generation chain, or
// len(chainKinds) for any other chain.
func kindOf(chain string) int {
	for i, k := range chainKinds {
		if g, ok := strings.CutPrefix(chain, ChainPrefix+k.short+"-"); ok && isGen(g) {
			return i
		}
	}
	return len(chainKinds)
}

// generation returns the 8-hex-digit suffix of the chains that enforce eff,
// the effective policy (canonical, restricted to the families in use): the
// first 32 bits of SHA-256 over Layout and eff's digest.
func generation(eff policy.Policy) string {
	sum := sha256.Sum256([]byte(Layout + "\n" + eff.Digest()))
	return hex.EncodeToString(sum[:4])
}

// effective returns the canonical form of p restricted to the families in
// fams, and an error when that leaves no controller endpoint or when an
// allowlist entry covers a whole address family (which would be no isolation
// at all).
func effective(p policy.Policy, fams []family) (policy.Policy, error) {
	c := p.Canonical()
	var eff policy.Policy
	inUse := func(a netip.Addr) bool {
		return slices.ContainsFunc(fams, func(f family) bool { return f.has(a) })
	}
	for _, e := range c.Controllers {
		if inUse(e.Addr) {
			eff.Controllers = append(eff.Controllers, e)
		}
	}
	for _, a := range c.Allow {
		if a.Bits() == 0 {
			return policy.Policy{}, fmt.Errorf("allowlist entry %s allows every address: that is no isolation", a)
		}
		if inUse(a.Addr()) {
			eff.Allow = append(eff.Allow, a)
		}
	}
	for _, a := range c.DNS {
		if inUse(a) {
			eff.DNS = append(eff.DNS, a)
		}
	}
	eff.DHCP = c.DHCP
	if len(eff.Controllers) == 0 {
		return policy.Policy{}, fmt.Errorf("no controller endpoint of an IP family in use (%s): isolation would cut the agent off", famList(fams))
	}
	return eff, nil
}

func famList(fams []family) string {
	var s []string
	for _, f := range fams {
		s = append(s, f.String())
	}
	return strings.Join(s, ", ")
}

// hostPrefix writes a as a single-address CIDR the way iptables -S prints it
// (198.18.0.1/32, fd00:c0de::1/128).
func hostPrefix(a netip.Addr) string { return netip.PrefixFrom(a, a.BitLen()).String() }

// chainPlan is one chain of a generation as iptables -S prints it.
type chainPlan struct {
	name    string
	builtin string
	rules   []string // "-A <name> …" lines, in order
}

// jump is the rule in the builtin chain that links the chain in.
func (c chainPlan) jump() string { return "-A " + c.builtin + " -j " + c.name }

// plan is one generation of Cordon's rules for each family in use, in the
// exact form iptables -S and ip6tables -S print, so that what is read back
// can be compared with it string for string.
type plan struct {
	gen    string
	fams   []family
	chains map[family][]chainPlan // in chainKinds order
}

// newPlan returns the rules that enforce eff (from effective) under
// generation gen.
//
// IN: accept -i lo; accept from each controller endpoint (-s IP -p tcp
// --sport PORT) only what conntrack counts as ESTABLISHED, that is replies
// of connections the host opened (ctrlIn); accept the ICMP errors path-MTU
// discovery needs, RELATED to a tracked connection (pmtuIn); accept from each
// allowlist CIDR; accept replies from each DNS resolver (UDP and TCP from
// port 53, ESTABLISHED); accept DHCP replies when the policy keeps DHCP
// (udp 67 to 68; for IPv6 547 to 546); for IPv6, accept neighbour discovery
// (ICMPv6 types 133-136 with hop limit 255, as RFC 4861 requires of them);
// drop. OUT: accept -o lo; accept to each controller endpoint (-d IP -p tcp
// --dport PORT) NEW and ESTABLISHED (ctrlOut); accept to each allowlist
// CIDR; to each DNS resolver's port 53, NEW and ESTABLISHED; DHCP requests
// (68 to 67, 546 to 547); neighbour discovery for IPv6; drop. FWD accepts
// from and to each allowlist CIDR and drops. DNS and DHCP rules carry a
// comment (commentDNS, commentDHCP) so that they read back as what they
// are. Matches follow iptables-extensions(8): tcp, udp, conntrack, comment,
// icmp, icmp6, hl.
func newPlan(eff policy.Policy, fams []family, gen string) plan {
	pl := plan{gen: gen, fams: fams, chains: map[family][]chainPlan{}}
	for _, f := range fams {
		for _, k := range chainKinds {
			name := chainName(k.short, gen)
			pl.chains[f] = append(pl.chains[f], chainPlan{name: name, builtin: k.builtin, rules: chainRules(f, k.short, name, eff)})
		}
	}
	return pl
}

func chainRules(f family, short, name string, eff policy.Policy) []string {
	var r []string
	add := func(format string, args ...any) { r = append(r, "-A "+name+" "+fmt.Sprintf(format, args...)) }
	addSpec := func(spec string) { r = append(r, "-A "+name+" "+spec) }
	var ctrl []policy.Endpoint
	for _, e := range eff.Controllers {
		if f.has(e.Addr) {
			ctrl = append(ctrl, e)
		}
	}
	var allow []netip.Prefix
	for _, a := range eff.Allow {
		if f.has(a.Addr()) {
			allow = append(allow, a)
		}
	}
	var dns []netip.Addr
	for _, a := range eff.DNS {
		if f.has(a) {
			dns = append(dns, a)
		}
	}
	// DHCP client and server ports: DHCPv4 68 and 67 (RFC 2131), DHCPv6
	// 546 and 547 (RFC 8415).
	client, server := 68, 67
	if f == ipv6 {
		client, server = 546, 547
	}
	switch short {
	case "IN":
		add("-i lo -j ACCEPT")
		for _, e := range ctrl {
			addSpec(ctrlIn(e))
		}
		addSpec(pmtuIn(f))
		for _, a := range allow {
			add("-s %s -j ACCEPT", a)
		}
		for _, a := range dns {
			for _, p := range []string{"udp", "tcp"} {
				add("-s %s -p %s -m %s --sport 53 -m conntrack --ctstate ESTABLISHED -m comment --comment %s -j ACCEPT", hostPrefix(a), p, p, commentDNS)
			}
		}
		// DHCP replies: for IPv4 only as replies to the client's own
		// requests (conntrack); for IPv6 from link-local servers and relays.
		if eff.DHCP && f == ipv4 {
			add("-p udp -m udp --sport %d --dport %d -m conntrack --ctstate ESTABLISHED -m comment --comment %s -j ACCEPT", server, client, commentDHCP)
		}
		if eff.DHCP && f == ipv6 {
			add("-s fe80::/10 -p udp -m udp --sport %d --dport %d -m comment --comment %s -j ACCEPT", server, client, commentDHCP)
		}
	case "OUT":
		add("-o lo -j ACCEPT")
		for _, e := range ctrl {
			addSpec(ctrlOut(e))
		}
		for _, a := range allow {
			add("-d %s -j ACCEPT", a)
		}
		for _, a := range dns {
			for _, p := range []string{"udp", "tcp"} {
				add("-d %s -p %s -m %s --dport 53 -m conntrack --ctstate NEW,ESTABLISHED -m comment --comment %s -j ACCEPT", hostPrefix(a), p, p, commentDNS)
			}
		}
		// DHCP requests: DHCPv4 to any address (a renewal goes to the
		// server's own); DHCPv6 to ff02::1:2 (All_DHCP_Relay_Agents_and_
		// Servers) or a link-local address.
		if eff.DHCP && f == ipv4 {
			add("-p udp -m udp --sport %d --dport %d -m comment --comment %s -j ACCEPT", client, server, commentDHCP)
		}
		if eff.DHCP && f == ipv6 {
			for _, d := range []string{"ff02::1:2/128", "fe80::/10"} {
				add("-d %s -p udp -m udp --sport %d --dport %d -m comment --comment %s -j ACCEPT", d, client, server, commentDHCP)
			}
		}
	case "FWD":
		for _, a := range allow {
			add("-s %s -j ACCEPT", a)
			add("-d %s -j ACCEPT", a)
		}
	}
	if f == ipv6 && short != "FWD" {
		for _, t := range ndTypes {
			add("-p ipv6-icmp -m icmp6 --icmpv6-type %d -m hl --hl-eq 255 -j ACCEPT", t)
		}
	}
	if short == "OUT" {
		addSpec(resetOut)
	}
	add("-j DROP")
	return r
}

// resetOut, last before the drop in OUT, answers a segment that a local
// process sends on a TCP connection the policy does not allow (neither
// SYN nor RST set: the middle of a stream) with a TCP reset to that
// process (iptables-extensions(8) REJECT --reject-with tcp-reset; the
// reset comes back over loopback, which IN accepts): a program whose
// connection isolation cut gets ECONNRESET at once instead of retrying
// for minutes. Remote peers get no reset: that would be a packet out of
// an isolated host.
const resetOut = "-p tcp -m tcp --tcp-flags SYN,RST NONE -j REJECT --reject-with tcp-reset"

// ctrlIn is the IN rule for controller endpoint e: TCP from its address and
// port, only when conntrack counts the packet ESTABLISHED. The agent always
// dials out, so this admits the controller's side of the agent's connections
// and nothing the controller's address, or someone who took it, opens
// towards the host. A connection opened before conntrack tracked anything in
// the namespace is picked up mid-stream (nf_conntrack_tcp_loose, on by
// default) by the host's next packet to the controller, which ctrlOut admits
// as NEW; from then on the controller's packets are ESTABLISHED.
func ctrlIn(e policy.Endpoint) string {
	return fmt.Sprintf("-s %s -p tcp -m tcp --sport %d -m conntrack --ctstate ESTABLISHED -j ACCEPT", hostPrefix(e.Addr), e.Port)
}

// ctrlOut is the OUT rule for controller endpoint e: TCP to its address and
// port, new connections and established ones (iptables prints the states
// in this order).
func ctrlOut(e policy.Endpoint) string {
	return fmt.Sprintf("-d %s -p tcp -m tcp --dport %d -m conntrack --ctstate NEW,ESTABLISHED -j ACCEPT", hostPrefix(e.Addr), e.Port)
}

// pmtuIn is the IN rule that keeps path-MTU discovery working (RFC 1191,
// RFC 8201): ICMP "fragmentation needed" (type 3 code 4) or ICMPv6 "packet
// too big" (type 2), only when conntrack relates it to a tracked connection,
// one the rules let through. These errors come from routers on the path, not
// from the controller, so no address can be named; without them a session
// over a path with a smaller MTU (a tunnel) stalls.
func pmtuIn(f family) string {
	if f == ipv6 {
		return "-p ipv6-icmp -m icmp6 --icmpv6-type 2 -m conntrack --ctstate RELATED -j ACCEPT"
	}
	return "-p icmp -m icmp --icmp-type 3/4 -m conntrack --ctstate RELATED -j ACCEPT"
}

// expected returns the state of family f that the plan describes, for
// comparison and digests.
func (pl plan) expected(f family) liveFamily {
	lf := liveFamily{fam: f, chains: map[string][]string{}, builtins: map[string][]string{}}
	for _, c := range pl.chains[f] {
		lf.chains[c.name] = c.rules
		lf.builtins[c.builtin] = append(lf.builtins[c.builtin], c.jump())
	}
	return lf
}

// liveFamily is what is in the filter table of one family: every chain whose
// name starts with ChainPrefix and the rules of the builtin chains Cordon
// links into, as iptables -S prints them ("-A …" lines only).
type liveFamily struct {
	fam      family
	chains   map[string][]string
	builtins map[string][]string
}

// jumps returns the rules of a builtin chain that jump (-j) or go (-g) to one
// of Cordon's chains, with their 1-based positions.
func (lf liveFamily) jumps(builtin string) (rules []string, pos []int) {
	for i, r := range lf.builtins[builtin] {
		if strings.HasPrefix(ruleTarget(r), ChainPrefix) {
			rules = append(rules, r)
			pos = append(pos, i+1)
		}
	}
	return rules, pos
}

// sortedChains returns the names of lf's Cordon chains: generation chains in
// IN, OUT, FWD order, then any other, each group by name.
func (lf liveFamily) sortedChains() []string {
	var names []string
	for n := range lf.chains {
		names = append(names, n)
	}
	slices.SortFunc(names, func(a, b string) int {
		return cmp.Or(cmp.Compare(kindOf(a), kindOf(b)), cmp.Compare(a, b))
	})
	return names
}

// ruleLines returns the lines that describe Cordon's rules in the families
// given: per family (in order), each Cordon chain ("-N" then its "-A" lines),
// then the jumps to them in INPUT, OUTPUT and FORWARD, each line prefixed
// with the family's command ("iptables -A CORDON-IN-… -j DROP"). Isolate and
// Status both report these lines and digest them.
func ruleLines(fams []liveFamily) []string {
	var out []string
	for _, lf := range fams {
		cmd := lf.fam.command() + " "
		for _, c := range lf.sortedChains() {
			out = append(out, cmd+"-N "+c)
			for _, r := range lf.chains[c] {
				out = append(out, cmd+r)
			}
		}
		for _, b := range builtins {
			js, _ := lf.jumps(b)
			for _, j := range js {
				out = append(out, cmd+j)
			}
		}
	}
	return out
}

// digestLines is firewall.DigestLines.
func digestLines(lines []string) string { return firewall.DigestLines(lines) }

// ruleTarget returns the chain or target a rule line jumps (-j) or goes (-g)
// to, or "".
func ruleTarget(rule string) string {
	f := splitRule(rule)
	for i := 0; i+1 < len(f); i++ {
		if f[i] == "-j" || f[i] == "-g" || f[i] == "--jump" || f[i] == "--goto" {
			return f[i+1]
		}
	}
	return ""
}

// splitRule splits a line of iptables -S output into arguments, undoing the
// double quotes and backslash escapes iptables puts around arguments with
// spaces (such as comments).
func splitRule(line string) []string {
	var (
		args  []string
		cur   strings.Builder
		inArg bool
		quote bool
	)
	for i := 0; i < len(line); i++ {
		c := line[i]
		switch {
		case c == '\\' && quote && i+1 < len(line):
			i++
			cur.WriteByte(line[i])
		case c == '"':
			quote = !quote
			inArg = true
		case c == ' ' && !quote:
			if inArg {
				args = append(args, cur.String())
				cur.Reset()
				inArg = false
			}
		default:
			cur.WriteByte(c)
			inArg = true
		}
	}
	if inArg {
		args = append(args, cur.String())
	}
	return args
}

// ruleSpec returns the arguments of an "-A CHAIN …" line after the chain, as
// go-iptables' Append, Insert and Delete take them.
func ruleSpec(rule string) []string {
	f := splitRule(rule)
	if len(f) < 2 {
		return nil
	}
	return f[2:]
}

// reconstruct reads back the effective policy that generation gen's chains
// in fams enforce: controller endpoints from rules written exactly as ctrlIn
// or ctrlOut writes them, allowlist CIDRs from "-s CIDR -j ACCEPT" and
// "-d CIDR -j ACCEPT". Lines it does not recognise are ignored here;
// comparing the live rules with newPlan's reports them.
func reconstruct(fams []liveFamily, gen string) policy.Policy {
	var p policy.Policy
	addAllow := func(s string) {
		if pfx, err := netip.ParsePrefix(s); err == nil && pfx.Bits() > 0 {
			p.Allow = append(p.Allow, pfx)
		}
	}
	for _, lf := range fams {
		for _, k := range chainKinds {
			chain := chainName(k.short, gen)
			for _, r := range lf.chains[chain] {
				f := splitRule(r)
				switch {
				case slices.Contains(f, commentDNS) && len(f) > 3 && (f[2] == "-s" || f[2] == "-d"):
					if pfx, err := netip.ParsePrefix(f[3]); err == nil && pfx.IsSingleIP() {
						p.DNS = append(p.DNS, pfx.Addr())
					}
				case slices.Contains(f, commentDHCP):
					p.DHCP = true
				case len(f) == 16 && (k.short == "IN" || k.short == "OUT"):
					e, ok := endpointOf(f[3], f[9])
					if !ok {
						continue
					}
					spec := ctrlIn(e)
					if k.short == "OUT" {
						spec = ctrlOut(e)
					}
					if r == "-A "+chain+" "+spec {
						p.Controllers = append(p.Controllers, e)
					}
				case len(f) == 6 && f[4] == "-j" && f[5] == "ACCEPT" && (f[2] == "-s" || f[2] == "-d"):
					addAllow(f[3])
				}
			}
		}
	}
	return p.Canonical()
}

// Comments (iptables-extensions(8), comment) that mark the rules of the
// DNS and DHCP parts of a policy, so that they read back as such and not
// as controller endpoints.
const (
	commentDNS  = "cordon-dns"
	commentDHCP = "cordon-dhcp"
)

// endpointOf parses a single-address CIDR and a port, as a controller rule
// names them.
func endpointOf(addr, port string) (policy.Endpoint, bool) {
	pfx, err := netip.ParsePrefix(addr)
	n, perr := strconv.ParseUint(port, 10, 16)
	if err != nil || perr != nil || pfx.Bits() != pfx.Addr().BitLen() || n == 0 {
		return policy.Endpoint{}, false
	}
	return policy.Endpoint{Addr: pfx.Addr(), Port: uint16(n)}, true
}
