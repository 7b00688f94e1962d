package e2e

import (
	"context"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/cordon-ir/cordon/internal/netlab/labtest"
	"github.com/cordon-ir/cordon/internal/stage"
	"github.com/cordon-ir/cordon/pkg/firewall"
)

// wipe is one way a host's own tooling removes or displaces Cordon's rules
// while the host is isolated, as the command does it to the kernel's
// tables.
type wipe struct {
	name string
	sh   string          // run with sh -c in the host's namespace
	hits map[string]bool // plugins whose rules it removes or displaces
}

var wipes = []wipe{
	{"iptables -F", "iptables -F && ip6tables -F",
		map[string]bool{"iptables": true}},
	// firewalld with its iptables backend flushes every chain and deletes
	// the chains it does not own on reload, then builds its own again.
	{"firewall-cmd --reload (iptables backend)", "for t in iptables ip6tables; do $t -F && $t -X && $t -N INPUT_direct && $t -I INPUT 1 -j INPUT_direct; done",
		map[string]bool{"iptables": true}},
	// With its nftables backend it replaces its own table only.
	{"firewall-cmd --reload (nftables backend)", "nft add table inet firewalld && nft delete table inet firewalld && nft add table inet firewalld && nft 'add chain inet firewalld filter_INPUT { type filter hook input priority 10; policy accept; }'",
		map[string]bool{}},
	// ufw reload puts its chains' jumps back at the top of the builtin
	// chains.
	{"ufw reload", "for t in iptables ip6tables; do for c in INPUT OUTPUT FORWARD; do l=$(echo $c | tr A-Z a-z); $t -N ufw-before-$l 2>/dev/null; $t -I $c 1 -j ufw-before-$l; done; done",
		map[string]bool{"iptables": true}},
	// Docker, when it starts, puts the jump to DOCKER-USER first in
	// FORWARD.
	{"Docker restart", "iptables -N DOCKER-USER 2>/dev/null; iptables -N DOCKER 2>/dev/null; iptables -I FORWARD 1 -j DOCKER-USER && iptables -I FORWARD 2 -o docker0 -j DOCKER",
		map[string]bool{"iptables": true}},
	{"nft flush ruleset", "nft flush ruleset",
		map[string]bool{"iptables": true, "nftables": true}},
	{"nft delete table inet cordon", "nft delete table inet cordon 2>/dev/null || true",
		map[string]bool{"nftables": true}},
}

// TestDriftRepair isolates a host with each plugin, then removes or
// displaces Cordon's rules in each way the host's own tools do, and
// expects them back, the repair reported to the controller (cordon hosts,
// the audit trail), and the host still cut off. Wipes that leave a
// plugin's rules alone must leave them exactly so, unrepaired. How long
// each repair took is logged; bench/contain measures it.
func TestDriftRepair(t *testing.T) {
	for _, plugin := range []string{"iptables", "nftables"} {
		t.Run(plugin, func(t *testing.T) {
			w := newWorld(t)
			w.restoreHostRules()
			w.mustServe(w.Host, "8080")
			opts := stage.AgentOptions{Token: w.Token, Plugin: plugin}
			if plugin == "nftables" {
				// The default, which picks nftables on this host.
				opts.Plugin = "auto"
			}
			w.startAgent(opts)
			w.waitOnline()
			h, _ := w.HostState()
			if !strings.HasPrefix(h.Plugin, plugin+" ") || h.PluginReason == "" {
				t.Fatalf("host's plugin %q, reason %q; want %s and why", h.Plugin, h.PluginReason, plugin)
			}
			if out := w.mustCordon("hosts"); !strings.Contains(out, "CHOSEN BECAUSE") || !strings.Contains(out, h.PluginReason[:20]) {
				t.Errorf("cordon hosts does not say which plugin and why:\n%s", out)
			}
			w.mustCordon("isolate", "host", hostName, "--reason", "drift test", "--wait")
			inPlace := func() bool { return cordonInPlace(w, plugin) }
			if !inPlace() {
				t.Fatal("rules not in place after isolation")
			}
			repairs := 0
			for _, wp := range wipes {
				if _, err := w.Host.Output("sh", "-c", wp.sh); err != nil {
					t.Fatalf("%s: %v", wp.name, err)
				}
				start := time.Now()
				if !wp.hits[plugin] {
					if !inPlace() {
						t.Errorf("%s removed the %s plugin's rules", wp.name, plugin)
					}
					time.Sleep(3 * stageDriftInterval)
					if h, _ := w.HostState(); h.Repairs != repairs {
						t.Errorf("%s: %d repairs, want %d: nothing of Cordon's was touched", wp.name, h.Repairs, repairs)
					}
					continue
				}
				// The repair may already be done when inPlace first
				// looks (a drift check lands every 250 ms, and starting
				// iptables-save or nft takes a while on a loaded
				// machine): the reported repair below is what shows
				// that the wipe wiped.
				for !inPlace() {
					if time.Since(start) > 10*time.Second {
						t.Fatalf("%s: rules not back after 10 s", wp.name)
					}
					time.Sleep(10 * time.Millisecond)
				}
				back := time.Since(start)
				repairs++
				w.eventually(10*time.Second, wp.name+": repair reported", func() bool {
					h, _ := w.HostState()
					return h.Repairs == repairs
				})
				h, _ := w.HostState()
				t.Logf("%s: rules back %v after the wipe (target 1 s); controller: %s", wp.name, back.Round(time.Millisecond), h.LastRepairDetail)
				if h.State != "isolated" || !strings.Contains(h.LastRepairDetail, "put back in") {
					t.Errorf("%s: host %q, last repair %q", wp.name, h.State, h.LastRepairDetail)
				}
				if w.Reachable(w.Outside, hostV4+":8080") {
					t.Errorf("%s: outside reaches the host after the repair", wp.name)
				}
			}
			audit := w.mustCordon("audit", "--host", hostName)
			if n := strings.Count(audit, "drift-repaired"); n != repairs {
				t.Errorf("audit has %d drift-repaired entries, want %d:\n%s", n, repairs, audit)
			}
			w.mustCordon("release", "host", hostName, "--reason", "done", "--wait")
			time.Sleep(3 * stageDriftInterval)
			if cordonInPlace(w, plugin) {
				t.Error("rules back after release: drift repair must stop once released")
			}
		})
	}
}

// stageDriftInterval is the agent's default drift interval.
const stageDriftInterval = 250 * time.Millisecond

// cordonInPlace reports whether the plugin's rules are in place and first:
// for iptables, a jump to a CORDON chain first in INPUT, OUTPUT and
// FORWARD of both families; for nftables, table inet cordon with its three
// chains.
func cordonInPlace(w *world, plugin string) bool {
	if plugin == "nftables" {
		out, err := w.Host.Output("nft", "list", "table", "inet", "cordon")
		return err == nil && strings.Count(out, "policy drop;") == 3 && strings.Contains(out, "tcp sport")
	}
	for _, cmd := range []string{"iptables", "ip6tables"} {
		for _, c := range []string{"INPUT", "OUTPUT", "FORWARD"} {
			out, err := w.Host.Output(cmd, "-S", c)
			lines := strings.Split(strings.TrimSpace(out), "\n")
			if err != nil || len(lines) < 2 || !strings.HasPrefix(lines[1], "-A "+c+" -j CORDON-") {
				return false
			}
		}
	}
	return true
}

// TestAutoKeepsThePluginInPlace: a host isolated through the iptables
// plugin whose agent restarts with --plugin auto (which would pick
// nftables here) keeps the iptables plugin, which can read and release
// those rules, and says why.
func TestAutoKeepsThePluginInPlace(t *testing.T) {
	w := newWorld(t)
	w.startAgent(stage.AgentOptions{Token: w.Token, Plugin: "iptables"})
	w.waitOnline()
	w.mustCordon("isolate", "host", hostName, "--reason", "auto test", "--wait")
	w.StopAgent()
	w.startAgent(stage.AgentOptions{Plugin: "auto"})
	w.waitOnline()
	h, _ := w.HostState()
	if !strings.HasPrefix(h.Plugin, "iptables ") || !strings.Contains(h.PluginReason, "keeping iptables") || h.State != "isolated" {
		t.Fatalf("after a restart with auto: plugin %q (%s), state %s", h.Plugin, h.PluginReason, h.State)
	}
	w.mustCordon("release", "host", hostName, "--reason", "done", "--wait")
	if strings.Contains(w.rules(w.Host), "CORDON-") {
		t.Error("Cordon rules left after release")
	}
}

// TestRewrittenRulesPutRight: while the agent is down, someone rewrites
// Cordon's table into a valid one for a wider policy (an allowlist entry
// nobody ordered, applied through the plugin itself); the agent comes back
// reporting rules that are Cordon's and isolated, but not the ones the
// controller saw verified: the controller puts the ordered policy back.
func TestRewrittenRulesPutRight(t *testing.T) {
	if labtest.IsChild(t) {
		widenInNamespace(t)
		return
	}
	w := newWorld(t)
	w.startAgent(stage.AgentOptions{Token: w.Token, Plugin: "nftables"})
	w.waitOnline()
	w.mustCordon("isolate", "host", hostName, "--reason", "rewrite test", "--wait")
	table := func() string {
		out, err := w.Host.Output("nft", "list", "table", "inet", "cordon")
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	verified := table()
	w.StopAgent()
	labtest.RunChild(t, w.Host, "CORDON_E2E_BIN="+w.Bin, "CORDON_E2E_RUNTIME="+w.RuntimeDir)
	if !strings.Contains(table(), "198.19.0.0/16") {
		t.Fatalf("the rewrite did not take:\n%s", table())
	}
	w.startAgent(stage.AgentOptions{Plugin: "nftables"})
	w.waitOnline()
	w.eventually(20*time.Second, "the ordered policy put back", func() bool {
		h, _ := w.HostState()
		return h.State == "isolated" && !strings.Contains(table(), "198.19.0.0/16")
	})
	if audit := w.mustCordon("audit", "--host", hostName); !strings.Contains(audit, "other than those verified") {
		t.Errorf("audit does not say why the isolation was applied again:\n%s", audit)
	}
	if got := table(); got != verified {
		t.Errorf("table after the re-push:\n%s\nwant as verified:\n%s", got, verified)
	}
}

// widenInNamespace, in the host's namespace, applies the policy in force
// plus an allowlist entry through the nftables plugin.
func widenInNamespace(t *testing.T) {
	fw, err := firewall.Launch(firewall.LaunchConfig{Dir: os.Getenv("CORDON_E2E_BIN"), Name: "nftables", SocketDir: os.Getenv("CORDON_E2E_RUNTIME")})
	if err != nil {
		t.Fatal(err)
	}
	defer fw.Close()
	st, err := fw.Status(context.Background())
	if err != nil || st.Policy == nil {
		t.Fatalf("Status = %+v, %v", st, err)
	}
	wider := *st.Policy
	wider.Allow = append(wider.Allow, netip.MustParsePrefix("198.19.0.0/16"))
	if _, err := fw.Isolate(context.Background(), wider, "someone-else"); err != nil {
		t.Fatal(err)
	}
}
