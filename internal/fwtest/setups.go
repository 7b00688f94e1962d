package fwtest

// The starting rulesets. Each is what a real tool leaves on a host (Docker,
// ufw, firewalld, kube-proxy on iptables-legacy, a hand-written iptables
// policy), cut down to what the lab needs, and each lets the lab's traffic
// through before isolation so that what is blocked afterwards is blocked
// by the isolation: TCP and UDP to port 8080 and ICMP echo in, out and
// forwarded to and from the container, and TCP to the controller's 7443.

import (
	"net/netip"
	"strings"
	"testing"
)

// Names of the setups, in the order Run goes through them.
const (
	SetupEmpty        = "empty"         // no ruleset at all
	SetupDropPolicies = "drop-policies" // iptables: DROP policies, custom chains, mangle and nat
	SetupDocker       = "docker"        // Docker's chains, docker0 bridge, NAT and a published port
	SetupUFW          = "ufw"           // ufw's chains, incoming, outgoing and routed denied by default
	SetupFirewalld    = "firewalld"     // nft: firewalld's tables, and a table accepting everything early
	SetupLegacy       = "legacy"        // iptables-legacy rules beside iptables-nft and nft ones
)

// setup is a starting ruleset and the network plumbing it expects.
type setup struct {
	name string
	// bridge, when set, names a bridge in the host namespace that the
	// container's veth hangs off (the host's end holds the container
	// network's gateway addresses); otherwise the host's end of the veth
	// is ctr0 and holds them.
	bridge string
	rules  []ruleset
	// extra are probes of this setup's own, with their verdict while
	// isolated; they all get through before isolation.
	extra []probe
}

// ruleset is rules loaded by a command reading them on standard input.
type ruleset struct {
	cmd   []string
	rules string
}

// load loads the setup's rules in the namespace the test copy runs in.
func (s setup) load(t *testing.T) {
	t.Helper()
	requireLabNS(t)
	for _, r := range s.rules {
		if err := runInput(r.rules, r.cmd...); err != nil {
			t.Fatalf("setup %s: %v", s.name, err)
		}
	}
}

func iptablesRestore(rules string) ruleset  { return ruleset{[]string{"iptables-restore"}, rules} }
func ip6tablesRestore(rules string) ruleset { return ruleset{[]string{"ip6tables-restore"}, rules} }
func nftLoad(rules string) ruleset          { return ruleset{[]string{"nft", "-f", "-"}, rules} }

var setups = []setup{
	{name: SetupEmpty},
	{
		name: SetupDropPolicies,
		rules: []ruleset{
			iptablesRestore(dropPolicies4),
			ip6tablesRestore(dropPolicies6),
		},
	},
	{
		name:   SetupDocker,
		bridge: "docker0",
		rules: []ruleset{
			iptablesRestore(docker4),
			ip6tablesRestore(docker6),
		},
		extra: []probe{
			{from: roleOutside, proto: tcp, to: netip.AddrPortFrom(hostV4, publishedPort)},
			{from: roleOutside, proto: udp, to: netip.AddrPortFrom(hostV4, publishedPort)},
			{from: roleOutside, proto: tcp, to: netip.AddrPortFrom(hostV6, publishedPort)},
			{from: roleOutside, proto: udp, to: netip.AddrPortFrom(hostV6, publishedPort)},
		},
	},
	{
		name: SetupUFW,
		rules: []ruleset{
			iptablesRestore(ufw4),
			ip6tablesRestore(ufw6),
		},
	},
	{
		name:  SetupFirewalld,
		rules: []ruleset{nftLoad(firewalld)},
	},
	{
		name: SetupLegacy,
		rules: []ruleset{
			{[]string{"iptables-legacy-restore"}, legacy4},
			{[]string{"ip6tables-legacy-restore"}, legacy6},
			iptablesRestore(legacyNFT4),
			ip6tablesRestore(legacyNFT6),
			nftLoad(debianNFT),
		},
	},
}

// dropPolicies4 and dropPolicies6: a hand-written policy with DROP
// everywhere, custom chains for what is allowed, a mark set in mangle to
// let the container out, logging, and an (empty) nat table.
const dropPolicies4 = `*mangle
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
-A PREROUTING -i ctr0 -j MARK --set-xmark 0x10/0xffffffff
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
COMMIT
*filter
:INPUT DROP [0:0]
:FORWARD DROP [0:0]
:OUTPUT DROP [0:0]
:LAB-FWD - [0:0]
:LAB-IN - [0:0]
:LAB-LOG-DROP - [0:0]
:LAB-OUT - [0:0]
:LAB-SERVICES - [0:0]
-A INPUT -i lo -j ACCEPT
-A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A INPUT -m conntrack --ctstate INVALID -j DROP
-A INPUT -j LAB-IN
-A INPUT -j LAB-LOG-DROP
-A FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A FORWARD -j LAB-FWD
-A FORWARD -j LAB-LOG-DROP
-A OUTPUT -o lo -j ACCEPT
-A OUTPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A OUTPUT -j LAB-OUT
-A LAB-FWD -i ctr0 -m mark --mark 0x10 -j ACCEPT
-A LAB-FWD -d 198.19.0.0/24 -o ctr0 -j LAB-SERVICES
-A LAB-IN -s 198.18.0.0/24 -j LAB-SERVICES
-A LAB-LOG-DROP -m limit --limit 5/min -j LOG --log-prefix "lab-drop: "
-A LAB-LOG-DROP -j DROP
-A LAB-OUT -p tcp -m multiport --dports 7443,8080 -j ACCEPT
-A LAB-OUT -p udp -m udp --dport 8080 -j ACCEPT
-A LAB-OUT -p icmp -m icmp --icmp-type 8 -j ACCEPT
-A LAB-SERVICES -p tcp -m tcp --dport 8080 -m comment --comment "lab \"echo\" service" -j ACCEPT
-A LAB-SERVICES -p udp -m udp --dport 8080 -j ACCEPT
-A LAB-SERVICES -p icmp -m icmp --icmp-type 8 -j ACCEPT
COMMIT
`

const dropPolicies6 = `*filter
:INPUT DROP [0:0]
:FORWARD DROP [0:0]
:OUTPUT DROP [0:0]
:LAB-FWD6 - [0:0]
:LAB-IN6 - [0:0]
:LAB-ND - [0:0]
:LAB-OUT6 - [0:0]
:LAB-SERVICES6 - [0:0]
-A INPUT -i lo -j ACCEPT
-A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A INPUT -p ipv6-icmp -j LAB-ND
-A INPUT -m conntrack --ctstate INVALID -j DROP
-A INPUT -j LAB-IN6
-A FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A FORWARD -j LAB-FWD6
-A OUTPUT -o lo -j ACCEPT
-A OUTPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A OUTPUT -p ipv6-icmp -j LAB-ND
-A OUTPUT -j LAB-OUT6
-A LAB-FWD6 -s fd00:c0de::1:0/112 -i ctr0 -j ACCEPT
-A LAB-FWD6 -d fd00:c0de::1:0/112 -o ctr0 -j LAB-SERVICES6
-A LAB-IN6 -s fd00:c0de::/112 -j LAB-SERVICES6
-A LAB-ND -p ipv6-icmp -m icmp6 --icmpv6-type 133 -m hl --hl-eq 255 -j ACCEPT
-A LAB-ND -p ipv6-icmp -m icmp6 --icmpv6-type 134 -m hl --hl-eq 255 -j ACCEPT
-A LAB-ND -p ipv6-icmp -m icmp6 --icmpv6-type 135 -m hl --hl-eq 255 -j ACCEPT
-A LAB-ND -p ipv6-icmp -m icmp6 --icmpv6-type 136 -m hl --hl-eq 255 -j ACCEPT
-A LAB-OUT6 -p tcp -m multiport --dports 7443,8080 -j ACCEPT
-A LAB-OUT6 -p udp -m udp --dport 8080 -j ACCEPT
-A LAB-OUT6 -p ipv6-icmp -m icmp6 --icmpv6-type 128 -j ACCEPT
-A LAB-SERVICES6 -p tcp -m tcp --dport 8080 -j ACCEPT
-A LAB-SERVICES6 -p udp -m udp --dport 8080 -j ACCEPT
-A LAB-SERVICES6 -p ipv6-icmp -m icmp6 --icmpv6-type 128 -j ACCEPT
COMMIT
`

// docker4 and docker6 are what dockerd writes for the default bridge
// (here 198.19.0.0/24 and fd00:c0de::1:0/112, with ip6tables enabled) and
// one container publishing its port 8080 on the host's 8081, TCP and UDP.
// The DOCKER-USER rule is a user's: ping the containers from the LAN.
const docker4 = `*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:DOCKER - [0:0]
-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER
-A OUTPUT ! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j DOCKER
-A POSTROUTING -s 198.19.0.0/24 ! -o docker0 -j MASQUERADE
-A POSTROUTING -s 198.19.0.2/32 -d 198.19.0.2/32 -p tcp -m tcp --dport 8080 -j MASQUERADE
-A POSTROUTING -s 198.19.0.2/32 -d 198.19.0.2/32 -p udp -m udp --dport 8080 -j MASQUERADE
-A DOCKER -i docker0 -j RETURN
-A DOCKER ! -i docker0 -p tcp -m tcp --dport 8081 -j DNAT --to-destination 198.19.0.2:8080
-A DOCKER ! -i docker0 -p udp -m udp --dport 8081 -j DNAT --to-destination 198.19.0.2:8080
COMMIT
*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
:DOCKER - [0:0]
:DOCKER-ISOLATION-STAGE-1 - [0:0]
:DOCKER-ISOLATION-STAGE-2 - [0:0]
:DOCKER-USER - [0:0]
-A FORWARD -j DOCKER-USER
-A FORWARD -j DOCKER-ISOLATION-STAGE-1
-A FORWARD -o docker0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A FORWARD -o docker0 -j DOCKER
-A FORWARD -i docker0 ! -o docker0 -j ACCEPT
-A FORWARD -i docker0 -o docker0 -j ACCEPT
-A DOCKER -d 198.19.0.2/32 ! -i docker0 -o docker0 -p tcp -m tcp --dport 8080 -j ACCEPT
-A DOCKER -d 198.19.0.2/32 ! -i docker0 -o docker0 -p udp -m udp --dport 8080 -j ACCEPT
-A DOCKER-ISOLATION-STAGE-1 -i docker0 ! -o docker0 -j DOCKER-ISOLATION-STAGE-2
-A DOCKER-ISOLATION-STAGE-1 -j RETURN
-A DOCKER-ISOLATION-STAGE-2 -o docker0 -j DROP
-A DOCKER-ISOLATION-STAGE-2 -j RETURN
-A DOCKER-USER -s 198.18.0.0/24 -o docker0 -p icmp -m comment --comment "ping containers from the LAN" -j ACCEPT
-A DOCKER-USER -j RETURN
COMMIT
`

const docker6 = `*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:DOCKER - [0:0]
-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER
-A OUTPUT ! -d ::1/128 -m addrtype --dst-type LOCAL -j DOCKER
-A POSTROUTING -s fd00:c0de::1:0/112 ! -o docker0 -j MASQUERADE
-A POSTROUTING -s fd00:c0de::1:2/128 -d fd00:c0de::1:2/128 -p tcp -m tcp --dport 8080 -j MASQUERADE
-A POSTROUTING -s fd00:c0de::1:2/128 -d fd00:c0de::1:2/128 -p udp -m udp --dport 8080 -j MASQUERADE
-A DOCKER -i docker0 -j RETURN
-A DOCKER ! -i docker0 -p tcp -m tcp --dport 8081 -j DNAT --to-destination [fd00:c0de::1:2]:8080
-A DOCKER ! -i docker0 -p udp -m udp --dport 8081 -j DNAT --to-destination [fd00:c0de::1:2]:8080
COMMIT
*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
:DOCKER - [0:0]
:DOCKER-ISOLATION-STAGE-1 - [0:0]
:DOCKER-ISOLATION-STAGE-2 - [0:0]
:DOCKER-USER - [0:0]
-A FORWARD -j DOCKER-USER
-A FORWARD -j DOCKER-ISOLATION-STAGE-1
-A FORWARD -o docker0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A FORWARD -o docker0 -j DOCKER
-A FORWARD -i docker0 ! -o docker0 -j ACCEPT
-A FORWARD -i docker0 -o docker0 -j ACCEPT
-A DOCKER -d fd00:c0de::1:2/128 ! -i docker0 -o docker0 -p tcp -m tcp --dport 8080 -j ACCEPT
-A DOCKER -d fd00:c0de::1:2/128 ! -i docker0 -o docker0 -p udp -m udp --dport 8080 -j ACCEPT
-A DOCKER-ISOLATION-STAGE-1 -i docker0 ! -o docker0 -j DOCKER-ISOLATION-STAGE-2
-A DOCKER-ISOLATION-STAGE-1 -j RETURN
-A DOCKER-ISOLATION-STAGE-2 -o docker0 -j DROP
-A DOCKER-ISOLATION-STAGE-2 -j RETURN
-A DOCKER-USER -s fd00:c0de::/112 -o docker0 -p ipv6-icmp -m comment --comment "ping containers from the LAN" -j ACCEPT
-A DOCKER-USER -j RETURN
COMMIT
`

// ufwChains declares ufw's chains, with prefix "ufw" or "ufw6".
func ufwChains(prefix string) string {
	var b strings.Builder
	for _, c := range []string{
		"after-forward", "after-input", "after-logging-forward", "after-logging-input",
		"after-logging-output", "after-output", "before-forward", "before-input",
		"before-logging-forward", "before-logging-input", "before-logging-output",
		"before-output", "logging-allow", "logging-deny", "not-local", "reject-forward",
		"reject-input", "reject-output", "skip-to-policy-forward", "skip-to-policy-input",
		"skip-to-policy-output", "track-forward", "track-input", "track-output",
		"user-forward", "user-input", "user-limit", "user-limit-accept",
		"user-logging-forward", "user-logging-input", "user-logging-output", "user-output",
	} {
		if prefix == "ufw6" && c == "not-local" {
			continue
		}
		b.WriteString(":" + prefix + "-" + c + " - [0:0]\n")
	}
	return b.String()
}

// ufwLinks are ufw's jumps from the builtin chains.
func ufwLinks(prefix string) string {
	var b strings.Builder
	for _, bi := range []struct{ chain, suffix string }{{"INPUT", "input"}, {"FORWARD", "forward"}, {"OUTPUT", "output"}} {
		for _, c := range []string{"before-logging", "before", "after", "after-logging", "reject", "track"} {
			b.WriteString("-A " + bi.chain + " -j " + prefix + "-" + c + "-" + bi.suffix + "\n")
		}
	}
	return b.String()
}

// ufw4 and ufw6 are what ufw loads with "default deny incoming",
// "default deny outgoing" and "default deny routed", and the rules
// "allow 22/tcp", "allow 8080", "allow out 7443/tcp", "allow out 8080",
// "route allow" to and from the container, and outgoing ping added to
// before.rules.
var ufw4 = `*filter
:INPUT DROP [0:0]
:FORWARD DROP [0:0]
:OUTPUT DROP [0:0]
` + ufwChains("ufw") + ufwLinks("ufw") + `-A ufw-after-input -p udp -m udp --dport 137 -j ufw-skip-to-policy-input
-A ufw-after-input -p udp -m udp --dport 138 -j ufw-skip-to-policy-input
-A ufw-after-input -p tcp -m tcp --dport 139 -j ufw-skip-to-policy-input
-A ufw-after-input -p tcp -m tcp --dport 445 -j ufw-skip-to-policy-input
-A ufw-after-input -p udp -m udp --dport 67 -j ufw-skip-to-policy-input
-A ufw-after-input -p udp -m udp --dport 68 -j ufw-skip-to-policy-input
-A ufw-after-input -m addrtype --dst-type BROADCAST -j ufw-skip-to-policy-input
-A ufw-after-logging-forward -m limit --limit 3/min --limit-burst 10 -j LOG --log-prefix "[UFW BLOCK] "
-A ufw-after-logging-input -m limit --limit 3/min --limit-burst 10 -j LOG --log-prefix "[UFW BLOCK] "
-A ufw-after-logging-output -m limit --limit 3/min --limit-burst 10 -j LOG --log-prefix "[UFW BLOCK] "
-A ufw-before-forward -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A ufw-before-forward -p icmp -m icmp --icmp-type 3 -j ACCEPT
-A ufw-before-forward -p icmp -m icmp --icmp-type 11 -j ACCEPT
-A ufw-before-forward -p icmp -m icmp --icmp-type 12 -j ACCEPT
-A ufw-before-forward -p icmp -m icmp --icmp-type 8 -j ACCEPT
-A ufw-before-forward -j ufw-user-forward
-A ufw-before-input -i lo -j ACCEPT
-A ufw-before-input -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A ufw-before-input -m conntrack --ctstate INVALID -j ufw-logging-deny
-A ufw-before-input -m conntrack --ctstate INVALID -j DROP
-A ufw-before-input -p icmp -m icmp --icmp-type 3 -j ACCEPT
-A ufw-before-input -p icmp -m icmp --icmp-type 11 -j ACCEPT
-A ufw-before-input -p icmp -m icmp --icmp-type 12 -j ACCEPT
-A ufw-before-input -p icmp -m icmp --icmp-type 8 -j ACCEPT
-A ufw-before-input -p udp -m udp --sport 67 --dport 68 -j ACCEPT
-A ufw-before-input -j ufw-not-local
-A ufw-before-input -d 224.0.0.251/32 -p udp -m udp --dport 5353 -j ACCEPT
-A ufw-before-input -d 239.255.255.250/32 -p udp -m udp --dport 1900 -j ACCEPT
-A ufw-before-input -j ufw-user-input
-A ufw-before-output -o lo -j ACCEPT
-A ufw-before-output -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A ufw-before-output -p icmp -m icmp --icmp-type 8 -j ACCEPT
-A ufw-before-output -j ufw-user-output
-A ufw-logging-allow -m limit --limit 3/min --limit-burst 10 -j LOG --log-prefix "[UFW ALLOW] "
-A ufw-logging-deny -m conntrack --ctstate INVALID -m limit --limit 3/min --limit-burst 10 -j RETURN
-A ufw-logging-deny -m limit --limit 3/min --limit-burst 10 -j LOG --log-prefix "[UFW BLOCK] "
-A ufw-not-local -m addrtype --dst-type LOCAL -j RETURN
-A ufw-not-local -m addrtype --dst-type MULTICAST -j RETURN
-A ufw-not-local -m addrtype --dst-type BROADCAST -j RETURN
-A ufw-not-local -m limit --limit 3/min --limit-burst 10 -j ufw-logging-deny
-A ufw-not-local -j DROP
-A ufw-skip-to-policy-forward -j DROP
-A ufw-skip-to-policy-input -j DROP
-A ufw-skip-to-policy-output -j DROP
-A ufw-user-forward -d 198.19.0.0/24 -o ctr0 -p tcp -m tcp --dport 8080 -m comment --comment "'route:allow 8080 to 198.19.0.0/24'" -j ACCEPT
-A ufw-user-forward -d 198.19.0.0/24 -o ctr0 -p udp -m udp --dport 8080 -j ACCEPT
-A ufw-user-forward -s 198.19.0.0/24 -i ctr0 -j ACCEPT
-A ufw-user-input -p tcp -m tcp --dport 22 -j ACCEPT
-A ufw-user-input -p tcp -m tcp --dport 8080 -j ACCEPT
-A ufw-user-input -p udp -m udp --dport 8080 -j ACCEPT
-A ufw-user-limit -m limit --limit 3/min -j LOG --log-prefix "[UFW LIMIT BLOCK] "
-A ufw-user-limit -j REJECT --reject-with icmp-port-unreachable
-A ufw-user-limit-accept -j ACCEPT
-A ufw-user-output -p tcp -m tcp --dport 7443 -j ACCEPT
-A ufw-user-output -p tcp -m tcp --dport 8080 -j ACCEPT
-A ufw-user-output -p udp -m udp --dport 8080 -j ACCEPT
COMMIT
`

var ufw6 = `*filter
:INPUT DROP [0:0]
:FORWARD DROP [0:0]
:OUTPUT DROP [0:0]
` + ufwChains("ufw6") + ufwLinks("ufw6") + `-A ufw6-after-input -p udp -m udp --dport 137 -j ufw6-skip-to-policy-input
-A ufw6-after-input -p udp -m udp --dport 138 -j ufw6-skip-to-policy-input
-A ufw6-after-input -p tcp -m tcp --dport 139 -j ufw6-skip-to-policy-input
-A ufw6-after-input -p tcp -m tcp --dport 445 -j ufw6-skip-to-policy-input
-A ufw6-after-input -p udp -m udp --dport 546 -j ufw6-skip-to-policy-input
-A ufw6-after-input -p udp -m udp --dport 547 -j ufw6-skip-to-policy-input
-A ufw6-after-logging-forward -m limit --limit 3/min --limit-burst 10 -j LOG --log-prefix "[UFW BLOCK] "
-A ufw6-after-logging-input -m limit --limit 3/min --limit-burst 10 -j LOG --log-prefix "[UFW BLOCK] "
-A ufw6-after-logging-output -m limit --limit 3/min --limit-burst 10 -j LOG --log-prefix "[UFW BLOCK] "
-A ufw6-before-forward -m rt --rt-type 0 -j DROP
-A ufw6-before-forward -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A ufw6-before-forward -p ipv6-icmp -m icmp6 --icmpv6-type 1 -j ACCEPT
-A ufw6-before-forward -p ipv6-icmp -m icmp6 --icmpv6-type 2 -j ACCEPT
-A ufw6-before-forward -p ipv6-icmp -m icmp6 --icmpv6-type 3 -j ACCEPT
-A ufw6-before-forward -p ipv6-icmp -m icmp6 --icmpv6-type 4 -j ACCEPT
-A ufw6-before-forward -p ipv6-icmp -m icmp6 --icmpv6-type 128 -j ACCEPT
-A ufw6-before-forward -p ipv6-icmp -m icmp6 --icmpv6-type 129 -j ACCEPT
-A ufw6-before-forward -j ufw6-user-forward
-A ufw6-before-input -i lo -j ACCEPT
-A ufw6-before-input -m rt --rt-type 0 -j DROP
-A ufw6-before-input -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A ufw6-before-input -p ipv6-icmp -m icmp6 --icmpv6-type 129 -j ACCEPT
-A ufw6-before-input -m conntrack --ctstate INVALID -j ufw6-logging-deny
-A ufw6-before-input -m conntrack --ctstate INVALID -j DROP
-A ufw6-before-input -p ipv6-icmp -m icmp6 --icmpv6-type 1 -j ACCEPT
-A ufw6-before-input -p ipv6-icmp -m icmp6 --icmpv6-type 2 -j ACCEPT
-A ufw6-before-input -p ipv6-icmp -m icmp6 --icmpv6-type 3 -j ACCEPT
-A ufw6-before-input -p ipv6-icmp -m icmp6 --icmpv6-type 4 -j ACCEPT
-A ufw6-before-input -p ipv6-icmp -m icmp6 --icmpv6-type 133 -m hl --hl-eq 255 -j ACCEPT
-A ufw6-before-input -p ipv6-icmp -m icmp6 --icmpv6-type 134 -m hl --hl-eq 255 -j ACCEPT
-A ufw6-before-input -p ipv6-icmp -m icmp6 --icmpv6-type 135 -m hl --hl-eq 255 -j ACCEPT
-A ufw6-before-input -p ipv6-icmp -m icmp6 --icmpv6-type 136 -m hl --hl-eq 255 -j ACCEPT
-A ufw6-before-input -p ipv6-icmp -m icmp6 --icmpv6-type 141 -m hl --hl-eq 255 -j ACCEPT
-A ufw6-before-input -p ipv6-icmp -m icmp6 --icmpv6-type 142 -m hl --hl-eq 255 -j ACCEPT
-A ufw6-before-input -s fe80::/10 -p ipv6-icmp -m icmp6 --icmpv6-type 130 -j ACCEPT
-A ufw6-before-input -s fe80::/10 -p ipv6-icmp -m icmp6 --icmpv6-type 131 -j ACCEPT
-A ufw6-before-input -s fe80::/10 -p ipv6-icmp -m icmp6 --icmpv6-type 132 -j ACCEPT
-A ufw6-before-input -s fe80::/10 -p ipv6-icmp -m icmp6 --icmpv6-type 143 -j ACCEPT
-A ufw6-before-input -p ipv6-icmp -m icmp6 --icmpv6-type 128 -j ACCEPT
-A ufw6-before-input -s fe80::/10 -d fe80::/10 -p udp -m udp --sport 547 --dport 546 -j ACCEPT
-A ufw6-before-input -d ff02::fb/128 -p udp -m udp --dport 5353 -j ACCEPT
-A ufw6-before-input -d ff02::f/128 -p udp -m udp --dport 1900 -j ACCEPT
-A ufw6-before-input -j ufw6-user-input
-A ufw6-before-output -o lo -j ACCEPT
-A ufw6-before-output -m rt --rt-type 0 -j DROP
-A ufw6-before-output -p ipv6-icmp -m icmp6 --icmpv6-type 1 -j ACCEPT
-A ufw6-before-output -p ipv6-icmp -m icmp6 --icmpv6-type 2 -j ACCEPT
-A ufw6-before-output -p ipv6-icmp -m icmp6 --icmpv6-type 3 -j ACCEPT
-A ufw6-before-output -p ipv6-icmp -m icmp6 --icmpv6-type 4 -j ACCEPT
-A ufw6-before-output -p ipv6-icmp -m icmp6 --icmpv6-type 128 -j ACCEPT
-A ufw6-before-output -p ipv6-icmp -m icmp6 --icmpv6-type 129 -j ACCEPT
-A ufw6-before-output -p ipv6-icmp -m icmp6 --icmpv6-type 133 -m hl --hl-eq 255 -j ACCEPT
-A ufw6-before-output -p ipv6-icmp -m icmp6 --icmpv6-type 134 -m hl --hl-eq 255 -j ACCEPT
-A ufw6-before-output -p ipv6-icmp -m icmp6 --icmpv6-type 135 -m hl --hl-eq 255 -j ACCEPT
-A ufw6-before-output -p ipv6-icmp -m icmp6 --icmpv6-type 136 -m hl --hl-eq 255 -j ACCEPT
-A ufw6-before-output -d fe80::/10 -p ipv6-icmp -m icmp6 --icmpv6-type 130 -j ACCEPT
-A ufw6-before-output -d fe80::/10 -p ipv6-icmp -m icmp6 --icmpv6-type 131 -j ACCEPT
-A ufw6-before-output -d fe80::/10 -p ipv6-icmp -m icmp6 --icmpv6-type 132 -j ACCEPT
-A ufw6-before-output -d fe80::/10 -p ipv6-icmp -m icmp6 --icmpv6-type 143 -j ACCEPT
-A ufw6-before-output -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A ufw6-before-output -s fe80::/10 -d fe80::/10 -p udp -m udp --sport 546 --dport 547 -j ACCEPT
-A ufw6-before-output -j ufw6-user-output
-A ufw6-logging-allow -m limit --limit 3/min --limit-burst 10 -j LOG --log-prefix "[UFW ALLOW] "
-A ufw6-logging-deny -m conntrack --ctstate INVALID -m limit --limit 3/min --limit-burst 10 -j RETURN
-A ufw6-logging-deny -m limit --limit 3/min --limit-burst 10 -j LOG --log-prefix "[UFW BLOCK] "
-A ufw6-skip-to-policy-forward -j DROP
-A ufw6-skip-to-policy-input -j DROP
-A ufw6-skip-to-policy-output -j DROP
-A ufw6-user-forward -d fd00:c0de::1:0/112 -o ctr0 -p tcp -m tcp --dport 8080 -j ACCEPT
-A ufw6-user-forward -d fd00:c0de::1:0/112 -o ctr0 -p udp -m udp --dport 8080 -j ACCEPT
-A ufw6-user-forward -s fd00:c0de::1:0/112 -i ctr0 -j ACCEPT
-A ufw6-user-input -p tcp -m tcp --dport 22 -j ACCEPT
-A ufw6-user-input -p tcp -m tcp --dport 8080 -j ACCEPT
-A ufw6-user-input -p udp -m udp --dport 8080 -j ACCEPT
-A ufw6-user-limit -m limit --limit 3/min -j LOG --log-prefix "[UFW LIMIT BLOCK] "
-A ufw6-user-limit -j REJECT --reject-with icmp6-port-unreachable
-A ufw6-user-limit-accept -j ACCEPT
-A ufw6-user-output -p tcp -m tcp --dport 7443 -j ACCEPT
-A ufw6-user-output -p tcp -m tcp --dport 8080 -j ACCEPT
-A ufw6-user-output -p udp -m udp --dport 8080 -j ACCEPT
COMMIT
`

// firewalld is what firewalld (nftables backend) loads with eth0 in the
// public zone (8080 over TCP and UDP opened), the container's ctr0 in the
// trusted zone, 8080 and ping forwarded from public to the container, and
// masquerading of the container network; beside it a table of someone
// else's whose chains, at priority -200 (before firewalld and iptables),
// accept everything: an accept is not final, a drop later on still drops.
const firewalld = `table inet firewalld {
	chain filter_PREROUTING {
		type filter hook prerouting priority filter + 10; policy accept;
		icmpv6 type { nd-router-advert, nd-neighbor-solicit } accept
		meta nfproto ipv6 fib saddr . mark . iif oif missing drop
	}

	chain filter_INPUT {
		type filter hook input priority filter + 10; policy accept;
		ct state { established, related } accept
		ct status dnat accept
		iifname "lo" accept
		ct state invalid drop
		jump filter_INPUT_ZONES
		reject with icmpx admin-prohibited
	}

	chain filter_FORWARD {
		type filter hook forward priority filter + 10; policy accept;
		ct state { established, related } accept
		ct status dnat accept
		iifname "lo" accept
		ct state invalid drop
		ip6 daddr { ::/96, ::ffff:0.0.0.0/96, 2002::/24, 2002:a00::/24, 2002:7f00::/24, 2002:a9fe::/32, 2002:ac10::/28, 2002:c0a8::/32, 2002:e000::/19 } reject with icmpv6 addr-unreachable
		jump filter_FORWARD_ZONES
		reject with icmpx admin-prohibited
	}

	chain filter_OUTPUT {
		type filter hook output priority filter + 10; policy accept;
		ct state { established, related } accept
		oifname "lo" accept
		ip6 daddr { ::/96, ::ffff:0.0.0.0/96, 2002::/24, 2002:a00::/24, 2002:7f00::/24, 2002:a9fe::/32, 2002:ac10::/28, 2002:c0a8::/32, 2002:e000::/19 } reject with icmpv6 addr-unreachable
		jump filter_OUTPUT_POLICIES_pre
	}

	chain filter_OUTPUT_POLICIES_pre {
	}

	chain filter_INPUT_ZONES {
		iifname "ctr0" goto filter_IN_trusted
		iifname "eth0" goto filter_IN_public
		goto filter_IN_public
	}

	chain filter_FORWARD_ZONES {
		iifname "ctr0" goto filter_FWD_trusted
		iifname "eth0" goto filter_FWD_public
		goto filter_FWD_public
	}

	chain filter_IN_public {
		jump filter_IN_public_pre
		jump filter_IN_public_log
		jump filter_IN_public_deny
		jump filter_IN_public_allow
		jump filter_IN_public_post
		meta l4proto { icmp, ipv6-icmp } accept
		reject with icmpx admin-prohibited
	}

	chain filter_IN_public_pre {
	}

	chain filter_IN_public_log {
	}

	chain filter_IN_public_deny {
	}

	chain filter_IN_public_allow {
		tcp dport 22 ct state { new, untracked } accept
		ip6 daddr fe80::/64 udp dport 546 ct state { new, untracked } accept
		tcp dport 8080 ct state { new, untracked } accept
		udp dport 8080 ct state { new, untracked } accept
	}

	chain filter_IN_public_post {
	}

	chain filter_IN_trusted {
		counter accept
	}

	chain filter_FWD_public {
		jump filter_FWD_public_allow
		reject with icmpx admin-prohibited
	}

	chain filter_FWD_public_allow {
		oifname "ctr0" tcp dport 8080 ct state { new, untracked } accept
		oifname "ctr0" udp dport 8080 ct state { new, untracked } accept
		oifname "ctr0" meta l4proto { icmp, ipv6-icmp } accept
	}

	chain filter_FWD_trusted {
		counter accept
	}
}

table ip firewalld {
	chain nat_POSTROUTING {
		type nat hook postrouting priority srcnat + 10; policy accept;
		oifname "eth0" ip saddr 198.19.0.0/24 masquerade
	}
}

table inet early_accept {
	chain input {
		type filter hook input priority -200; policy accept;
		counter accept comment "accepts everything, early"
	}

	chain forward {
		type filter hook forward priority -200; policy accept;
		counter accept
	}

	chain output {
		type filter hook output priority -200; policy accept;
		counter accept
	}
}
`

// legacy4 and legacy6 are iptables-legacy rules as an older kube-proxy
// leaves them, accepting the lab's traffic; legacyNFT4 and legacyNFT6 are
// iptables-nft rules beside them, and debianNFT Debian's nftables.conf
// with a rule added.
const legacy4 = `*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:KUBE-POSTROUTING - [0:0]
-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING
-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
COMMIT
*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:KUBE-FIREWALL - [0:0]
-A INPUT -j KUBE-FIREWALL
-A INPUT -s 198.18.0.0/15 -j ACCEPT
-A FORWARD -s 198.19.0.0/24 -j ACCEPT
-A FORWARD -d 198.19.0.0/24 -j ACCEPT
-A OUTPUT -j KUBE-FIREWALL
-A KUBE-FIREWALL -m comment --comment "kubernetes firewall for dropping marked packets" -m mark --mark 0x8000/0x8000 -j DROP
COMMIT
`

const legacy6 = `*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:KUBE-FIREWALL - [0:0]
-A INPUT -j KUBE-FIREWALL
-A INPUT -s fd00:c0de::/64 -j ACCEPT
-A FORWARD -s fd00:c0de::1:0/112 -j ACCEPT
-A FORWARD -d fd00:c0de::1:0/112 -j ACCEPT
-A OUTPUT -j KUBE-FIREWALL
-A KUBE-FIREWALL -m comment --comment "kubernetes firewall for dropping marked packets" -m mark --mark 0x8000/0x8000 -j DROP
COMMIT
`

const legacyNFT4 = `*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -p tcp -m tcp --dport 22 -j ACCEPT
-A INPUT -m conntrack --ctstate INVALID -j DROP
COMMIT
`

const legacyNFT6 = `*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -p tcp -m tcp --dport 22 -j ACCEPT
COMMIT
`

const debianNFT = `table inet filter {
	chain input {
		type filter hook input priority filter; policy accept;
		iifname "lo" accept
		ct state established,related counter accept
		tcp dport 8080 counter accept comment "lab echo"
	}

	chain forward {
		type filter hook forward priority filter; policy accept;
	}

	chain output {
		type filter hook output priority filter; policy accept;
	}
}
`
