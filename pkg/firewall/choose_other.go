//go:build !linux

package firewall

// ProbeHost finds no packet filter outside Linux.
func ProbeHost() HostFirewall {
	return HostFirewall{NFTablesWhyNot: "not Linux"}
}
