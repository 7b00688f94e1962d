// Command cordon-plugin-iptables is Cordon's host firewall plugin for
// iptables (DESIGN.md §3, §5): the agent launches it through go-plugin and it
// isolates the host with chains of its own in the filter table of iptables
// and ip6tables, then cuts established flows the policy does not allow.
//
// For a policy with the controller endpoint 198.18.0.1:7443 and the
// allowlist 198.18.0.4/30 it writes these rules, as iptables -S prints them
// (GEN is the generation, 8 hex digits derived from the policy):
//
//	-N CORDON-IN-GEN
//	-A CORDON-IN-GEN -i lo -j ACCEPT
//	-A CORDON-IN-GEN -s 198.18.0.1/32 -p tcp -m tcp --sport 7443 -m conntrack --ctstate ESTABLISHED -j ACCEPT
//	-A CORDON-IN-GEN -p icmp -m icmp --icmp-type 3/4 -m conntrack --ctstate RELATED -j ACCEPT
//	-A CORDON-IN-GEN -s 198.18.0.4/30 -j ACCEPT
//	-A CORDON-IN-GEN -j DROP
//	-N CORDON-OUT-GEN
//	-A CORDON-OUT-GEN -o lo -j ACCEPT
//	-A CORDON-OUT-GEN -d 198.18.0.1/32 -p tcp -m tcp --dport 7443 -m conntrack --ctstate NEW,ESTABLISHED -j ACCEPT
//	-A CORDON-OUT-GEN -d 198.18.0.4/30 -j ACCEPT
//	-A CORDON-OUT-GEN -p tcp -m tcp --tcp-flags SYN,RST NONE -j REJECT --reject-with tcp-reset
//	-A CORDON-OUT-GEN -j DROP
//	-N CORDON-FWD-GEN
//	-A CORDON-FWD-GEN -s 198.18.0.4/30 -j ACCEPT
//	-A CORDON-FWD-GEN -d 198.18.0.4/30 -j ACCEPT
//	-A CORDON-FWD-GEN -j DROP
//	-A INPUT -j CORDON-IN-GEN      (rule 1 of INPUT)
//	-A OUTPUT -j CORDON-OUT-GEN    (rule 1 of OUTPUT)
//	-A FORWARD -j CORDON-FWD-GEN   (rule 1 of FORWARD)
//
// ip6tables gets the same for the IPv6 entries, with "-p ipv6-icmp -m icmp6
// --icmpv6-type 2" (packet too big) in the path-MTU rule, and neighbour
// discovery (ICMPv6 types 133 to 136 with hop limit 255) accepted in IN and
// OUT just before the drop. Each controller endpoint and allowlist entry
// adds its rules in order.
//
// What the rules mean:
//
//   - The REJECT rule last in OUT answers a local program that writes on a
//     connection isolation cut with a TCP reset over loopback (ECONNRESET
//     at once); remote peers get nothing (resetOut).
//   - A policy that keeps DNS adds, per resolver, UDP and TCP to its port
//     53 in OUT and their replies (ESTABLISHED) in IN; one that keeps DHCP
//     adds DHCPv4 68 to 67 out and its replies in, DHCPv6 546 to 547 out to
//     ff02::1:2 or link-local and 547 to 546 in from link-local. These
//     rules carry a comment match (cordon-dns, cordon-dhcp).
//   - The agent always dials out to the controller, so its address and
//     port are let in only as part of a connection the host opened (conntrack
//     ESTABLISHED): whoever takes the controller's address on the LAN cannot
//     open a connection to the host, and Isolate also cuts any such flow
//     opened before. This is not a blanket "accept established": flows the
//     policy does not allow are deleted from conntrack.
//   - ICMP "fragmentation needed" and ICMPv6 "packet too big" come from
//     routers on the path, not from the controller; they are let in only
//     when conntrack relates them to a tracked connection, so that path-MTU
//     discovery works over tunnels.
//   - A connection to the controller opened before conntrack tracked
//     anything in the namespace (it starts when a rule needs it) is picked
//     up mid-stream from the host's next packet (nf_conntrack_tcp_loose, on
//     by default); until the host sends, the controller's packets on it are
//     dropped and retransmitted later. With nf_conntrack_tcp_loose off, such
//     a connection stalls and the agent must dial again (a new connection
//     works). A raw-table NOTRACK rule that keeps the controller's traffic
//     out of conntrack cuts the agent off: its packets are then neither NEW
//     nor ESTABLISHED.
//
// How it writes: it reads with iptables -S through go-iptables (the whole
// filter table once per call and family, to find every Cordon chain, then
// only the chains it needs) and writes each family in one
// iptables-restore --noflush: the new generation's chains, their rules,
// the jumps at the top of INPUT, OUTPUT and FORWARD, and the removal of any
// other Cordon jump and chain, all in one commit (one nf_tables transaction
// with iptables-nft, one table replace with iptables-legacy). A family is
// never half isolated, and a plugin killed while it writes leaves it as it
// was. After writing it reads the rules back; if they are not exactly the
// plan, or a later family fails, it puts the earlier state back with one
// restore per family. Release too removes each family's rules in one
// restore (falling back on single deletions when that commit fails, to
// remove what it can). It keeps go-iptables open between calls and looks
// iptables and iptables-restore up in PATH again on each.
//
// Invariants a caller can rely on: every chain it creates is named
// CORDON-<IN|OUT|FWD>-<generation> and linked by one jump at the top of
// INPUT, OUTPUT and FORWARD; it never changes any other rule, chain, policy
// or table; it keeps no state outside the kernel. It must run as root in the
// host's network namespace; it logs to stderr, which go-plugin passes to the
// host.
package main

import (
	"os"

	"github.com/hashicorp/go-hclog"

	"github.com/cordon-ir/cordon/pkg/firewall"
)

func main() {
	log := hclog.New(&hclog.LoggerOptions{
		Name:       "iptables",
		Output:     os.Stderr,
		JSONFormat: true,
		Level:      hclog.Info,
	})
	firewall.Serve(New(Options{Logger: log}))
}
