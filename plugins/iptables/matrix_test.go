package main

import (
	"testing"

	"github.com/cordon-ir/cordon/internal/fwtest"
	"github.com/cordon-ir/cordon/pkg/firewall"
)

// TestMatrix runs the shared isolation matrix (internal/fwtest) against the
// plugin: every starting ruleset, isolate, probe, release, compare dumps.
func TestMatrix(t *testing.T) {
	fwtest.Run(t, fwtest.Plugin{
		New:    func(t *testing.T) firewall.Firewall { return nsPlugin(t) },
		Resets: true,
		AfterRelease: map[string]func(fwtest.Dump) fwtest.Dump{
			fwtest.SetupEmpty:     plusEmptyFilterTables,
			fwtest.SetupFirewalld: plusEmptyFilterTables,
		},
	})
}

// emptyFilterTables is what iptables-nft leaves in a namespace that had no
// iptables filter table before: the tables, with the base chains the plugin
// used, empty and with ACCEPT policies. No iptables command removes them
// (see pristineAfterRelease); they filter nothing. The plugin creates them
// in IPv4 then IPv6 order, and their base chains in the order it links into
// them, INPUT, OUTPUT, FORWARD.
var emptyFilterTables = fwtest.Dump{
	IPTables:  "*filter\n:INPUT ACCEPT\n:FORWARD ACCEPT\n:OUTPUT ACCEPT\nCOMMIT\n",
	IP6Tables: "*filter\n:INPUT ACCEPT\n:FORWARD ACCEPT\n:OUTPUT ACCEPT\nCOMMIT\n",
	NFT:       nftEmptyFilter("ip") + nftEmptyFilter("ip6"),
}

func nftEmptyFilter(family string) string {
	chain := func(name, hook string) string {
		return "\tchain " + name + " {\n\t\ttype filter hook " + hook + " priority filter; policy accept;\n\t}\n"
	}
	return "table " + family + " filter {\n" +
		chain("INPUT", "input") + "\n" + chain("OUTPUT", "output") + "\n" + chain("FORWARD", "forward") + "}\n"
}

// plusEmptyFilterTables is the dump expected after release in the setups
// with no iptables-nft filter table: the one before, plus the empty tables
// and nothing else.
func plusEmptyFilterTables(before fwtest.Dump) fwtest.Dump {
	return before.Plus(emptyFilterTables)
}
