package main

import (
	"bytes"
	"fmt"
	"os/exec"
	"strings"
)

// hostRules is a host's own firewall, as the scripts that load it: an
// iptables filter table per family (iptables-restore) and an nftables table
// inet hostfw (nft -f), none of it Cordon's.
type hostRules struct {
	v4, v6, nft string
	// Rule counts as generated ("-A" lines, nft rule statements) and the
	// chains they are spread over.
	n4, n6, nNft        int
	iptChains, nftChain int
}

// hostTable is the host's own nftables table.
const hostTable = "hostfw"

// iptChain is a user chain of the host's iptables rules and how one of its
// rules looks for index i.
type iptChain struct {
	name, from string // from: the builtin chain that jumps to it
	v4, v6     func(i int) string
}

var iptChains = []iptChain{
	{"HOST-SSH", "INPUT",
		func(i int) string { return fmt.Sprintf("-s %s/32 -p tcp -m tcp --dport 22 -j ACCEPT", v4Addr(i)) },
		func(i int) string { return fmt.Sprintf("-s %s/128 -p tcp -m tcp --dport 22 -j ACCEPT", v6Addr(i)) }},
	{"HOST-WEB", "INPUT",
		func(i int) string {
			return fmt.Sprintf("-s %s/28 -p tcp -m multiport --dports 80,443,%d -j ACCEPT", v4Net28(i), 8000+i%1000)
		},
		func(i int) string {
			return fmt.Sprintf("-s %s/112 -p tcp -m multiport --dports 80,443,%d -j ACCEPT", v6Net112(i), 8000+i%1000)
		}},
	{"HOST-DB", "INPUT",
		func(i int) string {
			return fmt.Sprintf("-s %s/32 -p tcp -m tcp --dport %d -m comment --comment \"app-%d\" -j ACCEPT", v4Addr(i), 5432+i%4, i)
		},
		func(i int) string {
			return fmt.Sprintf("-s %s/128 -p tcp -m tcp --dport %d -m comment --comment \"app-%d\" -j ACCEPT", v6Addr(i), 5432+i%4, i)
		}},
	{"HOST-MON", "INPUT",
		func(i int) string {
			return fmt.Sprintf("-s %s/28 -p udp -m udp --dport %d -j ACCEPT", v4Net28(i), 161+i%2)
		},
		func(i int) string {
			return fmt.Sprintf("-s %s/112 -p udp -m udp --dport %d -j ACCEPT", v6Net112(i), 161+i%2)
		}},
	{"HOST-BLOCK", "INPUT",
		func(i int) string { return fmt.Sprintf("-s %s/32 -j DROP", v4Addr(i+20000)) },
		func(i int) string { return fmt.Sprintf("-s %s/128 -j DROP", v6Addr(i+20000)) }},
	{"HOST-FWD", "FORWARD",
		func(i int) string {
			return fmt.Sprintf("-s %s/28 -d %s/32 -p tcp -m tcp --dport %d -j ACCEPT", v4Net28(i), v4Addr(i+40000), 1024+i%5000)
		},
		func(i int) string {
			return fmt.Sprintf("-s %s/112 -d %s/128 -p tcp -m tcp --dport %d -j ACCEPT", v6Net112(i), v6Addr(i+40000), 1024+i%5000)
		}},
}

// Addresses in 198.18.0.0/15 and fd00:c0de::/64 only.
func v4Addr(i int) string   { return fmt.Sprintf("198.19.%d.%d", (i/254)%256, i%254+1) }
func v4Net28(i int) string  { return fmt.Sprintf("198.18.%d.%d", 16+(i/16)%240, (i%16)*16) }
func v6Addr(i int) string   { return fmt.Sprintf("fd00:c0de::1:%x:%x", i/65536+1, i%65536) }
func v6Net112(i int) string { return fmt.Sprintf("fd00:c0de::2:%x:0", i) }

// genHostRules returns a host firewall of iptRules iptables rules (half per
// family) and nftRules rules in the nftables table.
func genHostRules(iptRules, nftRules int) hostRules {
	h := hostRules{iptChains: len(iptChains), nftChain: len(nftChains)}
	h.v4, h.n4 = genIPT(iptRules/2, false)
	h.v6, h.n6 = genIPT(iptRules-iptRules/2, true)
	h.nft, h.nNft = genNft(nftRules)
	return h
}

func genIPT(n int, v6 bool) (string, int) {
	var b strings.Builder
	var lines []string
	lines = append(lines, "-A INPUT -i lo -j ACCEPT", "-A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT")
	if v6 {
		lines = append(lines, "-A INPUT -p ipv6-icmp -j ACCEPT")
	} else {
		lines = append(lines, "-A INPUT -p icmp -j ACCEPT")
	}
	lines = append(lines, "-A FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT")
	for _, c := range iptChains {
		lines = append(lines, fmt.Sprintf("-A %s -j %s", c.from, c.name))
	}
	lines = append(lines, "-A OUTPUT -o lo -j ACCEPT")
	for i := 0; len(lines) < n; i++ {
		c := iptChains[i%len(iptChains)]
		rule := c.v4
		if v6 {
			rule = c.v6
		}
		lines = append(lines, "-A "+c.name+" "+rule(i/len(iptChains)))
	}
	lines = lines[:min(n, len(lines))]
	b.WriteString("*filter\n:INPUT DROP [0:0]\n:FORWARD DROP [0:0]\n:OUTPUT ACCEPT [0:0]\n")
	for _, c := range iptChains {
		fmt.Fprintf(&b, ":%s - [0:0]\n", c.name)
	}
	for _, l := range lines {
		b.WriteString(l + "\n")
	}
	b.WriteString("COMMIT\n")
	return b.String(), len(lines)
}

// nftChains are the regular chains of the host's nftables table and how one
// of their rules looks for index i.
var nftChains = []struct {
	name, from string
	rule       func(i int) string
}{
	{"allow_ssh", "input", func(i int) string {
		if i%2 == 1 {
			return fmt.Sprintf("ip6 saddr %s tcp dport 22 counter accept", v6Addr(i+60000))
		}
		return fmt.Sprintf("ip saddr %s tcp dport 22 counter accept", v4Addr(i+60000))
	}},
	{"allow_web", "input", func(i int) string {
		if i%2 == 1 {
			return fmt.Sprintf("ip6 saddr %s/112 tcp dport { 80, 443, %d } accept", v6Net112(i+60000), 9000+i%1000)
		}
		return fmt.Sprintf("ip saddr %s/28 tcp dport { 80, 443, %d } accept", v4Net28(i+3000), 9000+i%1000)
	}},
	{"allow_mon", "input", func(i int) string {
		return fmt.Sprintf("ip saddr %s udp dport 161 ct state new counter accept comment \"mon-%d\"", v4Addr(i+80000), i)
	}},
	{"blocklist", "input", func(i int) string {
		return fmt.Sprintf("ip saddr %s counter drop", v4Addr(i+100000))
	}},
	{"fwd_rules", "forward", func(i int) string {
		return fmt.Sprintf("ip saddr %s/28 ip daddr %s tcp dport %d accept", v4Net28(i+5000), v4Addr(i+110000), 1024+i%5000)
	}},
}

// genNft returns an nft script that (re)creates table inet hostfw with n
// rules, leaving every other table alone.
func genNft(n int) (string, int) {
	body := map[string][]string{
		"input":   {"iifname \"lo\" accept", "ct state established,related accept", "meta l4proto { icmp, ipv6-icmp } accept"},
		"forward": {"ct state established,related accept"},
	}
	count := 4
	for _, c := range nftChains {
		body[c.from] = append(body[c.from], "jump "+c.name)
		count++
	}
	for i := 0; count < n; i++ {
		c := nftChains[i%len(nftChains)]
		body[c.name] = append(body[c.name], c.rule(i/len(nftChains)))
		count++
	}
	var b strings.Builder
	// Add, delete, define: loads whether or not the table is there.
	fmt.Fprintf(&b, "add table inet %s\ndelete table inet %s\ntable inet %s {\n", hostTable, hostTable, hostTable)
	chain := func(name, head string) {
		fmt.Fprintf(&b, "\tchain %s {\n", name)
		if head != "" {
			fmt.Fprintf(&b, "\t\t%s\n", head)
		}
		for _, r := range body[name] {
			fmt.Fprintf(&b, "\t\t%s\n", r)
		}
		b.WriteString("\t}\n")
	}
	chain("input", "type filter hook input priority filter; policy accept;")
	chain("forward", "type filter hook forward priority filter; policy accept;")
	for _, c := range nftChains {
		chain(c.name, "")
	}
	b.WriteString("}\n")
	return b.String(), count
}

// load loads every part of the host's firewall, replacing what is there of
// it (iptables-restore replaces the filter table of its family).
func (h hostRules) load() error {
	return h.loadParts(true, true)
}

func (h hostRules) loadParts(ipt, nft bool) error {
	if ipt {
		if err := runIn(h.v4, "iptables-restore"); err != nil {
			return err
		}
		if err := runIn(h.v6, "ip6tables-restore"); err != nil {
			return err
		}
	}
	if nft {
		if err := runIn(h.nft, "nft", "-f", "-"); err != nil {
			return err
		}
	}
	return nil
}

// loaded counts the host's own rules in place: "-A" lines of iptables-save
// and ip6tables-save outside Cordon's chains and jumps, and rules of table
// inet hostfw.
type loaded struct {
	V4  int `json:"iptables_v4"`
	V6  int `json:"iptables_v6"`
	Nft int `json:"nftables"`
}

func countLoaded() (loaded, error) {
	var l loaded
	for _, p := range []struct {
		cmd string
		n   *int
	}{{"iptables-save", &l.V4}, {"ip6tables-save", &l.V6}} {
		out, err := output(p.cmd, "-t", "filter")
		if err != nil {
			return l, err
		}
		for _, line := range strings.Split(out, "\n") {
			if strings.HasPrefix(line, "-A ") && !strings.Contains(line, "CORDON-") {
				*p.n++
			}
		}
	}
	out, err := output("nft", "-a", "list", "table", "inet", hostTable)
	if err != nil {
		return l, err
	}
	for _, line := range strings.Split(out, "\n") {
		t := strings.TrimSpace(line)
		if strings.Contains(t, "# handle ") && !strings.HasPrefix(t, "chain ") && !strings.HasPrefix(t, "table ") {
			l.Nft++
		}
	}
	return l, nil
}

// hostDump returns the host's own rules as text, without counters and
// without anything of Cordon's, to compare before and after.
func hostDump() (string, error) {
	var b strings.Builder
	for _, cmd := range []string{"iptables-save", "ip6tables-save"} {
		out, err := output(cmd, "-t", "filter")
		if err != nil {
			return "", err
		}
		b.WriteString("== " + cmd + "\n")
		for _, line := range strings.Split(out, "\n") {
			if strings.HasPrefix(line, "#") || strings.Contains(line, "CORDON-") {
				continue
			}
			if i := strings.Index(line, " ["); strings.HasPrefix(line, ":") && i > 0 {
				line = line[:i]
			}
			b.WriteString(line + "\n")
		}
	}
	out, err := output("nft", "list", "table", "inet", hostTable)
	if err != nil {
		return "", err
	}
	b.WriteString("== nft\n")
	for _, line := range strings.Split(out, "\n") {
		// Counters change as packets pass; drop their values.
		if i := strings.Index(line, "counter packets"); i >= 0 {
			rest := line[i+len("counter packets"):]
			f := strings.Fields(rest)
			if len(f) >= 3 {
				line = line[:i] + "counter " + strings.Join(f[3:], " ")
			}
		}
		b.WriteString(line + "\n")
	}
	return b.String(), nil
}

// runIn runs a command with stdin; the error carries its output.
func runIn(stdin, name string, args ...string) error {
	cmd := exec.Command(name, args...)
	cmd.Stdin = strings.NewReader(stdin)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

// output runs a command and returns its standard output; the error carries
// standard error.
func output(name string, args ...string) (string, error) {
	cmd := exec.Command(name, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, bytes.TrimSpace(stderr.Bytes()))
	}
	return string(out), nil
}
