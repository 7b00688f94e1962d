package e2e

import (
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cordon-ir/cordon/controller/api"
	"github.com/cordon-ir/cordon/internal/packaging"
	"github.com/cordon-ir/cordon/internal/stage"
)

// TestInstalledAgentUnit installs the cordon-agent .deb into a throw-away
// root, enrolls the host with the installed 'cordon-agent enroll' as an
// operator would, then runs the installed unit's command line (ExecStart,
// its paths taken in that root) in the host's namespace as systemd would:
// under the unit's capability bounding set with no new privileges, with a
// notification socket, a watchdog and a runtime directory. The agent says
// it is ready, feeds the watchdog, isolates and releases. Isolated again,
// the agent is stopped and the package removed: the removal script warns
// that the host stays isolated, and the host's rules stay as they were.
func TestInstalledAgentUnit(t *testing.T) {
	w := newWorld(t)
	root := t.TempDir()
	if err := packaging.NewRoot(root); err != nil {
		t.Fatal(err)
	}
	built, err := packaging.Package(packaging.Options{Root: "../..", Out: t.TempDir(), Version: "0.1.0~e2e", Arch: packaging.NativeArch(),
		Packages: []string{"cordon-agent"}, Formats: []string{"deb"}}, binDir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := packaging.Dpkg(root, "-i", built[0].Path); err != nil {
		t.Fatal(err)
	}
	in := func(p string) string { return filepath.Join(root, p) }

	// Install time: enroll with a token, which writes the key and the
	// configuration file once.
	agentBin, config := in("/usr/bin/cordon-agent"), in("/etc/cordon/agent.yaml")
	tokenFile := filepath.Join(t.TempDir(), "token")
	os.WriteFile(tokenFile, []byte(w.Token+"\n"), 0o600)
	enroll := []string{"enroll", "--controller", w.CtlAddr, "--controller-fingerprint", w.Fingerprint,
		"--token-file", tokenFile, "--name", hostName, "--config", config, "--key", in("/var/lib/cordon-agent/agent_ed25519"),
		"--plugin-dir", in("/usr/lib/cordon/plugins"), "-o", "json"}
	out, err := w.Host.Output(agentBin, enroll...)
	if err != nil {
		t.Fatalf("enroll: %v\n%s", err, out)
	}
	var enrolled struct {
		Enrolled   bool `json:"enrolled"`
		KeyCreated bool `json:"key_created"`
		TokenUsed  bool `json:"token_used"`
	}
	if err := json.Unmarshal([]byte(out), &enrolled); err != nil || !enrolled.Enrolled || !enrolled.KeyCreated || !enrolled.TokenUsed {
		t.Fatalf("enroll -o json: %q %v", out, err)
	}
	if b, _ := os.ReadFile(config); strings.Contains(string(b), w.Token) {
		t.Error("enroll wrote the used token into the configuration")
	}
	if st, err := os.Stat(config); err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("configuration file: %v %v", st.Mode(), err)
	}
	if out, err := w.Host.Output(agentBin, "enroll", "--controller", w.CtlAddr, "--controller-fingerprint", w.Fingerprint,
		"--token", w.Token, "--config", config); err == nil || !strings.Contains(err.Error(), "exists: this host is set up already") {
		t.Errorf("a second enroll did not refuse to overwrite the configuration: %v %s", err, out)
	}
	// Again with --force: the key is enrolled already, the (used) token
	// is not asked for, and enroll says so.
	out, err = w.Host.Output(agentBin, append(enroll, "--force")...)
	enrolled.TokenUsed = true
	if err != nil || json.Unmarshal([]byte(out), &enrolled) != nil || !enrolled.Enrolled || enrolled.KeyCreated || enrolled.TokenUsed {
		t.Errorf("enroll --force of an enrolled key: %v %q", err, out)
	}
	if out, err := w.Host.Output(agentBin, "check-config", "--config", config); err != nil || !strings.HasPrefix(out, config+": ok") {
		t.Errorf("check-config of what enroll wrote: %v\n%s", err, out)
	}
	hosts := w.mustHosts()
	if len(hosts) != 1 || hosts[0].Name != hostName || hosts[0].Online {
		t.Fatalf("after enroll, hosts = %+v; want %s enrolled, not online", hosts, hostName)
	}

	// The unit, as installed.
	var caps []string
	for _, c := range strings.Fields(unitDirective(t, in("/usr/lib/systemd/system/cordon-agent.service"), "CapabilityBoundingSet")) {
		caps = append(caps, "+"+strings.ToLower(strings.TrimPrefix(c, "CAP_")))
	}
	var command []string
	for _, f := range strings.Fields(unitDirective(t, in("/usr/lib/systemd/system/cordon-agent.service"), "ExecStart")) {
		if strings.HasPrefix(f, "/") {
			f = in(f)
		}
		command = append(command, f)
	}
	if len(command) != 3 || command[0] != agentBin || command[2] != config {
		t.Fatalf("ExecStart is %q: the test expects the agent and --config %s", command, config)
	}
	notify := listenNotify(t)
	runtimeDir := filepath.Join(t.TempDir(), "run-cordon")
	os.Mkdir(runtimeDir, 0o700)
	svc, _ := w.mustServe(w.Host, "8080")
	defer svc.Process.Kill()
	w.startAgent(stage.AgentOptions{
		Command: command,
		Wrap:    []string{"setpriv", "--no-new-privs", "--bounding-set", "-all," + strings.Join(caps, ","), "--inh-caps", "-all", "--"},
		Env: []string{"NOTIFY_SOCKET=" + notify.path, "WATCHDOG_USEC=1500000", "RUNTIME_DIRECTORY=" + runtimeDir,
			"JOURNAL_STREAM="},
	})
	if m := notify.wait(t, "READY=1", 30*time.Second); !strings.Contains(m, "STATUS=plugin ") {
		t.Errorf("readiness without a status: %q", m)
	}
	w.waitOnline()
	if !w.Reachable(w.Outside, hostV4+":8080") {
		t.Fatal("outside cannot reach the host before isolation")
	}

	isolate := func(reason string) {
		out := w.mustCordon("isolate", "host", hostName, "--reason", reason, "--wait", "-o", "json")
		var ord api.Order
		if err := json.Unmarshal([]byte(out), &ord); err != nil || ord.State != "done" || !ord.SnapshotVerified {
			t.Fatalf("isolate from the installed unit: %v %+v", err, ord)
		}
	}
	isolate("installed unit")
	if w.Reachable(w.Outside, hostV4+":8080") || w.Reachable(w.Outside, "["+hostV6+"]:8080") {
		t.Fatal("the host isolated by the installed agent is still reachable")
	}
	notify.wait(t, "WATCHDOG=1", 5*time.Second)
	w.mustCordon("release", "host", hostName, "--reason", "done", "--wait")
	if !w.Reachable(w.Outside, hostV4+":8080") {
		t.Fatal("outside cannot reach the host after release")
	}

	// Removal while isolated: stopping the agent and removing the package
	// release nothing.
	isolate("before removal")
	out, err = w.Host.Output(agentBin, "status", "--local", "--config", config, "-o", "json")
	if err != nil || !strings.Contains(out, `"rules_in_place": true`) || !strings.Contains(out, `"isolated": true`) {
		t.Errorf("status --local of an isolated host: %v\n%s", err, out)
	}
	before := w.allRules()
	w.StopAgent()
	notify.wait(t, "STOPPING=1", 5*time.Second)
	// The removal script as on a real host (no DPKG_ROOT), in a mount
	// namespace of its own whose systemd directories are empty tmpfs: it
	// reads the firewall of the host's network namespace, and its
	// systemctl calls cannot touch this machine's services.
	prerm := w.Host.Command("unshare", "--mount", "--propagation", "private", "sh", "-c",
		`for d in /etc/systemd/system /run/systemd; do if [ -d "$d" ]; then mount -t tmpfs cordon-test "$d"; fi; done; exec sh "$0" remove`,
		in("/var/lib/dpkg/info/cordon-agent.prerm"))
	// The installed agent first on PATH, as /usr/bin is on a real host.
	prerm.Env = append(os.Environ(), "DPKG_ROOT=", "PATH="+in("/usr/bin")+":"+os.Getenv("PATH"))
	msg, _ := prerm.CombinedOutput()
	if !strings.Contains(string(msg), "THIS HOST IS ISOLATED") {
		t.Errorf("the removal script did not warn that the host stays isolated:\n%s", msg)
	}
	if _, err := packaging.Dpkg(root, "-r", "cordon-agent"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(agentBin); err == nil {
		t.Fatal("cordon-agent left after removal")
	}
	if after := w.allRules(); after != before {
		t.Errorf("removing the package changed the host's firewall:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	if w.Reachable(w.Outside, hostV4+":8080") {
		t.Error("removing the package released the host")
	}
}

// allRules is the host's whole firewall: iptables and ip6tables (as
// stage.Rules) and nft's ruleset without counters.
func (w *world) allRules() string {
	w.t.Helper()
	nft, err := w.Host.Output("nft", "-s", "list", "ruleset")
	if err != nil {
		w.t.Fatal(err)
	}
	return w.rules(w.Host) + nft
}

// notifySocket is a systemd notification socket (sd_notify(3)): a Unix
// datagram socket whose path goes in NOTIFY_SOCKET.
type notifySocket struct {
	path string
	msgs chan string
}

func listenNotify(t *testing.T) *notifySocket {
	t.Helper()
	n := &notifySocket{path: filepath.Join(t.TempDir(), "notify"), msgs: make(chan string, 1000)}
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: n.path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	go func() {
		buf := make([]byte, 4096)
		for {
			k, err := c.Read(buf)
			if err != nil {
				return
			}
			select {
			case n.msgs <- string(buf[:k]):
			default:
			}
		}
	}()
	return n
}

// wait returns the first message that has line, failing after d.
func (n *notifySocket) wait(t *testing.T, line string, d time.Duration) string {
	t.Helper()
	deadline := time.After(d)
	for {
		select {
		case m := <-n.msgs:
			for _, l := range strings.Split(m, "\n") {
				if l == line {
					return m
				}
			}
		case <-deadline:
			t.Fatalf("no %s from the agent within %v", line, d)
			return ""
		}
	}
}
