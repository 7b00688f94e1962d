package firewall

import (
	"os/exec"
	"slices"
	"strings"
	"testing"

	"github.com/cordon-ir/cordon/internal/netlab/labtest"
)

func TestChoose(t *testing.T) {
	both := func(string) bool { return true }
	only := func(name string) func(string) bool { return func(n string) bool { return n == name } }
	cases := []struct {
		name      string
		h         HostFirewall
		installed func(string) bool
		want      string // plugin, or "" for an error
		reason    []string
	}{
		{"nft-only", HostFirewall{NFTables: true, Tables: []string{"inet filter"}}, both,
			"nftables", []string{"nftables tables in place (inet filter)", "no iptables installed", "one transaction"}},
		{"iptables-nft with docker", HostFirewall{NFTables: true, Tables: []string{"ip filter", "ip nat"}, Iptables: "nf_tables"}, both,
			"nftables", []string{"iptables is iptables-nft", "ip filter, ip nat"}},
		{"legacy beside nftables", HostFirewall{NFTables: true, Tables: []string{"inet firewalld"}, Iptables: "nf_tables", LegacyTables: []string{"ip filter"}}, both,
			"nftables", []string{"iptables-legacy tables in use (ip filter)", "iptables-legacy's included"}},
		{"empty host", HostFirewall{NFTables: true, Iptables: "nf_tables"}, both,
			"nftables", []string{"nf_tables available, no table in place"}},
		{"legacy only, nf_tables not loaded", HostFirewall{NFTablesWhyNot: "the nf_tables module is not loaded", Iptables: "legacy", LegacyTables: []string{"ip filter"}}, both,
			"iptables", []string{"no nf_tables: the nf_tables module is not loaded", "iptables is iptables-legacy", "as the host filters"}},
		{"nftables plugin missing", HostFirewall{NFTables: true, Iptables: "nf_tables"}, only("iptables"),
			"iptables", []string{"cordon-plugin-nftables is not installed"}},
		{"iptables plugin missing on a legacy host", HostFirewall{NFTablesWhyNot: "x", Iptables: "legacy"}, only("nftables"),
			"", []string{"cordon-plugin-iptables is not installed"}},
		{"nothing", HostFirewall{NFTablesWhyNot: "not Linux"}, both, "", []string{"no nf_tables: not Linux", "no iptables installed"}},
	}
	for _, tc := range cases {
		name, reason, err := Choose(tc.h, tc.installed)
		if err != nil {
			reason = err.Error()
		}
		if name != tc.want || (tc.want == "") != (err != nil) {
			t.Errorf("%s: Choose = %q, %q, %v; want %q", tc.name, name, reason, err, tc.want)
		}
		for _, w := range tc.reason {
			if !strings.Contains(reason, w) {
				t.Errorf("%s: reason %q lacks %q", tc.name, reason, w)
			}
		}
	}
}

// TestProbeHost reads a namespace's firewall as it changes: nothing, then
// an nftables table, then iptables-legacy rules beside it.
func TestProbeHost(t *testing.T) {
	if !labtest.IsChild(t) {
		l := labtest.New(t)
		labtest.RunChild(t, labtest.AddHost(t, l, "host", "198.18.0.2/24", ""))
		return
	}
	run := func(args ...string) {
		t.Helper()
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%q: %v\n%s", args, err, out)
		}
	}
	h := ProbeHost()
	if !h.NFTables || len(h.Tables) != 0 || len(h.LegacyTables) != 0 {
		t.Errorf("empty namespace: %+v", h)
	}
	out, _ := exec.Command("iptables", "-V").Output()
	if want := map[bool]string{true: "nf_tables", false: "legacy"}[strings.Contains(string(out), "nf_tables")]; h.Iptables != want {
		t.Errorf("Iptables = %q, want %q (iptables -V: %s)", h.Iptables, want, out)
	}
	run("nft", "add table inet firewalld")
	run("iptables-nft", "-A", "INPUT", "-j", "ACCEPT")
	h = ProbeHost()
	if !slices.Contains(h.Tables, "inet firewalld") || !slices.Contains(h.Tables, "ip filter") {
		t.Errorf("Tables = %q, want inet firewalld and ip filter", h.Tables)
	}
	run("iptables-legacy", "-A", "FORWARD", "-j", "ACCEPT")
	h = ProbeHost()
	if !slices.Contains(h.LegacyTables, "ip filter") {
		t.Errorf("LegacyTables = %q, want ip filter", h.LegacyTables)
	}
	name, reason, err := Choose(h, func(string) bool { return true })
	if name != "nftables" || err != nil || !strings.Contains(reason, "iptables-legacy tables in use (ip filter)") {
		t.Errorf("Choose = %q, %q, %v", name, reason, err)
	}
}
