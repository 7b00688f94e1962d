// Package stage sets up Cordon's standard scene on real kernels: a
// controller, a card-data host pay-db-01 running cordon-agent with the real
// iptables plugin, and an outside peer, each in a network namespace of a
// netlab.Lab, all run as the built binaries. The end-to-end tests, the demo
// and the benchmark share it.
package stage

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/cordon-ir/cordon/controller/api"
	"github.com/cordon-ir/cordon/internal/netlab"
)

// Addresses of the scene (RFC 2544 benchmarking space and a unique-local
// IPv6 prefix), and the host's Cordon name.
const (
	CtlV4, HostV4, OutV4 = "198.18.0.1", "198.18.0.10", "198.18.0.20"
	CtlV6, HostV6, OutV6 = "fd00:c0de::1", "fd00:c0de::10", "fd00:c0de::20"
	HostName             = "pay-db-01"
	CtlPort              = "7443"
)

// Built says which of Binaries 'make build' puts in bin/; the others are
// made from source for the scene only: netprobe (the host's service and
// the attacker) and, for tests, a plugin that says it isolated and
// changes nothing.
func Built(name string) bool { return name != "netprobe" && name != "cordon-plugin-leaky" }

// Binaries the scene runs, in Stage.Bin.
var Binaries = map[string]string{
	"cordon":                 "./controller/cmd/cordon",
	"cordon-agent":           "./agent/cmd/cordon-agent",
	"cordon-plugin-iptables": "./plugins/iptables",
	"cordon-plugin-nftables": "./plugins/nftables",
	"cordon-plugin-leaky":    "./internal/e2e/leakyplugin", // says it isolated, changes nothing
	"netprobe":               "./internal/netprobe",
}

// Build builds Binaries from the module at root into dir.
func Build(root, dir string) error {
	for out, pkg := range Binaries {
		cmd := exec.Command("go", "build", "-o", filepath.Join(dir, out), pkg)
		cmd.Dir = root
		if b, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("build %s: %w\n%s", pkg, err, b)
		}
	}
	return nil
}

// LogBuf collects a process's output; safe for concurrent use.
type LogBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *LogBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *LogBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// Stage is the scene.
type Stage struct {
	Bin                string // directory of the built binaries
	Lab                *netlab.Lab
	Ctl, Host, Outside *netlab.Host
	DataDir            string
	Fingerprint        string
	Token              string
	OperatorKey        string
	CtlAddr            string
	AgentKey           string
	RuntimeDir         string
	CtlLog, AgentLog   *LogBuf
	// CtlArgs are added to the command line of 'cordon controller serve'
	// by StartController (--log-format json, say).
	CtlArgs []string

	ctlCmd, agentCmd *exec.Cmd
}

// New makes the lab and its three hosts and initializes the controller's
// data directory under work. Close removes everything.
func New(bin, work string) (*Stage, error) {
	lab, err := netlab.New()
	if err != nil {
		return nil, err
	}
	s := &Stage{Bin: bin, Lab: lab, DataDir: filepath.Join(work, "controller"), CtlAddr: CtlV4 + ":" + CtlPort,
		AgentKey: filepath.Join(work, "agent", "agent_ed25519"), RuntimeDir: filepath.Join(work, "run")}
	for _, h := range []struct {
		dst        **netlab.Host
		name, a, b string
	}{{&s.Ctl, "ctl", CtlV4, CtlV6}, {&s.Host, "host", HostV4, HostV6}, {&s.Outside, "outside", OutV4, OutV6}} {
		*h.dst, err = lab.AddHost(h.name, netip.MustParsePrefix(h.a+"/24"), netip.MustParsePrefix(h.b+"/64"))
		if err != nil {
			lab.Close()
			return nil, err
		}
	}
	out, err := s.Ctl.Output(s.bin("cordon"), "controller", "init", "--data-dir", s.DataDir, "-o", "json")
	if err != nil {
		lab.Close()
		return nil, fmt.Errorf("controller init: %w", err)
	}
	var res struct {
		Fingerprint string `json:"fingerprint"`
		EnrollToken string `json:"enroll_token"`
		OperatorKey string `json:"operator_key"`
	}
	if err := json.Unmarshal([]byte(out), &res); err != nil || res.Fingerprint == "" || res.EnrollToken == "" || res.OperatorKey == "" {
		lab.Close()
		return nil, fmt.Errorf("controller init -o json printed %q (%v)", out, err)
	}
	s.Fingerprint, s.Token, s.OperatorKey = res.Fingerprint, res.EnrollToken, res.OperatorKey
	return s, nil
}

func (s *Stage) bin(name string) string { return filepath.Join(s.Bin, name) }

// Close stops every process and removes the lab.
func (s *Stage) Close() error { return s.Lab.Close() }

// StartController runs 'cordon controller serve' in the controller's
// namespace and waits until it answers.
func (s *Stage) StartController() error {
	s.CtlLog = &LogBuf{}
	args := append([]string{"controller", "serve", "--data-dir", s.DataDir, "--listen", ":" + CtlPort, "--log-level", "debug"}, s.CtlArgs...)
	s.ctlCmd = s.Ctl.Command(s.bin("cordon"), args...)
	s.ctlCmd.Stdout, s.ctlCmd.Stderr = s.CtlLog, s.CtlLog
	if err := s.Ctl.Start(s.ctlCmd); err != nil {
		return err
	}
	return Eventually(10*time.Second, "controller answers", func() bool {
		_, _, code := s.Cordon("hosts")
		return code == 0
	})
}

// CordonCmd returns the operator CLI as a command in the controller's
// namespace, with the connection settings in its environment.
func (s *Stage) CordonCmd(args ...string) *exec.Cmd {
	cmd := s.Ctl.Command(s.bin("cordon"), args...)
	cmd.Env = append(os.Environ(), "CORDON_CONTROLLER="+s.CtlAddr, "CORDON_CONTROLLER_FINGERPRINT="+s.Fingerprint,
		"CORDON_IDENTITY="+s.OperatorKey)
	return cmd
}

// Cordon runs the operator CLI and returns its output and exit status.
func (s *Stage) Cordon(args ...string) (stdout, stderr string, code int) {
	cmd := s.CordonCmd(args...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		code = ee.ExitCode()
	default:
		code = -1
		e.WriteString(err.Error())
	}
	return o.String(), e.String(), code
}

// AgentOptions vary how the agent starts.
type AgentOptions struct {
	Controller  string   // default: Stage.CtlAddr
	Fingerprint string   // default: the controller's
	Token       string   // enrollment token, if any
	Plugin      string   // --plugin; default: iptables
	Key         string   // default: Stage.AgentKey
	Env         []string // added to the environment
	Args        []string // added to the command line
	// Wrap, if set, is a command the agent runs under, inside the
	// namespace (setpriv with the systemd unit's capabilities, say).
	Wrap []string
	// Command, if set, is the agent's whole command line (a unit's
	// ExecStart, say), run under Wrap with Env; the fields above that make
	// the command line are then not used.
	Command []string
}

// StartAgent runs cordon-agent in the host's namespace with a real
// firewall plugin (iptables unless o.Plugin says otherwise).
func (s *Stage) StartAgent(o AgentOptions) error {
	if o.Fingerprint == "" {
		o.Fingerprint = s.Fingerprint
	}
	if o.Key == "" {
		o.Key = s.AgentKey
	}
	if o.Controller == "" {
		o.Controller = s.CtlAddr
	}
	if o.Plugin == "" {
		o.Plugin = "iptables"
	}
	args := []string{"--controller", o.Controller, "--controller-fingerprint", o.Fingerprint, "--key", o.Key,
		"--name", HostName, "--plugin", o.Plugin, "--plugin-dir", s.Bin, "--runtime-dir", s.RuntimeDir, "--log-level", "debug"}
	if o.Token != "" {
		args = append(args, "--enroll-token", o.Token)
	}
	args = append(args, o.Args...)
	if len(o.Command) > 0 {
		args = o.Command
	} else {
		args = append([]string{s.bin("cordon-agent")}, args...)
	}
	s.AgentLog = &LogBuf{}
	args = append(slices.Clone(o.Wrap), args...)
	s.agentCmd = s.Host.Command(args[0], args[1:]...)
	s.agentCmd.Env = append(os.Environ(), o.Env...)
	s.agentCmd.Stdout, s.agentCmd.Stderr = s.AgentLog, s.AgentLog
	return s.Host.Start(s.agentCmd)
}

// StopAgent stops the agent (SIGTERM, then SIGKILL after 10 s).
func (s *Stage) StopAgent() {
	if s.agentCmd != nil && s.agentCmd.ProcessState == nil {
		netlab.Stop(s.agentCmd, 10*time.Second)
	}
}

// Hosts returns 'cordon hosts -o json'.
func (s *Stage) Hosts() ([]api.Host, error) {
	out, errOut, code := s.Cordon("hosts", "-o", "json")
	if code != 0 {
		return nil, fmt.Errorf("cordon hosts: exit %d: %s", code, errOut)
	}
	var hosts []api.Host
	return hosts, json.Unmarshal([]byte(out), &hosts)
}

// HostState returns the controller's view of pay-db-01.
func (s *Stage) HostState() (api.Host, bool) {
	hosts, _ := s.Hosts()
	for _, h := range hosts {
		if h.Name == HostName {
			return h, true
		}
	}
	return api.Host{}, false
}

// WaitOnline waits until the controller sees the agent online.
func (s *Stage) WaitOnline(d time.Duration) error {
	return Eventually(d, "agent online", func() bool {
		h, ok := s.HostState()
		return ok && h.Online
	})
}

// Eventually polls cond every 100 ms until it holds or d passes.
func Eventually(d time.Duration, what string, cond func() bool) error {
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			return fmt.Errorf("timed out after %v waiting for: %s", d, what)
		}
		time.Sleep(100 * time.Millisecond)
	}
	return nil
}

// Serve starts an echo service on port in h's namespace, IPv4 and IPv6. The
// command's PID is the service's (ip netns exec execs the program).
func (s *Stage) Serve(h *netlab.Host, port string) (*exec.Cmd, *LogBuf, error) {
	log := &LogBuf{}
	cmd := h.Command(s.bin("netprobe"), "serve", "0.0.0.0:"+port, "[::]:"+port)
	cmd.Stdout, cmd.Stderr = log, log
	if err := h.Start(cmd); err != nil {
		return nil, nil, err
	}
	err := Eventually(5*time.Second, "service listening on "+port, func() bool { return strings.Count(log.String(), "listening") == 2 })
	return cmd, log, err
}

// Reachable reports whether from reaches the echo service at addr within a
// second.
func (s *Stage) Reachable(from *netlab.Host, addr string) bool {
	return from.Command(s.bin("netprobe"), "probe", addr, "1s").Run() == nil
}

// Held is a TCP connection held open from one namespace by netprobe hold.
type Held struct {
	in    io.WriteCloser
	lines chan string
	// Local is the connection's local address, ip:port.
	Local string
}

// Hold opens a connection from from to addr and keeps it.
func (s *Stage) Hold(from *netlab.Host, addr string) (*Held, error) {
	cmd := from.Command(s.bin("netprobe"), "hold", addr)
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := from.Start(cmd); err != nil {
		return nil, err
	}
	h := &Held{in: in, lines: make(chan string, 16)}
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			h.lines <- sc.Text()
		}
		close(h.lines)
	}()
	select {
	case l := <-h.lines:
		m := regexp.MustCompile(`^connected (\S+) -> `).FindStringSubmatch(l)
		if m == nil {
			return nil, fmt.Errorf("hold: %q", l)
		}
		h.Local = m[1]
	case <-time.After(5 * time.Second):
		return nil, errors.New("hold: no connection")
	}
	return h, nil
}

// Send writes a line on the held connection and returns "echo LINE",
// "timeout LINE" or "closed LINE".
func (h *Held) Send(line string) (string, error) {
	fmt.Fprintln(h.in, line)
	select {
	case l, ok := <-h.lines:
		if !ok {
			return "closed " + line, nil
		}
		return l, nil
	case <-time.After(10 * time.Second):
		return "", errors.New("held connection: no answer from netprobe")
	}
}

var counters = regexp.MustCompile(`\[\d+:\d+\]`)

// Rules returns h's iptables-save and ip6tables-save output with counters
// and timestamp comments stripped, for comparing rulesets.
func Rules(h *netlab.Host) (string, error) {
	var b strings.Builder
	for _, cmd := range []string{"iptables-save", "ip6tables-save"} {
		out, err := h.Output(cmd)
		if err != nil {
			return "", err
		}
		for _, l := range strings.Split(out, "\n") {
			if strings.HasPrefix(l, "#") {
				continue
			}
			b.WriteString(counters.ReplaceAllString(l, "[]") + "\n")
		}
	}
	return b.String(), nil
}

// Restore loads rules into h with cmd (iptables-restore or
// ip6tables-restore).
func Restore(h *netlab.Host, cmd, rules string) error {
	c := h.Command(cmd)
	c.Stdin = strings.NewReader(rules)
	if out, err := c.CombinedOutput(); err != nil {
		return fmt.Errorf("%s: %w\n%s", cmd, err, out)
	}
	return nil
}

// HostRulesV4 and HostRulesV6 are a card-data host's own firewall: an
// accepting default, the usual accept of established flows (so connections
// are tracked before isolation, and isolation must cut them from
// conntrack), its own chain and a dropping FORWARD, as a hand-made firewall
// might have. Release must leave them exactly as they were.
const (
	HostRulesV4 = `*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
:APP-IN - [0:0]
-A INPUT -i lo -j ACCEPT
-A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A INPUT -j APP-IN
-A APP-IN -p tcp -m tcp --dport 8080 -j ACCEPT
-A APP-IN -s 198.18.0.0/24 -p tcp -m tcp --dport 22 -j ACCEPT
COMMIT
`
	HostRulesV6 = `*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -p tcp -m tcp --dport 8080 -j ACCEPT
COMMIT
`
)

// ControllerPID is the controller process's PID.
func (s *Stage) ControllerPID() int { return s.ctlCmd.Process.Pid }

// StopController stops the controller (SIGTERM, then SIGKILL after 10 s).
func (s *Stage) StopController() {
	if s.ctlCmd != nil && s.ctlCmd.ProcessState == nil {
		netlab.Stop(s.ctlCmd, 10*time.Second)
	}
}

// AgentPID is the agent's PID (the wrapped command's, when Wrap was used:
// setpriv and ip netns exec exec, so it is the same process).
func (s *Stage) AgentPID() int { return s.agentCmd.Process.Pid }
