package main

import (
	"errors"
	"io/fs"
	"os"
	"strings"
)

// ifInet6 lists the host's IPv6 addresses; it is absent when the kernel has
// no IPv6 (or it is disabled at boot). It is per network namespace.
const ifInet6 = "/proc/net/if_inet6"

// hostIPv6Addr returns an IPv6 address of the host other than loopback, or ""
// when it has none.
func hostIPv6Addr() (string, error) {
	data, err := os.ReadFile(ifInet6)
	if errors.Is(err, fs.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", err
	}
	return firstIPv6(data), nil
}

// legacyTablesInUse names the iptables-legacy tables in use in this
// network namespace (/proc/net/ip_tables_names, ip6_tables_names, which
// x_tables lists), "" when there are none.
func legacyTablesInUse() string {
	var out []string
	for _, f := range []struct{ path, fam string }{{"/proc/net/ip_tables_names", "ip"}, {"/proc/net/ip6_tables_names", "ip6"}} {
		b, err := os.ReadFile(f.path)
		if err != nil {
			continue
		}
		for _, t := range strings.Fields(string(b)) {
			out = append(out, f.fam+" "+t)
		}
	}
	return strings.Join(out, ", ")
}
