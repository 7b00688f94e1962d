// Command cordon-plugin-nftables is Cordon's host firewall plugin for
// nftables (DESIGN.md §3, §5): the agent launches it through go-plugin and
// it isolates the host with a table of its own, inet cordon, then cuts
// established flows the policy does not allow. It speaks netlink to the
// kernel (google/nftables) and needs no nft binary.
//
// For a policy with the controller endpoint 198.18.0.1:7443 and the
// allowlist 198.18.0.4/30 the table is, as an nft(8) script (each rule
// also carries "ROLE: TEXT" as its comment, such as "controller: ip saddr
// 198.18.0.1 tcp sport 7443 ct state established accept"; roles are
// loopback, controller, pmtu, allow, dns, dhcp, nd and reset):
//
//	add table inet cordon
//	add chain inet cordon input { type filter hook input priority -99; policy drop; }
//	add chain inet cordon output { type filter hook output priority -99; policy drop; }
//	add chain inet cordon forward { type filter hook forward priority -99; policy drop; }
//	add rule inet cordon input iifname lo accept
//	add rule inet cordon input ip saddr 198.18.0.1 tcp sport 7443 ct state established accept
//	add rule inet cordon input icmp type destination-unreachable icmp code frag-needed ct state related accept
//	add rule inet cordon input icmpv6 type packet-too-big ct state related accept
//	add rule inet cordon input ip saddr 198.18.0.4/30 accept
//	add rule inet cordon input icmpv6 type nd-router-solicit ip6 hoplimit 255 accept
//	…  (nd-router-advert, nd-neighbor-solicit, nd-neighbor-advert)
//	add rule inet cordon output oifname lo accept
//	add rule inet cordon output ip daddr 198.18.0.1 tcp dport 7443 ct state established,new accept
//	add rule inet cordon output ip daddr 198.18.0.4/30 accept
//	…  (the four neighbour discovery rules)
//	add rule inet cordon output tcp flags & (syn | rst) == 0x0 reject with tcp reset
//	add rule inet cordon forward ip saddr 198.18.0.4/30 accept
//	add rule inet cordon forward ip daddr 198.18.0.4/30 accept
//
// The reset rule tells a local program whose connection isolation cut
// that it is over (ECONNRESET on its next write; see resetRule); remote
// peers get nothing. IPv6 endpoints and CIDRs get the same rules with
// ip6. A policy that
// names DNS resolvers adds, for each, "ip saddr R udp sport 53 ct state
// established accept" (and tcp) in input and "ip daddr R udp dport 53 ct
// state established,new accept" (and tcp) in output; one that keeps DHCP
// adds "meta nfproto ipv4 udp sport 67 udp dport 68 accept" in input and
// the reverse in output, and the same for DHCPv6 (547 to 546). What the rules
// mean is as for the iptables plugin (see its documentation): the
// controller's address is let in only on connections the host opened,
// path-MTU ICMP errors only when related to a tracked connection.
//
// Why nothing can bypass the table: see Priority. What it does not cover:
// packets redirected before the IP stack sees them (a netdev ingress
// chain's fwd statement, tc or XDP programs), which a root attacker can
// install; the cloud layer exists for that.
//
// Invariants a caller can rely on: the plugin creates, replaces and deletes
// only the table inet cordon, each time in one transaction; it never
// changes any other table, chain or rule; it keeps no state outside the
// kernel. It must run as root (CAP_NET_ADMIN) in the host's network
// namespace; it logs to stderr, which go-plugin passes to the host.
package main

import (
	"os"

	"github.com/hashicorp/go-hclog"

	"github.com/cordon-ir/cordon/pkg/firewall"
)

func main() {
	log := hclog.New(&hclog.LoggerOptions{
		Name:       "nftables",
		Output:     os.Stderr,
		JSONFormat: true,
		Level:      hclog.Info,
	})
	firewall.Serve(New(Options{Logger: log}))
}
