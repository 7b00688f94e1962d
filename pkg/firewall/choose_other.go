//go:build !linux

package firewall

// ProbeHost finds no packet filter outside Linux.
func ProbeHost() HostFirewall {
	return HostFirewall{NFTablesWhyNot: "not Linux"}
}

// NFTablesPresent reports that there is no nf_tables outside Linux.
func NFTablesPresent() (bool, string) { return false, "not Linux" }

// IptablesVariant finds no iptables outside Linux.
func IptablesVariant() string { return "" }
