package firewall

import (
	"errors"
	"strconv"
	"strings"
)

// Auto is the plugin name that makes the agent choose a plugin from what
// the host's firewall is (Choose).
const Auto = "auto"

// HostFirewall is what a host's packet filter is, as far as choosing a
// plugin goes; ProbeHost reads it.
type HostFirewall struct {
	// NFTables is true when nf_tables answers in the kernel without a
	// module being loaded for it: built in, or its module already loaded.
	NFTables bool
	// NFTablesWhyNot says why NFTables is false.
	NFTablesWhyNot string
	// Tables are the nftables tables in place, as "family name" ("inet
	// firewalld", "ip filter"); those of iptables-nft included.
	Tables []string
	// Iptables is the variant that iptables(8) reports in its version
	// ("iptables v1.8.9 (nf_tables)"): "nf_tables", "legacy", or "" when
	// no iptables is installed.
	Iptables string
	// LegacyTables are the iptables-legacy tables in use in the network
	// namespace: /proc/net/ip_tables_names and ip6_tables_names, which the
	// kernel's x_tables list (proc(5)), as "ip filter", "ip6 nat".
	LegacyTables []string
}

// Choose picks the firewall plugin for a host from what its firewall is:
// "nftables" wherever nf_tables is there to use (nft-only hosts, and
// iptables-nft ones, whose rules are nftables rules too), since it applies
// and removes Cordon's rules in single transactions, sits on the hooks
// before the host's own chains, and no iptables command can flush it;
// "iptables" on a host that filters with iptables-legacy alone and has no
// nf_tables (Cordon never loads a kernel module the host does not use), or
// when the nftables plugin is not installed. installed reports whether a
// plugin's executable is there. The reason says what was found and why it
// led to the choice, for the agent's log and `cordon hosts`. The error
// says why no plugin can be used.
func Choose(h HostFirewall, installed func(name string) bool) (name, reason string, err error) {
	var found []string
	switch {
	case len(h.Tables) > 0:
		found = append(found, "nftables tables in place ("+list(h.Tables)+")")
	case h.NFTables:
		found = append(found, "nf_tables available, no table in place")
	default:
		found = append(found, "no nf_tables: "+h.NFTablesWhyNot)
	}
	switch h.Iptables {
	case "nf_tables":
		found = append(found, "iptables is iptables-nft")
	case "legacy":
		found = append(found, "iptables is iptables-legacy")
	default:
		found = append(found, "no iptables installed")
	}
	if len(h.LegacyTables) > 0 {
		found = append(found, "iptables-legacy tables in use ("+list(h.LegacyTables)+")")
	}
	what := strings.Join(found, "; ")
	if h.NFTables && installed("nftables") {
		why := "Cordon's own inet table, applied in one transaction, runs before the host's chains and a drop there is final"
		if len(h.LegacyTables) > 0 {
			why += ", iptables-legacy's included, which hook in after it"
		}
		return "nftables", what + ": " + why, nil
	}
	if h.Iptables != "" && installed("iptables") {
		why := "iptables, as the host filters"
		if h.NFTables {
			why = "iptables: cordon-plugin-nftables is not installed"
		}
		return "iptables", what + ": " + why, nil
	}
	switch {
	case h.NFTables:
		return "", "", errors.New("no firewall plugin to use: " + what + "; and cordon-plugin-nftables is not installed")
	case h.Iptables != "":
		return "", "", errors.New("no firewall plugin to use: " + what + "; and cordon-plugin-iptables is not installed")
	}
	return "", "", errors.New("no firewall plugin to use: " + what)
}

// list joins up to 8 names, then says how many more.
func list(names []string) string {
	if len(names) <= 8 {
		return strings.Join(names, ", ")
	}
	return strings.Join(names[:8], ", ") + ", and " + strconv.Itoa(len(names)-8) + " more"
}
