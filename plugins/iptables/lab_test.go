package main

// Helpers for the namespace tests: the lab (a host, a controller, an outside
// host and an allowlisted one), helper processes made from this test binary,
// traffic probes and ruleset dumps.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coreos/go-iptables/iptables"
	"github.com/hashicorp/go-hclog"

	"github.com/cordon-ir/cordon/internal/netlab"
	"github.com/cordon-ir/cordon/internal/netlab/labtest"
	"github.com/cordon-ir/cordon/pkg/policy"
)

// Environment of helper processes and of the test copies inside namespaces.
const (
	helperEnv = "CORDON_IPT_HELPER" // helper mode: echo, dial, peer, hold
	portsEnv  = "CORDON_IPT_PORTS"  // echo, peer: comma-separated ports
	addrEnv   = "CORDON_IPT_ADDR"   // dial, hold: address:port
	fromEnv   = "CORDON_IPT_FROM"   // dial, hold: local address:port to dial from, if set
	tagEnv    = "CORDON_IPT_TAG"    // peer: "port" tags connections by the peer's port
	labEnv    = "CORDON_IPT_LAB"    // child: JSON of the lab's hosts
	pluginEnv = "CORDON_IPT_PLUGIN" // child: directory of the built plugin
)

// mainNSEnv holds the network namespace the test process started in (the
// machine's own), recorded by the first test process and inherited by the
// copies it starts in namespaces.
const mainNSEnv = "CORDON_IPT_MAIN_NETNS"

func TestMain(m *testing.M) {
	if mode := os.Getenv(helperEnv); mode != "" {
		os.Exit(helperMain(mode))
	}
	if os.Getenv(mainNSEnv) == "" {
		ns, err := os.Readlink("/proc/self/ns/net")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		os.Setenv(mainNSEnv, ns)
	}
	os.Exit(m.Run())
}

// helperMain runs this binary as a small network tool instead of the tests.
func helperMain(mode string) int {
	switch mode {
	case "echo":
		return echoMain()
	case "dial":
		return dialMain()
	case "peer":
		return peerMain()
	case "hold":
		return holdMain()
	}
	fmt.Fprintf(os.Stderr, "unknown helper mode %q\n", mode)
	return 2
}

func listenAll() ([]net.Listener, error) {
	var ls []net.Listener
	for _, p := range strings.Split(os.Getenv(portsEnv), ",") {
		l, err := net.Listen("tcp", ":"+p) // both IPv4 and IPv6
		if err != nil {
			return nil, err
		}
		ls = append(ls, l)
	}
	return ls, nil
}

// echoMain listens on the ports in portsEnv and echoes every line back.
func echoMain() int {
	ls, err := listenAll()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Println("ready")
	for _, l := range ls {
		go func() {
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				go func() {
					defer c.Close()
					_, _ = io.Copy(c, c)
				}()
			}
		}()
	}
	select {}
}

// dialMain connects to addrEnv, from fromEnv when set, sends a line and
// expects it back within 1.5 s.
func dialMain() int {
	var from netip.AddrPort
	if f := os.Getenv(fromEnv); f != "" {
		var err error
		if from, err = netip.ParseAddrPort(f); err != nil {
			fmt.Println(err)
			return 2
		}
	}
	if err := echoFrom(from, os.Getenv(addrEnv), 1500*time.Millisecond); err != nil {
		fmt.Println(err)
		return 1
	}
	return 0
}

// holdMain connects to the echo service at addrEnv, from fromEnv when set,
// says "ready", then for each line read from standard input sends it and
// prints "echo <line>" when it comes back within 1.5 s, or "error <why>".
func holdMain() int {
	d := net.Dialer{Timeout: 3 * time.Second}
	if f := os.Getenv(fromEnv); f != "" {
		from, err := netip.ParseAddrPort(f)
		if err != nil {
			fmt.Println(err)
			return 2
		}
		d.LocalAddr = net.TCPAddrFromAddrPort(from)
	}
	c, err := d.Dial("tcp", os.Getenv(addrEnv))
	if err != nil {
		fmt.Println(err)
		return 1
	}
	defer c.Close()
	_ = c.(*net.TCPConn).SetLinger(0)
	fmt.Println("ready")
	br := bufio.NewReader(c)
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		_ = c.SetDeadline(time.Now().Add(1500 * time.Millisecond))
		if _, err := c.Write([]byte(sc.Text() + "\n")); err != nil {
			fmt.Println("error", err)
			continue
		}
		l, err := br.ReadString('\n')
		if err != nil {
			fmt.Println("error", err)
			continue
		}
		fmt.Println("echo", strings.TrimSuffix(l, "\n"))
	}
	return 0
}

func echoOnce(addr string, timeout time.Duration) error {
	return echoFrom(netip.AddrPort{}, addr, timeout)
}

// echoFrom sends a line to the echo service at addr and expects it back
// within timeout. When from is valid it dials from that address and port,
// and closes with a reset so that no TIME_WAIT keeps the port from the next
// dial.
func echoFrom(from netip.AddrPort, addr string, timeout time.Duration) error {
	d := net.Dialer{Timeout: timeout}
	if from.IsValid() {
		d.LocalAddr = net.TCPAddrFromAddrPort(from)
	}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		return err
	}
	if from.IsValid() {
		_ = c.(*net.TCPConn).SetLinger(0)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(timeout))
	if _, err := c.Write([]byte("ping\n")); err != nil {
		return err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	if line != "ping\n" {
		return fmt.Errorf("echo returned %q", line)
	}
	return nil
}

// peerMain accepts connections on the port in portsEnv and tags each by the
// family of its peer ("4" or "6"), or by the peer's port when tagEnv is
// "port". It prints "got <tag> <line>" for each line
// received, and sends "<line>" to connection <tag> for each "<tag> <line>"
// read from standard input.
func peerMain() int {
	ls, err := listenAll()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	var mu sync.Mutex
	conns := map[string]net.Conn{}
	out := make(chan string, 64)
	go func() {
		for l := range out {
			fmt.Println(l)
		}
	}()
	fmt.Println("ready")
	go func() {
		for {
			c, err := ls[0].Accept()
			if err != nil {
				return
			}
			tag := "4"
			ap, err := netip.ParseAddrPort(c.RemoteAddr().String())
			switch {
			case err == nil && os.Getenv(tagEnv) == "port":
				tag = strconv.Itoa(int(ap.Port()))
			case err == nil && ap.Addr().Is6() && !ap.Addr().Is4In6():
				tag = "6"
			}
			mu.Lock()
			conns[tag] = c
			mu.Unlock()
			out <- "conn " + tag
			go func() {
				sc := bufio.NewScanner(c)
				for sc.Scan() {
					out <- "got " + tag + " " + sc.Text()
				}
			}()
		}
	}()
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		tag, msg, _ := strings.Cut(sc.Text(), " ")
		mu.Lock()
		c := conns[tag]
		mu.Unlock()
		if c != nil {
			_, _ = c.Write([]byte(msg + "\n"))
		}
	}
	return 0
}

// labHost is what a test copy inside a namespace needs to know of a host.
type labHost struct {
	Name string
	NS   string
	V4   netip.Addr
	V6   netip.Addr
}

// Lab addresses. allowNet and allowNet6 hold "allowed" and not "outside".
var (
	hostV4, hostV6       = netip.MustParseAddr("198.18.0.2"), netip.MustParseAddr("fd00:c0de::2")
	ctrlV4, ctrlV6       = netip.MustParseAddr("198.18.0.1"), netip.MustParseAddr("fd00:c0de::1")
	outsideV4, outsideV6 = netip.MustParseAddr("198.18.0.3"), netip.MustParseAddr("fd00:c0de::3")
	allowedV4, allowedV6 = netip.MustParseAddr("198.18.0.5"), netip.MustParseAddr("fd00:c0de::5")
	allowNet, allowNet6  = netip.MustParsePrefix("198.18.0.4/30"), netip.MustParsePrefix("fd00:c0de::4/126")
)

const (
	ctrlPort = 7443
	svcPort  = 8080
	peerPort = 9000
)

// labPolicy keeps the controller and the allowlisted host reachable.
func labPolicy() policy.Policy {
	return policy.Policy{
		Controllers: []policy.Endpoint{{Addr: ctrlV4, Port: ctrlPort}, {Addr: ctrlV6, Port: ctrlPort}},
		Allow:       []netip.Prefix{allowNet, allowNet6},
	}
}

// newLab makes the lab: host, ctrl (listening on 7443 and 8080), outside and
// allowed (8080), and host itself (8080). It returns the host and the
// environment that tells a test copy about the lab.
func newLab(t *testing.T) (*netlab.Host, []string) {
	t.Helper()
	l := labtest.New(t)
	spec := []struct {
		name   string
		v4, v6 netip.Addr
		ports  string
	}{
		{"host", hostV4, hostV6, "8080"},
		{"ctrl", ctrlV4, ctrlV6, "7443,8080"},
		{"outside", outsideV4, outsideV6, "8080"},
		{"allowed", allowedV4, allowedV6, "8080"},
	}
	var hosts []labHost
	var host *netlab.Host
	for _, s := range spec {
		h := labtest.AddHost(t, l, s.name, s.v4.String()+"/24", s.v6.String()+"/64")
		hosts = append(hosts, labHost{Name: h.Name, NS: h.NS, V4: h.V4, V6: h.V6})
		if s.name == "host" {
			host = h
		}
		startHelper(t, h, "echo", portsEnv+"="+s.ports)
	}
	js, err := json.Marshal(hosts)
	if err != nil {
		t.Fatal(err)
	}
	return host, []string{labEnv + "=" + string(js)}
}

// startHelper starts this binary in helper mode in h's namespace, owned by
// the lab, and waits until it says it is ready.
func startHelper(t *testing.T, h *netlab.Host, mode string, env ...string) {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := h.Command(exe)
	cmd.Env = append(append(os.Environ(), helperEnv+"="+mode), env...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := h.Start(cmd); err != nil {
		t.Fatalf("start %s helper in %s: %v", mode, h.Name, err)
	}
	waitReady(t, stdout, h.Name)
}

func waitReady(t *testing.T, r io.Reader, where string) *bufio.Reader {
	t.Helper()
	br := bufio.NewReader(r)
	done := make(chan error, 1)
	go func() {
		line, err := br.ReadString('\n')
		if err == nil && line != "ready\n" {
			err = fmt.Errorf("helper said %q", line)
		}
		done <- err
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("helper in %s: %v", where, err)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("helper in %s not ready after 10s", where)
	}
	return br
}

// childLab returns the lab's hosts inside a test copy, after making sure the
// copy runs in a namespace and not in the machine's own.
func childLab(t *testing.T) map[string]*netlab.Host {
	t.Helper()
	requireLabNS(t)
	var hosts []labHost
	if err := json.Unmarshal([]byte(os.Getenv(labEnv)), &hosts); err != nil {
		t.Fatalf("lab description: %v", err)
	}
	out := map[string]*netlab.Host{}
	for _, h := range hosts {
		out[h.Name] = &netlab.Host{Name: h.Name, NS: h.NS, V4: h.V4, V6: h.V6}
	}
	return out
}

// requireLabNS stops the test unless it runs in a network namespace other
// than PID 1's: the plugin must never touch this machine's own firewall.
func requireLabNS(t *testing.T) {
	t.Helper()
	self, err := os.Readlink("/proc/self/ns/net")
	first := os.Getenv(mainNSEnv)
	if err != nil || first == "" || self == first {
		t.Fatalf("refusing to touch the firewall: not inside a test namespace (now in %s, started in %s, %v)", self, first, err)
	}
	if pid1, err := os.Readlink("/proc/1/ns/net"); err == nil && pid1 == self {
		t.Fatalf("refusing to touch the firewall: in PID 1's network namespace %s", self)
	}
}

// nsPlugin returns a plugin logging to t, for use inside a namespace only.
func nsPlugin(t *testing.T) *Plugin {
	t.Helper()
	requireLabNS(t)
	return New(Options{Logger: hclog.New(&hclog.LoggerOptions{Name: "iptables", Output: testWriter{t}, Level: hclog.Info})})
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// probe is a TCP connection attempt from a host ("host" is the namespace the
// test copy runs in) to an address, and whether it should work. Another
// host may name the local address and port to dial from after an "@":
// "outside@198.18.0.1:7443".
type probe struct {
	from string
	to   netip.AddrPort
	want bool
}

func ap(a netip.Addr, port uint16) netip.AddrPort { return netip.AddrPortFrom(a, port) }

// checkReach runs the probes in parallel and reports each that does not do
// what it should.
func checkReach(t *testing.T, hosts map[string]*netlab.Host, stage string, probes []probe) {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	errs := make([]error, len(probes))
	var wg sync.WaitGroup
	for i, p := range probes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if p.from == "host" {
				errs[i] = echoOnce(p.to.String(), 1500*time.Millisecond)
				return
			}
			name, local, _ := strings.Cut(p.from, "@")
			cmd := hosts[name].Command(exe)
			cmd.Env = append(os.Environ(), helperEnv+"=dial", addrEnv+"="+p.to.String())
			if local != "" {
				cmd.Env = append(cmd.Env, fromEnv+"="+local)
			}
			out, err := cmd.CombinedOutput()
			if err != nil {
				errs[i] = fmt.Errorf("%v: %s", err, bytes.TrimSpace(out))
			}
		}()
	}
	wg.Wait()
	for i, p := range probes {
		switch {
		case p.want && errs[i] != nil:
			t.Errorf("%s: %s -> %s should work: %v", stage, p.from, p.to, errs[i])
		case !p.want && errs[i] == nil:
			t.Errorf("%s: %s -> %s should be blocked but works", stage, p.from, p.to)
		}
	}
}

// openProbes are those that work when the host is not isolated.
func openProbes() []probe {
	return []probe{
		{"outside", ap(hostV4, svcPort), true},
		{"outside", ap(hostV6, svcPort), true},
		{"host", ap(outsideV4, svcPort), true},
		{"host", ap(outsideV6, svcPort), true},
		{"allowed", ap(hostV4, svcPort), true},
		{"host", ap(ctrlV4, svcPort), true},
	}
}

// isolatedProbes are what labPolicy allows and forbids.
func isolatedProbes() []probe {
	return []probe{
		{"outside", ap(hostV4, svcPort), false},
		{"outside", ap(hostV6, svcPort), false},
		{"host", ap(outsideV4, svcPort), false},
		{"host", ap(outsideV6, svcPort), false},
		{"host", ap(ctrlV4, ctrlPort), true},
		{"host", ap(ctrlV6, ctrlPort), true},
		{"host", ap(ctrlV4, svcPort), false},
		{"ctrl", ap(hostV4, svcPort), false},
		{"ctrl", ap(hostV6, svcPort), false},
		{"allowed", ap(hostV4, svcPort), true},
		{"allowed", ap(hostV6, svcPort), true},
		{"host", ap(allowedV4, svcPort), true},
		{"host", ap(allowedV6, svcPort), true},
		{"host", ap(netip.MustParseAddr("127.0.0.1"), svcPort), true},
		{"host", ap(netip.IPv6Loopback(), svcPort), true},
		{"host", ap(hostV4, svcPort), true},
	}
}

var counters = regexp.MustCompile(` ?\[\d+:\d+\]`)

// saveRules returns iptables-save and ip6tables-save of the namespace the
// test copy runs in, without comment and date lines and without counters.
func saveRules(t *testing.T) string {
	t.Helper()
	requireLabNS(t)
	var b strings.Builder
	for _, cmd := range []string{"iptables-save", "ip6tables-save"} {
		out, err := exec.Command(cmd).Output()
		if err != nil {
			t.Fatalf("%s: %v", cmd, err)
		}
		fmt.Fprintf(&b, "== %s\n", cmd)
		for _, l := range strings.SplitAfter(string(out), "\n") {
			if l == "" || strings.HasPrefix(l, "#") {
				continue
			}
			b.WriteString(counters.ReplaceAllString(l, ""))
		}
	}
	return b.String()
}

// restore loads rules with iptables-restore or ip6tables-restore.
func restore(t *testing.T, cmd, rules string) {
	t.Helper()
	requireLabNS(t)
	c := exec.Command(cmd)
	c.Stdin = strings.NewReader(rules)
	if out, err := c.CombinedOutput(); err != nil {
		t.Fatalf("%s: %v: %s", cmd, err, out)
	}
}

// listCordon returns, from iptables -S and ip6tables -S run directly, every
// line that names a Cordon chain, prefixed with the command: an independent
// reading of what the plugin reports.
func listCordon(t *testing.T) map[string]bool {
	t.Helper()
	requireLabNS(t)
	set := map[string]bool{}
	for _, cmd := range []string{"iptables", "ip6tables"} {
		out, err := exec.Command(cmd, "-w", "-S").Output()
		if err != nil {
			t.Fatalf("%s -S: %v", cmd, err)
		}
		for _, l := range strings.Split(string(out), "\n") {
			if strings.Contains(l, ChainPrefix) {
				set[cmd+" "+l] = true
			}
		}
	}
	return set
}

// userRules4 and userRules6 are a ruleset with DROP policies, custom chains,
// comments and a nat table, which must come through isolation and release
// unchanged. They keep the lab's traffic working before isolation.
const userRules4 = `*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
-A POSTROUTING -s 198.19.0.0/24 -o eth0 -j MASQUERADE
COMMIT
*filter
:INPUT DROP [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
:USER-IN - [0:0]
:USER-LOG - [0:0]
-A INPUT -i lo -j ACCEPT
-A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A INPUT -j USER-IN
-A FORWARD -s 198.19.0.0/24 -j ACCEPT
-A OUTPUT -d 198.19.255.0/24 -j REJECT --reject-with icmp-port-unreachable
-A USER-IN -s 198.18.0.0/24 -p tcp -m tcp --dport 8080 -m comment --comment "lab \"peers\"" -j ACCEPT
-A USER-IN -s 198.18.0.0/24 -p tcp -m tcp --dport 7443 -j ACCEPT
-A USER-IN -j USER-LOG
-A USER-LOG -m limit --limit 5/min -j LOG --log-prefix "user-drop: "
COMMIT
`

const userRules6 = `*filter
:INPUT DROP [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
:USER-IN6 - [0:0]
-A INPUT -i lo -j ACCEPT
-A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A INPUT -p ipv6-icmp -j ACCEPT
-A INPUT -j USER-IN6
-A USER-IN6 -s fd00:c0de::/64 -p tcp -m tcp --dport 8080 -j ACCEPT
COMMIT
`

// genOfRules returns the generation named by the first rule line.
func genOfRules(t *testing.T, rules []string) string {
	t.Helper()
	for _, r := range rules {
		for _, f := range strings.Fields(r) {
			if g, ok := genOf(f); ok {
				return g
			}
		}
	}
	t.Fatalf("no generation in %q", rules)
	return ""
}

// conntrackCount counts the conntrack entries of TCP flows to port, in the
// namespace the test copy runs in, with conntrack(8).
func conntrackCount(t *testing.T, fam string, port int) int {
	t.Helper()
	out, err := exec.Command("conntrack", "-L", "-f", fam, "-p", "tcp", "--dport", strconv.Itoa(port)).Output()
	if err != nil {
		t.Fatalf("conntrack -L: %v", err)
	}
	n := 0
	for _, l := range strings.Split(string(out), "\n") {
		if strings.TrimSpace(l) != "" {
			n++
		}
	}
	return n
}

var errInjected = errors.New("injected failure")

// faultyTables passes every call to real iptables, but can fail a chosen
// change (a restore, or a single change of Release's fallback) without
// making it, make a chosen restore apply something other than it was given
// and report success, or fail a chosen read. Changes and reads are counted
// separately, from 1 (0 never matches); every call is recorded in order.
type faultyTables struct {
	ipTables
	c *faultCounter
}

type faultCounter struct {
	mu       sync.Mutex
	failAt   map[int]bool // changes to fail
	alterAt  int          // the restore to alter (alterRestore)
	readFail int          // the read to fail
	n, reads int
	ops      []string // every call: "Restore", "Delete", … "List", "ListChains", "ChainExists"
	altered  string   // what the altered restore left out
}

// reset clears the counts and the faults.
func (c *faultCounter) reset() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.failAt, c.alterAt, c.readFail, c.n, c.reads, c.ops, c.altered = nil, 0, 0, 0, 0, nil, ""
}

func (c *faultCounter) calls() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.ops)
}

// isRead reports whether an op recorded by faultyTables is a read.
func isRead(op string) bool { return op == "List" || op == "ListChains" || op == "ChainExists" }

func (f faultyTables) change(op string) (n int, err error) {
	f.c.mu.Lock()
	defer f.c.mu.Unlock()
	f.c.n++
	f.c.ops = append(f.c.ops, op)
	if f.c.failAt[f.c.n] {
		return f.c.n, fmt.Errorf("%w at change %d (%s)", errInjected, f.c.n, op)
	}
	return f.c.n, nil
}

func (f faultyTables) read(op string) error {
	f.c.mu.Lock()
	defer f.c.mu.Unlock()
	f.c.reads++
	f.c.ops = append(f.c.ops, op)
	if f.c.reads == f.c.readFail {
		return fmt.Errorf("%w at read %d (%s)", errInjected, f.c.reads, op)
	}
	return nil
}

func (f faultyTables) List(table, chain string) ([]string, error) {
	if err := f.read("List"); err != nil {
		return nil, err
	}
	return f.ipTables.List(table, chain)
}

func (f faultyTables) ListChains(table string) ([]string, error) {
	if err := f.read("ListChains"); err != nil {
		return nil, err
	}
	return f.ipTables.ListChains(table)
}

func (f faultyTables) ChainExists(table, chain string) (bool, error) {
	if err := f.read("ChainExists"); err != nil {
		return false, err
	}
	return f.ipTables.ChainExists(table, chain)
}

func (f faultyTables) Restore(rules string) error {
	n, err := f.change("Restore")
	if err != nil {
		return err
	}
	f.c.mu.Lock()
	alter := n == f.c.alterAt
	f.c.mu.Unlock()
	if alter {
		var left string
		rules, left = alterRestore(rules)
		f.c.mu.Lock()
		f.c.altered = left
		f.c.mu.Unlock()
	}
	return f.ipTables.Restore(rules)
}

// alterRestore returns restore input that still applies but does less than
// rules: without its last rule appended ("-A"), or else its last jump
// inserted ("-I"), or else its last chain deleted ("-X"); and the line left
// out.
func alterRestore(rules string) (string, string) {
	lines := strings.Split(rules, "\n")
	for _, op := range []string{"-A ", "-I ", "-X "} {
		for i := len(lines) - 1; i >= 0; i-- {
			if l := lines[i]; strings.HasPrefix(l, op) {
				return strings.Join(slices.Delete(lines, i, i+1), "\n"), l
			}
		}
	}
	return rules, ""
}

func (f faultyTables) ClearChain(table, chain string) error {
	if _, err := f.change("ClearChain"); err != nil {
		return err
	}
	return f.ipTables.ClearChain(table, chain)
}

func (f faultyTables) DeleteChain(table, chain string) error {
	if _, err := f.change("DeleteChain"); err != nil {
		return err
	}
	return f.ipTables.DeleteChain(table, chain)
}

func (f faultyTables) Delete(table, chain string, spec ...string) error {
	if _, err := f.change("Delete"); err != nil {
		return err
	}
	return f.ipTables.Delete(table, chain, spec...)
}

// withFaults makes p's iptables go through c.
func withFaults(p *Plugin, c *faultCounter) {
	p.open = func(f family) (ipTables, error) {
		ipt, err := openIPTables(f, time.Second)
		if err != nil {
			return nil, err
		}
		return faultyTables{ipTables: ipt, c: c}, nil
	}
}

// direct returns the go-iptables under t, for tests that change rules one
// at a time, as an older plugin, a crash or another program leaves them.
func (t tab) direct() *iptables.IPTables {
	ipt := t.ipt
	if f, ok := ipt.(faultyTables); ok {
		ipt = f.ipTables
	}
	return ipt.(*xtables).IPTables
}

func (t tab) newChain(c string) error {
	return t.wrap(t.direct().NewChain(filterTable, c), "create chain %s", c)
}

// appendRule appends a rule given as an "-A CHAIN …" line.
func (t tab) appendRule(rule string) error {
	f := splitRule(rule)
	if len(f) < 3 || f[0] != "-A" {
		return fmt.Errorf("malformed rule %q", rule)
	}
	return t.wrap(t.direct().Append(filterTable, f[1], f[2:]...), "append %q", rule)
}

// insertRule inserts a rule given as an "-A CHAIN …" line at 1-based
// position pos of its chain.
func (t tab) insertRule(pos int, rule string) error {
	f := splitRule(rule)
	if len(f) < 3 || f[0] != "-A" {
		return fmt.Errorf("malformed rule %q", rule)
	}
	return t.wrap(t.direct().Insert(filterTable, f[1], pos, f[2:]...), "insert %q at %d", rule, pos)
}

var bg = context.Background()

// peerProc is a helper (peerMain, holdMain) running in another namespace,
// driven from the test copy through its standard input and output.
type peerProc struct {
	stdin io.Writer
	lines chan string
}

// startPeer starts a peer helper listening on port in h's namespace and
// waits until it is ready; t's cleanup stops it.
func startPeer(t *testing.T, h *netlab.Host, port int, env ...string) *peerProc {
	t.Helper()
	return startProc(t, h, "peer", append([]string{portsEnv + "=" + strconv.Itoa(port)}, env...)...)
}

// startProc starts this binary in helper mode in h's namespace, with its
// standard input and output piped to the test, and waits until it is
// ready; t's cleanup stops it.
func startProc(t *testing.T, h *netlab.Host, mode string, env ...string) *peerProc {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := h.Command(exe)
	cmd.Env = append(append(os.Environ(), helperEnv+"="+mode), env...)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	pp := &peerProc{stdin: stdin, lines: make(chan string, 64)}
	br := waitReady(t, stdout, h.Name)
	go func() {
		for {
			l, err := br.ReadString('\n')
			if err != nil {
				close(pp.lines)
				return
			}
			pp.lines <- strings.TrimSuffix(l, "\n")
		}
	}()
	return pp
}

// next returns the helper's next line, or fails t after 5 s.
func (pp *peerProc) next(t *testing.T) string {
	t.Helper()
	select {
	case l, ok := <-pp.lines:
		if !ok {
			t.Fatal("helper exited")
		}
		return l
	case <-time.After(5 * time.Second):
		t.Fatal("helper said nothing for 5s")
	}
	return ""
}

// writeLine writes line to the helper's standard input.
func (pp *peerProc) writeLine(t *testing.T, line string) {
	t.Helper()
	if _, err := io.WriteString(pp.stdin, line+"\n"); err != nil {
		t.Fatal(err)
	}
}

// expect waits up to 5 s for the peer to print want, skipping other lines.
func (pp *peerProc) expect(t *testing.T, want string) {
	t.Helper()
	deadline := time.After(5 * time.Second)
	for {
		select {
		case l := <-pp.lines:
			if l == want {
				return
			}
		case <-deadline:
			t.Fatalf("peer never said %q", want)
		}
	}
}

// forbid fails t if the peer prints bad within d.
func (pp *peerProc) forbid(t *testing.T, bad string, d time.Duration) {
	t.Helper()
	deadline := time.After(d)
	for {
		select {
		case l := <-pp.lines:
			if l == bad {
				t.Errorf("peer still received data after isolation: %q", l)
			}
		case <-deadline:
			return
		}
	}
}

// send has the peer write line on the connection tagged tag.
func (pp *peerProc) send(t *testing.T, tag, line string) {
	t.Helper()
	pp.writeLine(t, tag+" "+line)
}

// inNamespace runs child in a copy of the test binary inside the host
// namespace of a new lab (see labtest.RunChild).
func inNamespace(t *testing.T, child func(*testing.T)) {
	t.Helper()
	if labtest.IsChild(t) {
		child(t)
		return
	}
	host, env := newLab(t)
	labtest.RunChild(t, host, env...)
}
