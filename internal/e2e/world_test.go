// Package e2e tests Cordon end to end on real kernels: a controller, an
// agent with the real iptables plugin and an outside peer, each in a
// network namespace of its own, run as the built binaries.
package e2e

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cordon-ir/cordon/controller/api"
	"github.com/cordon-ir/cordon/internal/netlab"
	"github.com/cordon-ir/cordon/internal/netlab/labtest"
)

// binDir holds the binaries TestMain built.
var binDir string

func TestMain(m *testing.M) {
	code := func() int {
		if netlab.Available() != nil {
			return m.Run() // every test skips (or fails when required)
		}
		dir, err := os.MkdirTemp("", "cordon-e2e-bin-")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer os.RemoveAll(dir)
		for out, pkg := range map[string]string{
			"cordon":                 "./controller/cmd/cordon",
			"cordon-agent":           "./agent/cmd/cordon-agent",
			"cordon-plugin-iptables": "./plugins/iptables",
			"netprobe":               "./internal/netprobe",
		} {
			cmd := exec.Command("go", "build", "-o", filepath.Join(dir, out), pkg)
			cmd.Dir = "../.."
			if b, err := cmd.CombinedOutput(); err != nil {
				fmt.Fprintf(os.Stderr, "build %s: %v\n%s", pkg, err, b)
				return 1
			}
		}
		binDir = dir
		return m.Run()
	}()
	os.Exit(code)
}

func bin(name string) string { return filepath.Join(binDir, name) }

// logBuf collects a process's output safely for concurrent writes.
type logBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// world is a controller, a card-data host and an outside host on one
// virtual LAN.
type world struct {
	t                  *testing.T
	lab                *netlab.Lab
	ctl, host, outside *netlab.Host
	dataDir            string
	fingerprint        string
	token              string
	operatorKey        string
	ctlAddr            string

	ctlCmd   *exec.Cmd
	ctlLog   *logBuf
	agentCmd *exec.Cmd
	agentLog *logBuf
	agentKey string
	rtDir    string
}

const (
	ctlV4, hostV4, outV4 = "198.18.0.1", "198.18.0.10", "198.18.0.20"
	ctlV6, hostV6, outV6 = "fd00:c0de::1", "fd00:c0de::10", "fd00:c0de::20"
	hostName             = "pay-db-01"
)

func newWorld(t *testing.T) *world {
	t.Helper()
	w := &world{t: t, lab: labtest.New(t)}
	w.ctl = labtest.AddHost(t, w.lab, "ctl", ctlV4+"/24", ctlV6+"/64")
	w.host = labtest.AddHost(t, w.lab, "host", hostV4+"/24", hostV6+"/64")
	w.outside = labtest.AddHost(t, w.lab, "outside", outV4+"/24", outV6+"/64")
	w.dataDir = filepath.Join(t.TempDir(), "controller")
	w.ctlAddr = ctlV4 + ":7443"
	w.agentKey = filepath.Join(t.TempDir(), "agent_ed25519")
	w.rtDir = t.TempDir()

	out, err := w.ctl.Output(bin("cordon"), "controller", "init", "--data-dir", w.dataDir, "-o", "json")
	if err != nil {
		t.Fatalf("controller init: %v", err)
	}
	var res struct {
		Fingerprint string `json:"fingerprint"`
		EnrollToken string `json:"enroll_token"`
		OperatorKey string `json:"operator_key"`
	}
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatalf("controller init -o json: %v\n%s", err, out)
	}
	if res.Fingerprint == "" || res.EnrollToken == "" || res.OperatorKey == "" {
		t.Fatalf("controller init -o json misses a key: %s", out)
	}
	w.fingerprint, w.token, w.operatorKey = res.Fingerprint, res.EnrollToken, res.OperatorKey
	w.startController()
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("controller log:\n%s", w.ctlLog)
			if w.agentLog != nil {
				t.Logf("agent log:\n%s", w.agentLog)
			}
		}
	})
	return w
}

func (w *world) startController() {
	w.t.Helper()
	w.ctlLog = &logBuf{}
	w.ctlCmd = w.ctl.Command(bin("cordon"), "controller", "serve", "--data-dir", w.dataDir, "--listen", ":7443", "--log-level", "debug")
	w.ctlCmd.Stdout, w.ctlCmd.Stderr = w.ctlLog, w.ctlLog
	if err := w.ctl.Start(w.ctlCmd); err != nil {
		w.t.Fatal(err)
	}
	w.eventually(10*time.Second, "controller answers", func() bool {
		_, _, code := w.cordon("hosts")
		return code == 0
	})
}

// cordon runs the operator CLI in the controller's namespace.
func (w *world) cordon(args ...string) (stdout, stderr string, code int) {
	cmd := w.ctl.Command(bin("cordon"), args...)
	cmd.Env = append(os.Environ(), "CORDON_CONTROLLER="+w.ctlAddr, "CORDON_CONTROLLER_FINGERPRINT="+w.fingerprint,
		"CORDON_IDENTITY="+w.operatorKey)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	code = 0
	if err != nil {
		code = -1
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		}
	}
	return o.String(), e.String(), code
}

// mustCordon runs the CLI and fails the test unless it exits 0.
func (w *world) mustCordon(args ...string) string {
	w.t.Helper()
	out, errOut, code := w.cordon(args...)
	if code != 0 {
		w.t.Fatalf("cordon %s: exit %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), code, out, errOut)
	}
	return out
}

type agentOpts struct {
	fingerprint string
	token       string
	key         string
	env         []string
}

// startAgent starts cordon-agent in the host namespace with the real
// iptables plugin.
func (w *world) startAgent(o agentOpts) {
	w.t.Helper()
	if o.fingerprint == "" {
		o.fingerprint = w.fingerprint
	}
	if o.key == "" {
		o.key = w.agentKey
	}
	args := []string{"--controller", w.ctlAddr, "--controller-fingerprint", o.fingerprint, "--key", o.key,
		"--name", hostName, "--plugin", "iptables", "--plugin-dir", binDir, "--runtime-dir", w.rtDir, "--log-level", "debug"}
	if o.token != "" {
		args = append(args, "--enroll-token", o.token)
	}
	w.agentLog = &logBuf{}
	w.agentCmd = w.host.Command(bin("cordon-agent"), args...)
	w.agentCmd.Env = append(os.Environ(), o.env...)
	w.agentCmd.Stdout, w.agentCmd.Stderr = w.agentLog, w.agentLog
	if err := w.host.Start(w.agentCmd); err != nil {
		w.t.Fatal(err)
	}
}

func (w *world) stopAgent() {
	w.t.Helper()
	if w.agentCmd != nil {
		netlab.Stop(w.agentCmd, 10*time.Second)
	}
}

func (w *world) hosts() []api.Host {
	w.t.Helper()
	var hosts []api.Host
	if err := json.Unmarshal([]byte(w.mustCordon("hosts", "-o", "json")), &hosts); err != nil {
		w.t.Fatal(err)
	}
	return hosts
}

func (w *world) hostState() (api.Host, bool) {
	for _, h := range w.hosts() {
		if h.Name == hostName {
			return h, true
		}
	}
	return api.Host{}, false
}

func (w *world) waitOnline() {
	w.t.Helper()
	w.eventually(20*time.Second, "agent online", func() bool {
		h, ok := w.hostState()
		return ok && h.Online
	})
}

func (w *world) eventually(d time.Duration, what string, cond func() bool) {
	w.t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			w.t.Fatalf("timed out after %v waiting for: %s", d, what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// serve starts an echo service in h's namespace on port, IPv4 and IPv6,
// and returns the command (whose PID is the service's PID: ip netns exec
// execs the program) and its output.
func (w *world) serve(h *netlab.Host, port string) (*exec.Cmd, *logBuf) {
	w.t.Helper()
	log := &logBuf{}
	cmd := h.Command(bin("netprobe"), "serve", "0.0.0.0:"+port, "[::]:"+port)
	cmd.Stdout, cmd.Stderr = log, log
	if err := h.Start(cmd); err != nil {
		w.t.Fatal(err)
	}
	w.eventually(5*time.Second, "service listening", func() bool { return strings.Count(log.String(), "listening") == 2 })
	return cmd, log
}

// reachable reports whether from reaches the echo service at addr.
func (w *world) reachable(from *netlab.Host, addr string) bool {
	err := from.Command(bin("netprobe"), "probe", addr, "1s").Run()
	return err == nil
}

// heldConn is a TCP connection held open from one namespace.
type heldConn struct {
	cmd   *exec.Cmd
	in    io.WriteCloser
	lines chan string
	local string
}

func (w *world) hold(from *netlab.Host, addr string) *heldConn {
	w.t.Helper()
	cmd := from.Command(bin("netprobe"), "hold", addr)
	in, err := cmd.StdinPipe()
	if err != nil {
		w.t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		w.t.Fatal(err)
	}
	if err := from.Start(cmd); err != nil {
		w.t.Fatal(err)
	}
	hc := &heldConn{cmd: cmd, in: in, lines: make(chan string, 16)}
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			hc.lines <- sc.Text()
		}
		close(hc.lines)
	}()
	select {
	case l := <-hc.lines:
		m := regexp.MustCompile(`^connected (\S+) -> `).FindStringSubmatch(l)
		if m == nil {
			w.t.Fatalf("hold: %q", l)
		}
		hc.local = m[1]
	case <-time.After(5 * time.Second):
		w.t.Fatal("hold: no connection")
	}
	return hc
}

// send writes a line on the held connection and returns "echo …",
// "timeout …" or "closed …".
func (hc *heldConn) send(t *testing.T, line string) string {
	t.Helper()
	fmt.Fprintln(hc.in, line)
	select {
	case l, ok := <-hc.lines:
		if !ok {
			return "closed " + line
		}
		return l
	case <-time.After(10 * time.Second):
		t.Fatal("held connection: no answer from netprobe")
	}
	return ""
}

var counters = regexp.MustCompile(`\[\d+:\d+\]`)

// rules returns the host's iptables-save and ip6tables-save output with
// counters and the timestamp comments stripped.
func (w *world) rules(h *netlab.Host) string {
	w.t.Helper()
	var b strings.Builder
	for _, cmd := range []string{"iptables-save", "ip6tables-save"} {
		out, err := h.Output(cmd)
		if err != nil {
			w.t.Fatal(err)
		}
		for _, l := range strings.Split(out, "\n") {
			if strings.HasPrefix(l, "#") {
				continue
			}
			b.WriteString(counters.ReplaceAllString(l, "[]") + "\n")
		}
	}
	return b.String()
}

// restoreRules loads a ruleset into h with iptables-restore or
// ip6tables-restore.
func (w *world) restoreRules(h *netlab.Host, cmd, rules string) {
	w.t.Helper()
	c := h.Command(cmd)
	c.Stdin = strings.NewReader(rules)
	if out, err := c.CombinedOutput(); err != nil {
		w.t.Fatalf("%s: %v\n%s", cmd, err, out)
	}
}
