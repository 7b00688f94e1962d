package e2e

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cordon-ir/cordon/controller/api"
	"github.com/cordon-ir/cordon/internal/stage"
)

// slowIptables puts an iptables in front of the real one whose first call
// to create a chain waits for delay, so an isolation is still under way
// when the test acts on the controller.
//
// Its marker file lives in markDir, which must be the agent's runtime
// directory: Landlock lets nothing the agent starts write anywhere else.
func slowIptables(t *testing.T, delay, markDir string) []string {
	t.Helper()
	dir := t.TempDir()
	real, err := exec.LookPath("iptables")
	if err != nil {
		t.Fatal(err)
	}
	marker := filepath.Join(markDir, "slowed")
	script := "#!/bin/sh\ncase \" $* \" in *\" -N \"*) if [ ! -e " + marker + " ]; then : > " + marker + "; sleep " + delay +
		"; fi;; esac\nexec " + real + " \"$@\"\n"
	if err := os.WriteFile(filepath.Join(dir, "iptables"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	// The iptables plugin writes with iptables-restore, found beside
	// iptables: its first run waits too.
	realRestore, err := exec.LookPath("iptables-restore")
	if err != nil {
		t.Fatal(err)
	}
	script = "#!/bin/sh\nif [ ! -e " + marker + " ]; then : > " + marker + "; sleep " + delay + "; fi\nexec " + realRestore + " \"$@\"\n"
	if err := os.WriteFile(filepath.Join(dir, "iptables-restore"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return []string{"PATH=" + dir + ":" + os.Getenv("PATH")}
}

func (w *world) orderState(id string) api.Order {
	w.t.Helper()
	var orders []api.Order
	if err := json.Unmarshal([]byte(w.mustCordon("orders", "-o", "json")), &orders); err != nil {
		w.t.Fatal(err)
	}
	for _, o := range orders {
		if o.ID == id {
			return o
		}
	}
	w.t.Fatalf("order %s not listed", id)
	return api.Order{}
}

// TestHalfDeadController: the controller freezes (SIGSTOP: its TCP
// connections stay open, nothing answers) while the agent carries out an
// isolation. The isolation completes anyway; the agent notices the dead
// controller within two keepalive intervals and reconnects; once the
// controller is back, the agent's reports arrive and the order is done.
func TestHalfDeadController(t *testing.T) {
	w := newWorld(t)
	w.startAgent(stage.AgentOptions{Token: w.Token, Env: slowIptables(t, "3", w.RuntimeDir), Args: []string{"--keepalive", "1s"}})
	w.waitOnline()

	var ord api.Order
	if err := json.Unmarshal([]byte(w.mustCordon("isolate", "host", hostName, "--reason", "half-dead test", "-o", "json")), &ord); err != nil {
		t.Fatal(err)
	}
	w.eventually(10*time.Second, "order delivered", func() bool { return w.orderState(ord.ID).State != "pending" })
	ctl := w.ControllerPID()
	if err := syscall.Kill(ctl, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	frozen := time.Now()
	resumed := false
	resume := func() {
		if !resumed {
			syscall.Kill(ctl, syscall.SIGCONT)
			resumed = true
		}
	}
	t.Cleanup(resume)

	w.eventually(20*time.Second, "isolation applied while the controller is frozen", func() bool {
		return strings.Contains(w.rules(w.Host), "-j CORDON-")
	})
	w.eventually(10*time.Second, "agent notices the frozen controller", func() bool {
		return strings.Contains(w.AgentLog.String(), "controller stopped answering keepalives")
	})
	t.Logf("frozen controller noticed %v after the freeze (keepalive 1s)", time.Since(frozen).Round(time.Millisecond))
	w.eventually(10*time.Second, "isolation verified while the controller is frozen", func() bool {
		return strings.Contains(w.AgentLog.String(), "host isolated and verified")
	})
	resume()
	w.eventually(30*time.Second, "order done after the controller is back", func() bool {
		o := w.orderState(ord.ID)
		return o.State == "done" && o.SnapshotStored
	})
	h, _ := w.HostState()
	if h.State != "isolated" || !h.Online {
		t.Errorf("host after the controller came back: %+v", h)
	}
}

// TestControllerDiskFull: the controller's evidence store is full when the
// bundle arrives. The upload fails with a clear error, the agent keeps the
// bundle in memory and sends it again, and once there is room it is stored:
// nothing is lost, and containment was never held up.
func TestControllerDiskFull(t *testing.T) {
	w := newWorld(t)
	ev := filepath.Join(w.DataDir, "evidence")
	// A 4 KiB tmpfs over the evidence directory: too small for a bundle.
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=4k,mode=0700", "cordon-test-full", ev).CombinedOutput(); err != nil {
		t.Fatalf("mount tmpfs: %v %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", "-l", ev).Run() })
	for _, d := range []string{"sha256", "tmp"} {
		os.MkdirAll(filepath.Join(ev, d), 0o700)
	}
	// Restart the controller so its mount namespace (ip netns exec makes
	// one) has the small file system.
	w.StopController()
	if err := w.StartController(); err != nil {
		t.Fatal(err)
	}
	w.startAgent(stage.AgentOptions{Token: w.Token})
	w.waitOnline()
	var ord api.Order
	if err := json.Unmarshal([]byte(w.mustCordon("isolate", "host", hostName, "--reason", "disk full test", "-o", "json")), &ord); err != nil {
		t.Fatal(err)
	}
	w.eventually(20*time.Second, "host isolated despite the full disk", func() bool {
		o := w.orderState(ord.ID)
		return o.State == "done"
	})
	w.eventually(10*time.Second, "the full disk is reported", func() bool {
		return strings.Contains(w.CtlLog.String(), "controller storage is low") &&
			strings.Contains(w.AgentLog.String(), "will retry")
	})
	if o := w.orderState(ord.ID); o.SnapshotStored {
		t.Fatalf("evidence stored on a full disk? %+v", o)
	}
	// Make room where the controller sees its evidence directory.
	grow := w.Ctl.Command("mount", "-o", "remount,size=8m", ev)
	if out, err := grow.CombinedOutput(); err != nil {
		t.Fatalf("grow tmpfs: %v %s", err, out)
	}
	w.eventually(45*time.Second, "evidence stored once there is room", func() bool { return w.orderState(ord.ID).SnapshotStored })
	// What was stored is the bundle the agent signed.
	bundle := filepath.Join(t.TempDir(), "b.tar.gz")
	w.mustCordon("snapshot", "download", w.orderState(ord.ID).SnapshotID, "--out", bundle)
	w.mustCordon("snapshot", "verify", bundle)
}

// TestIsolationSurvivesRestartAndReboot (DESIGN.md §3.7): the rules stay in
// the kernel while the agent is down and the agent finds them when it
// starts; after a "reboot" (the agent down and the ruleset back to the
// host's own), the controller pushes the isolation again as soon as the
// agent reconnects.
func TestIsolationSurvivesRestartAndReboot(t *testing.T) {
	w := newWorld(t)
	w.restoreHostRules()
	w.mustServe(w.Host, "8080")
	w.startAgent(stage.AgentOptions{Token: w.Token})
	w.waitOnline()
	if !w.Reachable(w.Outside, hostV4+":8080") {
		t.Fatal("service not reachable before isolation")
	}
	w.mustCordon("isolate", "host", hostName, "--reason", "restart test", "--allow", "198.19.7.0/24", "--wait")
	isolated := w.rules(w.Host)

	w.StopAgent()
	if got := w.rules(w.Host); got != isolated {
		t.Fatalf("rules changed when the agent stopped:\n%s", got)
	}
	if w.Reachable(w.Outside, hostV4+":8080") {
		t.Fatal("host reachable while the agent is down")
	}
	w.startAgent(stage.AgentOptions{})
	w.waitOnline()
	w.eventually(10*time.Second, "agent reports the rules it found", func() bool {
		return strings.Contains(w.AgentLog.String(), "Cordon's rules are in place from before this start")
	})
	h, _ := w.HostState()
	if h.State != "isolated" {
		t.Errorf("after an agent restart the host is %q, want isolated", h.State)
	}

	// Reboot: the kernel forgets Cordon's rules; the host boots with its own.
	w.StopAgent()
	w.restoreHostRules()
	if strings.Contains(w.rules(w.Host), "CORDON-") {
		t.Fatal("rules not reset")
	}
	w.startAgent(stage.AgentOptions{})
	w.eventually(30*time.Second, "isolation pushed again after the reboot", func() bool {
		return strings.Contains(w.rules(w.Host), "-j CORDON-")
	})
	w.eventually(10*time.Second, "host isolated again", func() bool {
		h, _ := w.HostState()
		return h.State == "isolated" && h.Online
	})
	if got := w.rules(w.Host); got != isolated {
		t.Errorf("re-pushed isolation differs from the original (the allowlist must be kept):\n--- first\n%s\n--- after reboot\n%s", isolated, got)
	}
	audit := w.mustCordon("audit", "--host", hostName)
	if !strings.Contains(audit, "re-apply isolation") {
		t.Errorf("audit log does not record the re-push:\n%s", audit)
	}
	// Release still works on rules this agent process did not apply.
	w.mustCordon("release", "host", hostName, "--reason", "done", "--wait")
	if strings.Contains(w.rules(w.Host), "CORDON-") {
		t.Error("Cordon rules left after release")
	}
}

// TestOrdersKeepTheirOrder: isolate and release issued back to back (and a
// second pair queued while the agent is offline) are carried out in the
// order they were issued; the host ends released, with no Cordon rule left.
func TestOrdersKeepTheirOrder(t *testing.T) {
	w := newWorld(t)
	w.restoreHostRules()
	before := w.rules(w.Host)
	w.startAgent(stage.AgentOptions{Token: w.Token})
	w.waitOnline()
	check := func(when string) {
		t.Helper()
		w.eventually(30*time.Second, when+": host released", func() bool {
			h, _ := w.HostState()
			return h.State == "released"
		})
		var orders []api.Order
		json.Unmarshal([]byte(w.mustCordon("orders", "-o", "json")), &orders)
		for _, o := range orders {
			if o.State != "done" {
				t.Errorf("%s: order %s (%s) is %s: %s", when, o.ID, o.Kind, o.State, o.Error)
			}
		}
		if got := w.rules(w.Host); got != before {
			t.Errorf("%s: rules differ from before:\n%s", when, got)
		}
	}
	w.mustCordon("isolate", "host", hostName, "--reason", "one")
	w.mustCordon("release", "host", hostName, "--reason", "two")
	check("online")

	w.StopAgent()
	w.mustCordon("isolate", "host", hostName, "--reason", "three")
	w.mustCordon("release", "host", hostName, "--reason", "four")
	w.startAgent(stage.AgentOptions{})
	check("after reconnecting")
}

// TestControllerByNameWhileIsolated: the agent knows the controller by
// name. Once the host is isolated the name cannot be resolved any more (DNS
// is cut, as it should be); the agent must still reconnect, after a
// controller restart and after its own restart, to the IP the rules allow,
// or it would lock itself out and the host could not be released.
func TestControllerByNameWhileIsolated(t *testing.T) {
	w := newWorld(t)
	// Resolve the name in the host's namespace only (ip netns exec binds
	// /etc/netns/NS/* over /etc/*); DNS points into the lab, at nothing.
	etc := filepath.Join("/etc/netns", w.Host.NS)
	if err := os.MkdirAll(etc, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(etc) })
	hosts := filepath.Join(etc, "hosts")
	os.WriteFile(hosts, []byte("127.0.0.1 localhost\n"+stage.CtlV4+" ctl.cordon.test\n"+stage.CtlV6+" ctl.cordon.test\n"), 0o644)
	os.WriteFile(filepath.Join(etc, "resolv.conf"), []byte("nameserver 198.18.0.53\n"), 0o644)

	w.startAgent(stage.AgentOptions{Token: w.Token, Controller: "ctl.cordon.test:7443"})
	w.waitOnline()
	w.mustCordon("isolate", "host", hostName, "--reason", "by name", "--wait")
	// Every address of the name is pinned, not only the one connected to.
	if r := w.rules(w.Host); !strings.Contains(r, "-d "+stage.CtlV4+"/32 -p tcp") || !strings.Contains(r, "-d "+stage.CtlV6+"/128 -p tcp") {
		t.Errorf("the controller's addresses are not all pinned:\n%s", r)
	}
	// The name no longer resolves (same file, so the bind mount sees it);
	// Go's resolver reads /etc/hosts again after 5 s.
	if err := os.WriteFile(hosts, []byte("127.0.0.1 localhost\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	time.Sleep(6 * time.Second)

	w.StopController()
	w.eventually(15*time.Second, "agent notices the controller is gone", func() bool {
		return strings.Contains(w.AgentLog.String(), "controller connection lost")
	})
	if err := w.StartController(); err != nil {
		t.Fatal(err)
	}
	w.waitOnline()

	w.StopAgent()
	w.startAgent(stage.AgentOptions{Controller: "ctl.cordon.test:7443"})
	w.waitOnline()
	if strings.Contains(w.AgentLog.String(), "lookup ctl.cordon.test") {
		t.Errorf("the isolated agent tried to resolve the controller's name:\n%s", w.AgentLog)
	}
	w.mustCordon("release", "host", hostName, "--reason", "done", "--wait")
	if strings.Contains(w.rules(w.Host), "CORDON-") {
		t.Error("Cordon rules left after release")
	}
}

// TestAgentCannotWriteDuringOrder: while it carries out an isolation, the
// agent and everything it starts (plugin, iptables) are held by Landlock to
// the runtime directory: an iptables that tries to write elsewhere is
// refused, and the isolation still succeeds.
func TestAgentCannotWriteDuringOrder(t *testing.T) {
	w := newWorld(t)
	dir := t.TempDir()
	real, err := exec.LookPath("iptables")
	if err != nil {
		t.Fatal(err)
	}
	probe := filepath.Join(dir, "written-during-order")
	mark := filepath.Join(w.RuntimeDir, "write-attempt")
	script := "#!/bin/sh\ncase \" $* \" in *\" -N \"*) if [ ! -e " + mark + " ]; then (echo evidence-tampering > " + probe + ") 2> " + mark +
		" || true; fi;; esac\nexec " + real + " \"$@\"\n"
	if err := os.WriteFile(filepath.Join(dir, "iptables"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	// The iptables plugin writes with iptables-restore, found beside
	// iptables: it tries the same.
	realRestore, err := exec.LookPath("iptables-restore")
	if err != nil {
		t.Fatal(err)
	}
	script = "#!/bin/sh\nif [ ! -e " + mark + " ]; then (echo evidence-tampering > " + probe + ") 2> " + mark +
		" || true; fi\nexec " + realRestore + " \"$@\"\n"
	if err := os.WriteFile(filepath.Join(dir, "iptables-restore"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	w.startAgent(stage.AgentOptions{Token: w.Token, Env: []string{"PATH=" + dir + ":" + os.Getenv("PATH")}})
	w.waitOnline()
	if !strings.Contains(w.AgentLog.String(), "landlock ABI") {
		t.Fatalf("agent did not restrict its writes:\n%s", w.AgentLog)
	}
	w.mustCordon("isolate", "host", hostName, "--reason", "landlock test", "--wait")
	if _, err := os.Stat(probe); err == nil {
		t.Error("a process started by the agent wrote to disk during the order")
	}
	got, err := os.ReadFile(mark)
	if err != nil {
		t.Fatalf("the write was never attempted: %v", err)
	}
	if !strings.Contains(string(got), "Permission denied") {
		t.Errorf("write attempt: %q, want permission denied", got)
	}
}
