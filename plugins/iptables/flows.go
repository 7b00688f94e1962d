package main

import (
	"bufio"
	"bytes"
	"encoding/hex"
	"net/netip"
	"strings"

	"github.com/cordon-ir/cordon/internal/flowcut"
)

// flowTable is the kernel's connection tracking table as the plugin uses it.
type flowTable interface {
	// available returns nil when conntrack entries can be deleted here.
	available() error
	// cut deletes family f's entries for which keep returns false and
	// returns how many it deleted.
	cut(f family, keep func(flowcut.Flow) bool) (uint64, error)
}

// firstIPv6 returns the first address in /proc/net/if_inet6 text that is not
// on the loopback interface, or "" when there is none. Each line is: address
// (32 hex digits), interface index, prefix length, scope, flags, interface
// name (see the kernel's Documentation/networking/proc_net_if_inet6).
func firstIPv6(data []byte) string {
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 6 || f[5] == "lo" {
			continue
		}
		raw, err := hex.DecodeString(f[0])
		if err != nil || len(raw) != 16 {
			continue
		}
		a := netip.AddrFrom16([16]byte(raw))
		if a.IsLoopback() {
			continue
		}
		return a.String() + "%" + f[5]
	}
	return ""
}
