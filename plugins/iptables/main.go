// Command cordon-plugin-iptables is Cordon's host firewall plugin for
// iptables (DESIGN.md §3, §5): the agent launches it through go-plugin and it
// isolates the host with chains of its own in the filter table of iptables
// and ip6tables, then cuts established flows the policy does not allow.
//
// Invariants a caller can rely on: every chain it creates is named
// CORDON-<IN|OUT|FWD>-<generation> and linked by one jump at the top of
// INPUT, OUTPUT and FORWARD; it never changes any other rule, chain, policy
// or table; it keeps no state outside the kernel. It must run as root in the
// host's network namespace; it logs to stderr, which go-plugin passes to the
// host.
package main

import (
	"os"

	"github.com/hashicorp/go-hclog"

	"github.com/cordon-ir/cordon/pkg/firewall"
)

func main() {
	log := hclog.New(&hclog.LoggerOptions{
		Name:       "iptables",
		Output:     os.Stderr,
		JSONFormat: true,
		Level:      hclog.Info,
	})
	firewall.Serve(New(Options{Logger: log}))
}
