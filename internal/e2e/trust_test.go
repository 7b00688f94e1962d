package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cordon-ir/cordon/internal/netlab"
	"github.com/cordon-ir/cordon/internal/stage"
)

// TestUnenrolledAgentRefused: an agent key the controller has not enrolled
// gets nowhere without a valid one-time token, and a token works once.
func TestUnenrolledAgentRefused(t *testing.T) {
	w := newWorld(t)
	for _, tc := range []struct{ name, token, why string }{
		{"no token", "", "the key is not enrolled; a new agent needs --enroll-token"},
		{"wrong token", "cdn-not-a-real-token", "enrollment refused: enrollment token is unknown, used or expired"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w.startAgent(stage.AgentOptions{Token: tc.token, Key: filepath.Join(t.TempDir(), "k")})
			w.eventually(15*time.Second, "agent refused, saying why", func() bool {
				return strings.Contains(w.AgentLog.String(), "controller refused the agent key") &&
					strings.Contains(w.AgentLog.String(), tc.why)
			})
			w.StopAgent()
			if hosts := w.mustHosts(); len(hosts) != 0 {
				t.Fatalf("an unenrolled key got in: %+v", hosts)
			}
			if !strings.Contains(w.CtlLog.String(), "authentication refused") {
				t.Errorf("controller did not log the refused key:\n%s", w.CtlLog)
			}
		})
	}
	t.Run("token is one-time", func(t *testing.T) {
		w.startAgent(stage.AgentOptions{Token: w.Token})
		w.waitOnline()
		w.StopAgent()
		// A second key cannot reuse the token, whatever name it asks for.
		w.startAgent(stage.AgentOptions{Token: w.Token, Key: filepath.Join(t.TempDir(), "k2")})
		w.eventually(15*time.Second, "second key refused", func() bool {
			return strings.Contains(w.AgentLog.String(), "enrollment token is unknown, used or expired")
		})
		w.StopAgent()
		if hosts := w.mustHosts(); len(hosts) != 1 {
			t.Fatalf("hosts = %+v, want only the first agent", hosts)
		}
		// The enrolled key needs no token any more.
		w.startAgent(stage.AgentOptions{})
		w.waitOnline()
	})
}

// TestAgentRefusesWrongController: an agent pinned to another fingerprint
// drops the connection at key exchange, before it offers its key or its
// token; the token stays unused.
func TestAgentRefusesWrongController(t *testing.T) {
	w := newWorld(t)
	// A fingerprint of some other key.
	other := filepath.Join(t.TempDir(), "other")
	if out, err := exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", other).CombinedOutput(); err != nil {
		t.Fatalf("ssh-keygen: %v %s", err, out)
	}
	out, err := exec.Command("ssh-keygen", "-l", "-f", other+".pub").Output()
	if err != nil {
		t.Fatal(err)
	}
	wrong := strings.Fields(string(out))[1]
	w.startAgent(stage.AgentOptions{Token: w.Token, Fingerprint: wrong})
	w.eventually(15*time.Second, "agent refuses the controller", func() bool {
		return strings.Contains(w.AgentLog.String(), "does not match the pinned fingerprint")
	})
	w.StopAgent()
	if strings.Contains(w.CtlLog.String(), "enroll") || strings.Contains(w.CtlLog.String(), "authentication refused") {
		t.Errorf("the agent reached authentication with a controller it should have refused:\n%s", w.CtlLog)
	}
	// The token was never sent, so it still enrolls the right agent.
	w.startAgent(stage.AgentOptions{Token: w.Token})
	w.waitOnline()
}

// TestOfflineHostGetsOrder: an order for a host whose agent is down is
// stored, and applied when the agent connects.
func TestOfflineHostGetsOrder(t *testing.T) {
	w := newWorld(t)
	w.startAgent(stage.AgentOptions{Token: w.Token})
	w.waitOnline()
	w.StopAgent()
	w.eventually(10*time.Second, "agent offline", func() bool {
		h, _ := w.HostState()
		return !h.Online
	})
	out := w.mustCordon("isolate", "host", hostName, "--reason", "seen beaconing")
	if !strings.Contains(out, "agent offline: order queued") {
		t.Errorf("isolate of an offline host does not say the order is queued:\n%s", out)
	}
	if rules := w.rules(w.Host); strings.Contains(rules, "CORDON-") {
		t.Fatalf("rules applied while the agent was down:\n%s", rules)
	}
	h, _ := w.HostState()
	if h.State != "isolating" {
		t.Errorf("offline host state = %q, want isolating", h.State)
	}
	w.startAgent(stage.AgentOptions{})
	w.eventually(30*time.Second, "host isolated after reconnecting", func() bool {
		h, _ := w.HostState()
		return h.Online && h.State == "isolated"
	})
	if rules := w.rules(w.Host); !strings.Contains(rules, "-j CORDON-") {
		t.Errorf("host reported isolated but its rules have no Cordon jump:\n%s", rules)
	}
}

// TestPluginCrashMidIsolate: the plugin dies after building its chains and
// linking some of them. The order fails with a clear error, the ruleset is
// exactly as before, and no plugin process is left behind but the one the
// agent starts again.
func TestPluginCrashMidIsolate(t *testing.T) {
	w := newWorld(t)
	w.restoreHostRules()
	before := w.rules(w.Host)

	// An iptables in front of the real one that kills its caller, the
	// plugin, when asked to link Cordon's OUTPUT chain: INPUT is linked
	// by then, the chains are built, nothing is finished.
	wrap := t.TempDir()
	real, err := exec.LookPath("iptables")
	if err != nil {
		t.Fatal(err)
	}
	script := "#!/bin/sh\ncase \" $* \" in *\" -I OUTPUT \"*) kill -9 $PPID; exit 1;; esac\nexec " + real + " \"$@\"\n"
	if err := os.WriteFile(filepath.Join(wrap, "iptables"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	// The plugin writes in one iptables-restore per family (found beside
	// iptables): kill it when that input links OUTPUT.
	realRestore, err := exec.LookPath("iptables-restore")
	if err != nil {
		t.Fatal(err)
	}
	restoreScript := "#!/bin/sh\nin=$(cat)\ncase \"$in\" in *\"-I OUTPUT \"*) kill -9 $PPID; exit 1;; esac\n" +
		"printf '%s\\n' \"$in\" | exec " + realRestore + " \"$@\"\n"
	if err := os.WriteFile(filepath.Join(wrap, "iptables-restore"), []byte(restoreScript), 0o755); err != nil {
		t.Fatal(err)
	}
	w.startAgent(stage.AgentOptions{Token: w.Token, Env: []string{"PATH=" + wrap + ":" + os.Getenv("PATH")}})
	w.waitOnline()

	out, errOut, code := w.Cordon("isolate", "host", hostName, "--reason", "crash test", "--wait")
	if code != 3 {
		t.Fatalf("isolate with a crashing plugin: exit %d, want 3 (order failed)\n%s\n%s", code, out, errOut)
	}
	if !strings.Contains(out+errOut, "crashed") {
		t.Errorf("failure does not say the plugin crashed:\n%s\n%s", out, errOut)
	}
	if after := w.rules(w.Host); after != before {
		t.Errorf("ruleset changed by a crashed isolation:\n--- before\n%s\n--- after\n%s", before, after)
	}
	h, _ := w.HostState()
	if h.State != "failed" || !h.Online {
		t.Errorf("host after a crashed isolation: %+v", h)
	}
	if n := countProcs(t, w.Host, "cordon-plugin-i"); n != 1 {
		t.Errorf("%d plugin processes in the host namespace, want 1 (the restarted one)", n)
	}
}

// countProcs counts processes in h's namespace whose comm starts with
// prefix (comm is cut at 15 bytes).
func countProcs(t *testing.T, h *netlab.Host, prefix string) int {
	t.Helper()
	out, err := exec.Command("ip", "netns", "pids", h.NS).Output()
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, pid := range strings.Fields(string(out)) {
		comm, err := os.ReadFile("/proc/" + pid + "/comm")
		if err == nil && strings.HasPrefix(string(comm), prefix) {
			n++
		}
	}
	return n
}

// TestPluginMissing: an agent whose firewall plugin is not installed still
// connects; cordon hosts says the plugin is unusable, and an isolate order
// fails plainly without touching the rules.
func TestPluginMissing(t *testing.T) {
	w := newWorld(t)
	w.restoreHostRules()
	before := w.rules(w.Host)
	w.startAgent(stage.AgentOptions{Token: w.Token, Args: []string{"--plugin", "nosuch"}})
	w.waitOnline()
	h, _ := w.HostState()
	if !strings.Contains(h.Plugin, "unusable") || !strings.Contains(h.Plugin, "cordon-plugin-nosuch does not exist") {
		t.Errorf("cordon hosts does not show the missing plugin: %q", h.Plugin)
	}
	out, errOut, code := w.Cordon("isolate", "host", hostName, "--reason", "plugin missing", "--wait")
	if code != 3 || !strings.Contains(errOut, "firewall plugin not found") || !strings.Contains(errOut, "no rule was changed") {
		t.Errorf("isolate without a plugin: exit %d\n%s\n%s", code, out, errOut)
	}
	if after := w.rules(w.Host); after != before {
		t.Errorf("rules changed:\n%s\n---\n%s", before, after)
	}
}

// TestSelfTestCatchesLeak: a plugin that says it isolated the host but
// changed nothing passes its own read-back; the agent's self-test from the
// host finds a forbidden connection answered and fails the order.
func TestSelfTestCatchesLeak(t *testing.T) {
	w := newWorld(t)
	w.startAgent(stage.AgentOptions{Token: w.Token, Plugin: "leaky"})
	w.waitOnline()
	out, errOut, code := w.Cordon("isolate", "host", hostName, "--reason", "leak test", "--wait")
	if code != 3 || !strings.Contains(out+errOut, "isolation self-test failed") {
		t.Fatalf("isolate with a leaking plugin: exit %d, want 3 and the self-test failure\n%s\n%s", code, out, errOut)
	}
	if audit := w.mustCordon("audit", "--host", hostName); !strings.Contains(audit, "left the host") {
		t.Errorf("audit does not say what leaked:\n%s", audit)
	}
}
