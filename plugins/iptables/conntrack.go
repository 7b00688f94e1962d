package main

import "github.com/cordon-ir/cordon/internal/flowcut"

// conntrackTable is the kernel's conntrack table reached over netfilter
// netlink, as conntrack(8) reaches it (flowcut); it works in the caller's
// network namespace.
type conntrackTable struct{}

func (conntrackTable) available() error { return flowcut.Available() }

func (conntrackTable) cut(f family, keep func(flowcut.Flow) bool) (uint64, error) {
	return flowcut.Cut(f == ipv6, keep)
}
