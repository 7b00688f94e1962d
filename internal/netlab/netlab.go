// Package netlab builds private virtual networks out of Linux network
// namespaces for Cordon's tests, demo and benchmarks: hosts joined by a
// bridge that lives in a namespace of its own, so nothing touches the
// machine's own network namespace or firewall.
//
// Every namespace a Lab makes is named cdl<pid>-<n>-<host>; Close removes
// them, and New sweeps away those left by a process that no longer exists.
// Addresses should come from 198.18.0.0/15 and fd00:c0de::/64 (RFC 2544
// benchmarking space and a unique-local prefix).
package netlab

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Available reports why namespaces cannot be made here, or nil when they can:
// it needs root and the ip(8) command from iproute2.
func Available() error {
	if os.Geteuid() != 0 {
		return errors.New("network namespaces need root")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		return errors.New("ip(8) from iproute2 is not installed")
	}
	return nil
}

var labSeq atomic.Int64

// Lab is a set of network namespaces joined by one bridge.
type Lab struct {
	id     string
	sw     string // namespace holding the bridge
	mu     sync.Mutex
	hosts  []*Host
	procs  []*exec.Cmd
	closed bool
}

// Host is one namespace of a Lab with one interface, eth0, on the bridge.
type Host struct {
	Name string     // short name, such as "pay-db-01"
	NS   string     // namespace name, for ip netns exec
	V4   netip.Addr // IPv4 address on eth0, if any
	V6   netip.Addr // IPv6 address on eth0, if any
	lab  *Lab
}

// New makes an empty lab: one namespace with a bridge. It first removes
// namespaces of labs whose process has died.
func New() (*Lab, error) {
	if err := Available(); err != nil {
		return nil, err
	}
	Sweep()
	l := &Lab{id: fmt.Sprintf("cdl%d-%d", os.Getpid(), labSeq.Add(1))}
	l.sw = l.id + "-sw"
	if err := run("ip", "netns", "add", l.sw); err != nil {
		return nil, err
	}
	steps := [][]string{
		{"ip", "-n", l.sw, "link", "set", "lo", "up"},
		{"ip", "-n", l.sw, "link", "add", "br0", "type", "bridge"},
		{"ip", "-n", l.sw, "link", "set", "br0", "up"},
	}
	for _, s := range steps {
		if err := run(s...); err != nil {
			l.Close()
			return nil, err
		}
	}
	return l, nil
}

// AddHost adds a namespace with eth0 on the bridge, loopback up, and the
// given addresses (either may be the zero Prefix). IPv6 addresses skip
// duplicate address detection so they work at once.
func (l *Lab) AddHost(name string, v4, v6 netip.Prefix) (*Host, error) {
	l.mu.Lock()
	n := len(l.hosts)
	l.mu.Unlock()
	h := &Host{Name: name, NS: fmt.Sprintf("%s-%s", l.id, name), lab: l}
	if err := run("ip", "netns", "add", h.NS); err != nil {
		return nil, err
	}
	l.mu.Lock()
	l.hosts = append(l.hosts, h)
	l.mu.Unlock()
	port := "p" + strconv.Itoa(n)
	steps := [][]string{
		{"ip", "-n", h.NS, "link", "set", "lo", "up"},
		{"ip", "-n", h.NS, "link", "add", "eth0", "type", "veth", "peer", "name", port, "netns", l.sw},
		{"ip", "-n", l.sw, "link", "set", port, "master", "br0"},
		{"ip", "-n", l.sw, "link", "set", port, "up"},
	}
	if v6.IsValid() {
		steps = append(steps, []string{"ip", "netns", "exec", h.NS, "sysctl", "-qw", "net.ipv6.conf.eth0.accept_dad=0"})
	}
	if v4.IsValid() {
		h.V4 = v4.Addr()
		steps = append(steps, []string{"ip", "-n", h.NS, "addr", "add", v4.String(), "dev", "eth0"})
	}
	if v6.IsValid() {
		h.V6 = v6.Addr()
		steps = append(steps, []string{"ip", "-n", h.NS, "-6", "addr", "add", v6.String(), "dev", "eth0", "nodad"})
	}
	steps = append(steps, []string{"ip", "-n", h.NS, "link", "set", "eth0", "up"})
	for _, s := range steps {
		if err := run(s...); err != nil {
			return nil, err
		}
	}
	return h, nil
}

// Command returns a command that runs in the host's namespace.
func (h *Host) Command(name string, args ...string) *exec.Cmd {
	return exec.Command("ip", append([]string{"netns", "exec", h.NS, name}, args...)...)
}

// Output runs a command in the host's namespace and returns its standard
// output; the error carries standard error.
func (h *Host) Output(name string, args ...string) (string, error) {
	cmd := h.Command(name, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return string(out), fmt.Errorf("%s %s in %s: %w: %s", name, strings.Join(args, " "), h.Name, err, strings.TrimSpace(stderr.String()))
	}
	return string(out), nil
}

// Start starts cmd (usually from Command) and has the lab stop it on Close.
func (h *Host) Start(cmd *exec.Cmd) error {
	// Own process group, so Close can stop what the command starts too
	// (ip netns exec, then the program itself, then its plugins).
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Setpgid = true
	if err := cmd.Start(); err != nil {
		return err
	}
	h.lab.mu.Lock()
	h.lab.procs = append(h.lab.procs, cmd)
	h.lab.mu.Unlock()
	return nil
}

// Stop ends a command started with Start: SIGTERM to its process group, then
// SIGKILL after grace. It returns the command's wait error.
func Stop(cmd *exec.Cmd, grace time.Duration) error {
	if cmd.Process == nil {
		return nil
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
	select {
	case err := <-done:
		return err
	case <-time.After(grace):
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		return <-done
	}
}

// Close stops every command started in the lab and removes its namespaces
// (which removes their links too). It is safe to call more than once.
func (l *Lab) Close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil
	}
	l.closed = true
	procs, hosts := l.procs, l.hosts
	l.mu.Unlock()
	for i := len(procs) - 1; i >= 0; i-- {
		if procs[i].ProcessState == nil {
			_ = Stop(procs[i], 5*time.Second)
		}
	}
	var errs []error
	for _, h := range hosts {
		errs = append(errs, deleteNS(h.NS))
	}
	errs = append(errs, deleteNS(l.sw))
	return errors.Join(errs...)
}

// deleteNS kills whatever still runs in the namespace and removes it.
func deleteNS(ns string) error {
	if out, err := exec.Command("ip", "netns", "pids", ns).Output(); err == nil {
		for _, f := range strings.Fields(string(out)) {
			if pid, err := strconv.Atoi(f); err == nil {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	}
	if err := run("ip", "netns", "delete", ns); err != nil && !strings.Contains(err.Error(), "No such file") {
		return err
	}
	return nil
}

// Sweep removes namespaces named by a lab whose process no longer runs.
func Sweep() {
	entries, err := os.ReadDir("/run/netns")
	if err != nil {
		return
	}
	for _, e := range entries {
		name := e.Name()
		if !strings.HasPrefix(name, "cdl") {
			continue
		}
		pidText, _, ok := strings.Cut(strings.TrimPrefix(name, "cdl"), "-")
		pid, err := strconv.Atoi(pidText)
		if !ok || err != nil {
			continue
		}
		if syscall.Kill(pid, 0) == nil {
			continue
		}
		_ = deleteNS(name)
	}
}

func run(args ...string) error {
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}
