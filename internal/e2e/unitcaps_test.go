package e2e

import (
	"bufio"
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/cordon-ir/cordon/controller/api"
	"github.com/cordon-ir/cordon/internal/stage"
)

// unitDirective returns the value of a directive in a systemd unit file:
// a unit's name is the shipped one in deploy/systemd, a path an installed
// one.
func unitDirective(t *testing.T, unit, key string) string {
	t.Helper()
	if !filepath.IsAbs(unit) {
		unit = filepath.Join("../../deploy/systemd", unit)
	}
	f, err := os.Open(unit)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(strings.TrimSpace(sc.Text()), key+"="); ok {
			return v
		}
	}
	t.Fatalf("%s has no %s", unit, key)
	return ""
}

// TestAgentUnderUnitCapabilities runs the agent with exactly the capability
// bounding set of the shipped cordon-agent.service (and no new privileges),
// isolates, and checks that the evidence is complete: sockets with their
// pids, executables hashed with O_NOATIME, the network namespace's routes
// and interfaces read; then releases.
func TestAgentUnderUnitCapabilities(t *testing.T) {
	w := newWorld(t)
	var caps []string
	for _, c := range strings.Fields(unitDirective(t, "cordon-agent.service", "CapabilityBoundingSet")) {
		caps = append(caps, "+"+strings.ToLower(strings.TrimPrefix(c, "CAP_")))
	}
	wrap := []string{"setpriv", "--no-new-privs", "--bounding-set", "-all," + strings.Join(caps, ","), "--inh-caps", "-all", "--"}
	svc, _ := w.mustServe(w.Host, "8080")
	w.startAgent(stage.AgentOptions{Token: w.Token, Wrap: wrap})
	w.waitOnline()
	held := w.mustHold(w.Outside, hostV4+":8080")
	if got := w.send(held, "hello"); got != "echo hello" {
		t.Fatal(got)
	}
	// The agent really runs with the unit's bounding set.
	status, err := os.ReadFile("/proc/" + strconv.Itoa(w.AgentPID()) + "/status")
	if err != nil {
		t.Fatal(err)
	}
	var want uint64
	for _, c := range caps {
		bit, ok := capBits[strings.TrimPrefix(c, "+")]
		if !ok {
			t.Fatalf("capability %s: bit not known to the test", c)
		}
		want |= 1 << bit
	}
	for _, l := range strings.Split(string(status), "\n") {
		if v, ok := strings.CutPrefix(l, "CapBnd:\t"); ok {
			if got, _ := strconv.ParseUint(v, 16, 64); got != want {
				t.Fatalf("agent bounding set %x, want the unit's %x", got, want)
			}
		}
	}

	out := w.mustCordon("isolate", "host", hostName, "--reason", "unit capabilities", "--wait", "-o", "json")
	var ord api.Order
	if err := json.Unmarshal([]byte(out), &ord); err != nil || ord.State != "done" || !ord.SnapshotVerified {
		t.Fatalf("isolate under the unit's capabilities: %v %+v", err, ord)
	}
	bundle := filepath.Join(t.TempDir(), "b.tar.gz")
	w.mustCordon("snapshot", "download", ord.SnapshotID, "--out", bundle)
	files := untar(t, bundle)

	var sawConnPID, sawHash bool
	var conns []map[string]any // the service's, for the failure message
	for _, rec := range jsonl(t, files["artifacts/connections.jsonl"]) {
		if rec["local_addr"] == hostV4 && num(rec["local_port"]) == 8080 {
			conns = append(conns, rec)
			if rec["state"] == "ESTABLISHED" && num(rec["pid"]) == svc.Process.Pid {
				sawConnPID = true
			}
		}
	}
	if !sawConnPID {
		t.Logf("the service's sockets in the evidence (service pid %d): %v", svc.Process.Pid, conns)
	}
	for _, rec := range jsonl(t, files["artifacts/processes.jsonl"]) {
		if num(rec["pid"]) == svc.Process.Pid {
			sawHash = rec["exe_sha256"] != "" && rec["exe_sha256"] != nil
			if e, _ := rec["exe_error"].(string); e != "" {
				t.Errorf("service executable: %s", e)
			}
		}
	}
	if !sawConnPID || !sawHash {
		t.Errorf("under the unit's capabilities the evidence lacks the connection's pid (%v) or the executable's hash (%v)", sawConnPID, sawHash)
	}
	if len(jsonl(t, files["artifacts/routes.jsonl"])) == 0 || len(jsonl(t, files["artifacts/interfaces.jsonl"])) == 0 {
		t.Error("routes or interfaces missing: the collector could not enter the network namespace")
	}
	var man struct {
		Artifacts []struct {
			Path   string
			Errors []string
		}
	}
	json.Unmarshal(files["manifest.json"], &man)
	for _, a := range man.Artifacts {
		for _, e := range a.Errors {
			if strings.Contains(e, "not permitted") || strings.Contains(e, "permission denied") || strings.Contains(e, "without O_NOATIME") {
				t.Errorf("%s: %s", a.Path, e)
			}
		}
	}
	w.mustCordon("release", "host", hostName, "--reason", "done", "--wait")
}

// capBits are capability numbers from linux/capability.h.
var capBits = map[string]uint{
	"chown": 0, "dac_override": 1, "dac_read_search": 2, "fowner": 3, "fsetid": 4, "kill": 5, "setgid": 6, "setuid": 7,
	"net_bind_service": 10, "net_admin": 12, "net_raw": 13, "sys_chroot": 18, "sys_ptrace": 19, "sys_admin": 21,
}
