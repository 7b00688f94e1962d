// Package fwtest is the isolation test matrix every host firewall plugin's
// tests run: for each starting ruleset (Setups), in network namespaces of
// its own, it isolates a host, checks what still gets through over TCP, UDP
// and ICMP, IPv4 and IPv6, releases, and checks that the whole ruleset
// (iptables, ip6tables, their legacy twins and nft) is exactly as before.
//
// A plugin's test calls Run with a constructor:
//
//	func TestMatrix(t *testing.T) {
//		fwtest.Run(t, fwtest.Plugin{New: func(t *testing.T) firewall.Firewall { return New(Options{}) }})
//	}
//
// Invariants a caller must know:
//
//   - The firewall is only ever made and used inside the lab's host
//     namespace: Run re-runs the test binary there (labtest.RunChild), and
//     the copy refuses to go on when it finds itself in the network
//     namespace the test started in or in PID 1's. New is called there, once
//     per setup.
//   - Importing the package gives the test binary a helper mode: when the
//     environment variable CORDON_FWTEST_HELPER is set, the package's init
//     runs the binary as a probe agent (echo services and probes inside
//     another namespace) and exits before any test starts. No TestMain
//     change is needed.
//   - Addresses are 198.18.0.0/15 and fd00:c0de::/64 only, inside
//     namespaces that t.Cleanup removes even when the test fails.
//   - It needs root, ip(8), iptables, ip6tables, their -restore, -save and
//     -legacy variants, nft and ping (iputils); without root it skips
//     unless labtest.RequireEnv is set.
package fwtest

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cordon-ir/cordon/internal/netlab/labtest"
	"github.com/cordon-ir/cordon/pkg/firewall"
)

// Plugin is what a plugin's test gives Run.
type Plugin struct {
	// New returns the firewall under test. Run calls it inside the lab's
	// host namespace, once per setup, after the setup's rules are loaded.
	New func(t *testing.T) firewall.Firewall
	// AfterRelease maps a setup's name to the dump the plugin leaves after
	// release, given the dump before isolation, for a plugin that cannot
	// leave some setups exactly as they were (iptables-nft leaves empty
	// filter tables behind where there were none). The dump after release
	// must equal what the function returns, exactly. Setups not named here
	// must come back exactly as they were.
	AfterRelease map[string]func(before Dump) Dump
	// Resets says the plugin answers a local program that writes on a
	// connection isolation cut with a TCP reset (ECONNRESET at once);
	// without it, the write must merely get nothing back.
	Resets bool
}

// Environment of the test copies inside the host namespace.
const (
	labEnv = "CORDON_FWTEST_LAB" // JSON: role -> namespace name
	// mainNSEnv holds the network namespace the first test process started
	// in (the machine's own); copies inherit it.
	mainNSEnv = "CORDON_FWTEST_MAIN_NETNS"
)

// Run runs the matrix: one subtest per setup, each in a lab of its own.
func Run(t *testing.T, p Plugin) {
	t.Helper()
	if p.New == nil {
		t.Fatal("fwtest: Plugin.New is nil")
	}
	names := map[string]bool{}
	for _, s := range setups {
		names[s.name] = true
	}
	for name := range p.AfterRelease {
		if !names[name] {
			t.Errorf("fwtest: AfterRelease names setup %q, which does not exist", name)
		}
	}
	for _, s := range setups {
		t.Run(s.name, func(t *testing.T) {
			if labtest.IsChild(t) {
				runInHost(t, s, p)
				return
			}
			start := time.Now()
			lab := newLab(t, s)
			js, err := json.Marshal(lab.ns)
			if err != nil {
				t.Fatal(err)
			}
			labtest.RunChild(t, lab.host, labEnv+"="+string(js))
			t.Logf("setup %s took %v", s.name, time.Since(start).Round(time.Millisecond))
		})
	}
}

// runInHost is the part of a setup's subtest that runs in the copy of the
// test binary inside the host namespace.
func runInHost(t *testing.T, s setup, p Plugin) {
	requireLabNS(t)
	requireCommands(t)
	var ns map[string]string
	if err := json.Unmarshal([]byte(os.Getenv(labEnv)), &ns); err != nil {
		t.Fatalf("lab description: %v", err)
	}
	ctx := context.Background()
	stopServe, err := serve(servicePorts(roleHost))
	if err != nil {
		t.Fatalf("echo services in the host: %v", err)
	}
	t.Cleanup(stopServe)
	agents := map[string]*agent{}
	for _, role := range []string{roleCtr, roleOutside, roleCtrl, roleAllowed} {
		agents[role] = startAgent(t, role, ns[role])
	}

	s.load(t)
	before := takeDump(t)
	want, wantWhy := before, "as before isolation"
	if f := p.AfterRelease[s.name]; f != nil {
		want, wantWhy = f(before), "as the plugin declares for this setup"
	}
	t.Logf("ruleset before isolation:\n%s", before)

	timed := func(what string, f func()) {
		t.Helper()
		start := time.Now()
		f()
		t.Logf("%s: %v", what, time.Since(start).Round(time.Millisecond))
	}
	timed("probes before isolation", func() { checkReach(t, "before isolation", agents, openProbes(s)) })
	if t.Failed() {
		t.Fatalf("setup %s does not let the lab's traffic through before isolation: the matrix would prove nothing", s.name)
	}

	// Connections the host opened before isolation, IPv4 and IPv6, to a
	// service outside the policy.
	held := holdConnections(t, outsideV4, outsideV6)

	fw := p.New(t)
	timed("Isolate", func() {
		a, err := fw.Isolate(ctx, Policy(), "fwtest-"+s.name)
		if err != nil {
			t.Fatalf("Isolate: %v", err)
		}
		t.Logf("isolated: %d rules, digest %s, %d flows cut", len(a.Rules), a.Digest, a.FlowsCut)
	})
	if st, err := fw.Status(ctx); err != nil || !st.Isolated {
		t.Errorf("Status after Isolate = %+v, %v; want isolated", st, err)
	}
	// Forget the neighbours, so that reaching anyone over IPv6 needs
	// neighbour discovery through the isolation rules.
	flushNeighbours(t, ns)
	timed("probes while isolated", func() { checkReach(t, "isolated", agents, isolatedProbes(s)) })
	timed("held connections", func() { checkHeld(t, held, p.Resets) })

	timed("Release", func() {
		if n, err := fw.Release(ctx, "fwtest-"+s.name); err != nil || n == 0 {
			t.Errorf("Release = %d, %v; want some rules removed and no error", n, err)
		}
	})
	if st, err := fw.Status(ctx); err != nil || st.Isolated {
		t.Errorf("Status after Release = %+v, %v; want not isolated", st, err)
	}
	after := takeDump(t)
	if diff := after.Diff(want); diff != "" {
		t.Errorf("ruleset after release is not %s (- want, + got):\n%s", wantWhy, diff)
	}
	timed("probes after release", func() { checkReach(t, "released", agents, openProbes(s)) })
}

// requireLabNS stops the test unless it runs in a network namespace other
// than the one the test started in and PID 1's: the firewall under test
// must never touch this machine's own.
func requireLabNS(t *testing.T) {
	t.Helper()
	self, err := os.Readlink("/proc/self/ns/net")
	first := os.Getenv(mainNSEnv)
	if err != nil || first == "" || self == first {
		t.Fatalf("refusing to touch the firewall: not inside a test namespace (now in %s, started in %s, %v)", self, first, err)
	}
	// PID 1's namespace may not be readable (a sandbox); when it is, it
	// must not be this one either.
	if pid1, err := os.Readlink("/proc/1/ns/net"); err == nil && pid1 == self {
		t.Fatalf("refusing to touch the firewall: in PID 1's network namespace %s", self)
	}
}

// requireCommands fails t, naming them, when commands the matrix runs are
// missing (scripts/deps.sh installs them).
func requireCommands(t *testing.T) {
	t.Helper()
	var missing []string
	for _, c := range []string{"ip", "ping", "nft",
		"iptables-save", "ip6tables-save", "iptables-restore", "ip6tables-restore",
		"iptables-legacy-save", "ip6tables-legacy-save", "iptables-legacy-restore", "ip6tables-legacy-restore"} {
		if _, err := exec.LookPath(c); err != nil {
			missing = append(missing, c)
		}
	}
	if len(missing) > 0 {
		t.Fatalf("the firewall matrix needs %s (scripts/deps.sh installs them: iptables, nftables, iputils-ping)", strings.Join(missing, ", "))
	}
}

// flushNeighbours empties the neighbour tables of every namespace of the lab.
func flushNeighbours(t *testing.T, ns map[string]string) {
	t.Helper()
	roles := make([]string, 0, len(ns))
	for r := range ns {
		roles = append(roles, r)
	}
	sort.Strings(roles)
	for _, r := range roles {
		if err := run("ip", "-n", ns[r], "neigh", "flush", "all"); err != nil {
			t.Fatal(err)
		}
	}
}

func run(args ...string) error {
	return runInput("", args...)
}

// runInput runs a command with input on its standard input; the error
// carries its output.
func runInput(input string, args ...string) error {
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Stdin = strings.NewReader(input)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("%s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// heldConn is a TCP connection the host opened before isolation.
type heldConn struct {
	to netip.AddrPort
	c  net.Conn
	r  *bufio.Reader
}

// holdConnections opens, from the host, a connection to the echo service
// of each address and checks it echoes.
func holdConnections(t *testing.T, addrs ...netip.Addr) []heldConn {
	t.Helper()
	var out []heldConn
	for _, a := range addrs {
		to := netip.AddrPortFrom(a, servicePort)
		c, err := net.DialTimeout("tcp", to.String(), probeTimeout)
		if err != nil {
			t.Fatalf("connection to %s before isolation: %v", to, err)
		}
		t.Cleanup(func() { c.Close() })
		h := heldConn{to: to, c: c, r: bufio.NewReader(c)}
		c.SetDeadline(time.Now().Add(probeTimeout))
		if _, err := fmt.Fprintln(c, "before"); err != nil {
			t.Fatalf("connection to %s before isolation: %v", to, err)
		}
		if line, err := h.r.ReadString('\n'); err != nil || line != "before\n" {
			t.Fatalf("connection to %s before isolation: %q, %v", to, line, err)
		}
		out = append(out, h)
	}
	return out
}

// checkHeld writes on each held connection: nothing may come back, and a
// plugin with resets must end it at once (ECONNRESET on the write or the
// read that follows).
func checkHeld(t *testing.T, held []heldConn, resets bool) {
	t.Helper()
	for _, h := range held {
		h.c.SetDeadline(time.Now().Add(probeTimeout))
		_, werr := fmt.Fprintln(h.c, "after")
		line, rerr := h.r.ReadString('\n')
		reset := errors.Is(werr, syscall.ECONNRESET) || errors.Is(rerr, syscall.ECONNRESET)
		switch {
		case rerr == nil:
			t.Errorf("connection to %s opened before isolation still carries data: %q", h.to, line)
		case resets && !reset:
			t.Errorf("connection to %s opened before isolation: write %v, read %v; want a reset", h.to, werr, rerr)
		}
	}
}
