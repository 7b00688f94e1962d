package snapshot

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/cordon-ir/cordon/internal/netlab/labtest"
	"github.com/cordon-ir/cordon/pkg/evidence"
	"github.com/cordon-ir/cordon/pkg/policy"
	"golang.org/x/crypto/ssh"
	"golang.org/x/sys/unix"
)

// helperEnv selects a helper mode when the test binary is run as a child.
const helperEnv = "CORDON_SNAPSHOT_TEST_HELPER"

func TestMain(m *testing.M) {
	switch os.Getenv(helperEnv) {
	case "":
		os.Exit(m.Run())
	case "sockets":
		helperSockets()
	case "hold":
		io.Copy(io.Discard, os.Stdin)
		os.Exit(0)
	case "take":
		helperTake()
	case "fuse":
		helperFUSE()
	case "chroot":
		helperChroot()
	case "private-exec":
		helperPrivateExec()
	default:
		fmt.Fprintln(os.Stderr, "unknown helper mode")
		os.Exit(2)
	}
}

// wantSocket is a socket a helper holds and what connections.jsonl must
// say of it. PeerOf names the socket (by Kind) that must be its unix peer.
type wantSocket struct {
	Kind                  string
	Inode                 uint64
	Family, Type, State   string
	Protocol              uint16
	LocalAddr, RemoteAddr string
	LocalPort, RemotePort uint16
	Path                  string
	SkipPath              bool
	PeerOf                string
	Shared                bool // also held by the grandchild
}

// helperReport is what the sockets helper prints.
type helperReport struct {
	PID, Grandchild int
	NetNS           uint64
	Sockets         []wantSocket
	Dir             string // its temporary directory, removed when it ends
	Unbound         uint64 // inode of a socket in no table (with the ping sockets)
}

// helperSockets opens a socket of every family and kind, hands its TCP
// listener to a grandchild too (so that two processes hold it), prints a
// helperReport and holds everything until its stdin closes. It removes
// its temporary directory before it exits, whichever way it does.
func helperSockets() {
	var dir string
	cleanup := func() {
		if dir != "" {
			os.RemoveAll(dir)
		}
	}
	die := func(what string, err error) {
		fmt.Fprintf(os.Stderr, "sockets helper: %s: %v\n", what, err)
		cleanup()
		os.Exit(1)
	}
	var rep helperReport
	rep.PID = os.Getpid()
	if t, err := os.Readlink("/proc/self/ns/net"); err == nil {
		rep.NetNS, _ = nsInode([]byte(t))
	}
	inode := func(c syscall.Conn) uint64 {
		rc, err := c.SyscallConn()
		if err != nil {
			die("syscall conn", err)
		}
		var st unix.Stat_t
		rc.Control(func(fd uintptr) { unix.Fstat(int(fd), &st) })
		return st.Ino
	}
	fdInode := func(fd int) uint64 {
		var st unix.Stat_t
		if err := unix.Fstat(fd, &st); err != nil {
			die("fstat", err)
		}
		return st.Ino
	}
	port := func(a net.Addr) uint16 {
		switch a := a.(type) {
		case *net.TCPAddr:
			return uint16(a.Port)
		case *net.UDPAddr:
			return uint16(a.Port)
		}
		return 0
	}
	add := func(s wantSocket) { rep.Sockets = append(rep.Sockets, s) }

	var keep []any
	var lnFile *os.File
	for _, v := range []struct{ net, host, fam, any string }{{"tcp4", "127.0.0.1", "inet", "0.0.0.0"}, {"tcp6", "::1", "inet6", "::"}} {
		ln, err := net.Listen(v.net, net.JoinHostPort(v.host, "0"))
		if err != nil {
			die("listen "+v.net, err)
		}
		acc := make(chan net.Conn, 1)
		go func() {
			c, err := ln.Accept()
			if err != nil {
				die("accept", err)
			}
			acc <- c
		}()
		c, err := net.Dial(v.net, ln.Addr().String())
		if err != nil {
			die("dial "+v.net, err)
		}
		s := <-acc
		lp, cp := port(ln.Addr()), port(c.LocalAddr())
		add(wantSocket{Kind: v.net + "-listen", Inode: inode(ln.(*net.TCPListener)), Family: v.fam, Type: "tcp", State: "LISTEN",
			LocalAddr: v.host, LocalPort: lp, RemoteAddr: v.any, Shared: v.net == "tcp4"})
		add(wantSocket{Kind: v.net + "-client", Inode: inode(c.(*net.TCPConn)), Family: v.fam, Type: "tcp", State: "ESTABLISHED",
			LocalAddr: v.host, LocalPort: cp, RemoteAddr: v.host, RemotePort: lp})
		add(wantSocket{Kind: v.net + "-server", Inode: inode(s.(*net.TCPConn)), Family: v.fam, Type: "tcp", State: "ESTABLISHED",
			LocalAddr: v.host, LocalPort: lp, RemoteAddr: v.host, RemotePort: cp})
		keep = append(keep, ln, c, s)
		if v.net == "tcp4" {
			if lnFile, err = ln.(*net.TCPListener).File(); err != nil {
				die("listener file", err)
			}
		}
	}
	for _, v := range []struct{ net, host, fam, any string }{{"udp4", "127.0.0.1", "inet", "0.0.0.0"}, {"udp6", "::1", "inet6", "::"}} {
		u, err := net.ListenPacket(v.net, net.JoinHostPort(v.host, "0"))
		if err != nil {
			die("listen "+v.net, err)
		}
		c, err := net.DialUDP(v.net, nil, u.LocalAddr().(*net.UDPAddr))
		if err != nil {
			die("dial "+v.net, err)
		}
		add(wantSocket{Kind: v.net + "-unconnected", Inode: inode(u.(*net.UDPConn)), Family: v.fam, Type: "udp", State: "UNCONN",
			LocalAddr: v.host, LocalPort: port(u.LocalAddr()), RemoteAddr: v.any})
		add(wantSocket{Kind: v.net + "-connected", Inode: inode(c), Family: v.fam, Type: "udp", State: "ESTABLISHED",
			LocalAddr: v.host, LocalPort: port(c.LocalAddr()), RemoteAddr: v.host, RemotePort: port(u.LocalAddr())})
		keep = append(keep, u, c)
	}
	raw4, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_ICMP)
	if err != nil {
		die("raw socket", err)
	}
	add(wantSocket{Kind: "raw4", Inode: fdInode(raw4), Family: "inet", Type: "raw", State: "UNCONN", Protocol: unix.IPPROTO_ICMP, LocalAddr: "0.0.0.0", RemoteAddr: "0.0.0.0"})
	raw6, err := unix.Socket(unix.AF_INET6, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_ICMPV6)
	if err != nil {
		die("raw6 socket", err)
	}
	add(wantSocket{Kind: "raw6", Inode: fdInode(raw6), Family: "inet6", Type: "raw", State: "UNCONN", Protocol: unix.IPPROTO_ICMPV6, LocalAddr: "::", RemoteAddr: "::"})

	dir, err = os.MkdirTemp("", "cordon-snapshot-sockets-")
	if err != nil {
		die("temp dir", err)
	}
	rep.Dir = dir
	streamPath := filepath.Join(dir, "stream socket with spaces")
	uln, err := net.ListenUnix("unix", &net.UnixAddr{Name: streamPath, Net: "unix"})
	if err != nil {
		die("listen unix", err)
	}
	uacc := make(chan *net.UnixConn, 1)
	go func() {
		c, err := uln.AcceptUnix()
		if err != nil {
			die("accept unix", err)
		}
		uacc <- c
	}()
	uc, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: streamPath, Net: "unix"})
	if err != nil {
		die("dial unix", err)
	}
	us := <-uacc
	add(wantSocket{Kind: "unix-listen", Inode: inode(uln), Family: "unix", Type: "stream", State: "LISTEN", Path: streamPath})
	add(wantSocket{Kind: "unix-client", Inode: inode(uc), Family: "unix", Type: "stream", State: "CONNECTED", PeerOf: "unix-server"})
	add(wantSocket{Kind: "unix-server", Inode: inode(us), Family: "unix", Type: "stream", State: "CONNECTED", SkipPath: true, PeerOf: "unix-client"})
	dgramPath := filepath.Join(dir, "dgram")
	ug, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: dgramPath, Net: "unixgram"})
	if err != nil {
		die("listen unixgram", err)
	}
	add(wantSocket{Kind: "unix-dgram", Inode: inode(ug), Family: "unix", Type: "dgram", State: "UNCONNECTED", Path: dgramPath})
	abstract := fmt.Sprintf("@cordon-snapshot-test-%d", os.Getpid())
	ua, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: abstract, Net: "unixgram"})
	if err != nil {
		die("listen abstract", err)
	}
	add(wantSocket{Kind: "unix-abstract", Inode: inode(ua), Family: "unix", Type: "dgram", State: "UNCONNECTED", Path: abstract})
	pair, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		die("socketpair", err)
	}
	add(wantSocket{Kind: "pair-a", Inode: fdInode(pair[0]), Family: "unix", Type: "seqpacket", State: "CONNECTED", PeerOf: "pair-b"})
	add(wantSocket{Kind: "pair-b", Inode: fdInode(pair[1]), Family: "unix", Type: "seqpacket", State: "CONNECTED", PeerOf: "pair-a"})
	if os.Getenv("CORDON_SNAPSHOT_TEST_PACKET") != "" {
		// A packet socket sees every frame of its namespace: only in
		// the test's own namespace.
		pk, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_ALL)))
		if err != nil {
			die("packet socket", err)
		}
		add(wantSocket{Kind: "packet", Inode: fdInode(pk), Family: "packet", Type: "raw", Protocol: unix.ETH_P_ALL})
	}
	if os.Getenv("CORDON_SNAPSHOT_TEST_PING") != "" {
		// Ping sockets need net.ipv4.ping_group_range to hold the
		// group: set only in the test's own namespace.
		for _, v := range []struct {
			kind, fam, host string
			af, proto       int
			sa              unix.Sockaddr
		}{
			{"ping4", "inet", "127.0.0.1", unix.AF_INET, unix.IPPROTO_ICMP, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}},
			{"ping6", "inet6", "::1", unix.AF_INET6, unix.IPPROTO_ICMPV6, &unix.SockaddrInet6{Addr: [16]byte{15: 1}}},
			{"udplite4", "inet", "127.0.0.1", unix.AF_INET, unix.IPPROTO_UDPLITE, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}},
			{"udplite6", "inet6", "::1", unix.AF_INET6, unix.IPPROTO_UDPLITE, &unix.SockaddrInet6{Addr: [16]byte{15: 1}}},
		} {
			fd, err := unix.Socket(v.af, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, v.proto)
			if err != nil {
				die(v.kind+" socket", err)
			}
			if err := unix.Bind(fd, v.sa); err != nil {
				die(v.kind+" bind", err)
			}
			sa, err := unix.Getsockname(fd)
			if err != nil {
				die(v.kind+" getsockname", err)
			}
			var lport int
			switch sa := sa.(type) {
			case *unix.SockaddrInet4:
				lport = sa.Port
			case *unix.SockaddrInet6:
				lport = sa.Port
			}
			w := wantSocket{Kind: v.kind, Inode: fdInode(fd), Family: v.fam, Type: "udplite", State: "UNCONN",
				LocalAddr: v.host, LocalPort: uint16(lport), RemoteAddr: map[string]string{"inet": "0.0.0.0", "inet6": "::"}[v.fam]}
			if v.proto != unix.IPPROTO_UDPLITE {
				w.Type, w.Protocol = "icmp", uint16(v.proto)
			}
			add(w)
		}
		nl, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_ROUTE)
		if err != nil {
			die("netlink socket", err)
		}
		if err := unix.Bind(nl, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
			die("netlink bind", err)
		}
		add(wantSocket{Kind: "netlink-route", Inode: fdInode(nl), Family: "netlink", Type: "route"})
		// A UDP socket never bound is in no table.
		ub, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			die("unbound socket", err)
		}
		rep.Unbound = fdInode(ub)
	}
	keep = append(keep, uln, uc, us, ug, ua)

	// The grandchild holds the IPv4 listener too.
	self, _ := os.Executable()
	gc := exec.Command(self)
	gc.Env = append(os.Environ(), helperEnv+"=hold")
	gc.ExtraFiles = []*os.File{lnFile}
	gcIn, err := gc.StdinPipe()
	if err != nil {
		die("pipe", err)
	}
	if err := gc.Start(); err != nil {
		die("grandchild", err)
	}
	lnFile.Close()
	rep.Grandchild = gc.Process.Pid
	if err := json.NewEncoder(os.Stdout).Encode(rep); err != nil {
		die("report", err)
	}
	io.Copy(io.Discard, os.Stdin)
	gcIn.Close()
	gc.Wait()
	_ = keep
	cleanup()
	os.Exit(0)
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// startSockets runs the sockets helper (cmd from h.Command or exec.Command
// of the test binary) and returns its report; the helper is stopped when
// the test ends.
func startSockets(t *testing.T, cmd *exec.Cmd, env ...string) helperReport {
	t.Helper()
	cmd.Env = append(append(os.Environ(), helperEnv+"=sockets"), env...)
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
		stdin.Close()
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			cmd.Process.Kill()
			<-done
		}
	})
	var rep helperReport
	if err := json.NewDecoder(bufio.NewReader(stdout)).Decode(&rep); err != nil {
		t.Fatalf("sockets helper: %v", err)
	}
	return rep
}

// helperTake takes one snapshot and prints the bundle's size; it writes
// nothing else anywhere.
func helperTake() {
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	signer, _ := ssh.NewSignerFromKey(priv)
	b, err := Take(context.Background(), Request{SnapshotID: "s", HostName: "h", Signer: signer})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Println(len(b.Data))
	os.Exit(0)
}

func newSigner(t testing.TB) ssh.Signer {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	s, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// requireRoot skips t unless it runs as root (CORDON_REQUIRE_NETNS makes
// that a failure, as for the namespace tests).
func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv(labtest.RequireEnv) != "" {
			t.Fatalf("needs root (%s is set)", labtest.RequireEnv)
		}
		t.Skip("needs root: reads every process's /proc and opens raw sockets")
	}
}

// bundleFiles verifies a bundle and returns its entries.
func bundleFiles(t *testing.T, b *evidence.Bundle, signer ssh.Signer) (*evidence.Report, map[string][]byte) {
	t.Helper()
	rep, err := evidence.Verify(bytes.NewReader(b.Data), evidence.VerifyOptions{TrustedKeys: []ssh.PublicKey{signer.PublicKey()}})
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}
	zr, err := gzip.NewReader(bytes.NewReader(b.Data))
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(zr)
	files := map[string][]byte{}
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		data, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		files[h.Name] = data
	}
	return rep, files
}

// decodeJSONL decodes records strictly: a field the type lacks fails.
func decodeJSONL[T any](t *testing.T, data []byte) []T {
	t.Helper()
	var out []T
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	for {
		var v T
		if err := dec.Decode(&v); err == io.EOF {
			return out
		} else if err != nil {
			t.Fatalf("decode %T: %v", v, err)
		}
		out = append(out, v)
	}
}

// taken is a verified snapshot, decoded.
type taken struct {
	m     evidence.Manifest
	files map[string][]byte
	procs []ProcessRecord
	conns []ConnectionRecord
}

func take(t *testing.T, ctx context.Context) *taken {
	t.Helper()
	signer := newSigner(t)
	b, err := Take(ctx, Request{SnapshotID: "test", HostName: "test-host", Signer: signer})
	if err != nil {
		t.Fatal(err)
	}
	rep, files := bundleFiles(t, b, signer)
	return &taken{
		m: rep.Manifest, files: files,
		procs: decodeJSONL[ProcessRecord](t, files["artifacts/processes.jsonl"]),
		conns: decodeJSONL[ConnectionRecord](t, files["artifacts/connections.jsonl"]),
	}
}

func (s *taken) proc(pid int) *ProcessRecord {
	for i := range s.procs {
		if s.procs[i].PID == int32(pid) {
			return &s.procs[i]
		}
	}
	return nil
}

func artifactNamed(m evidence.Manifest, name string) *evidence.Artifact {
	for i := range m.Artifacts {
		if m.Artifacts[i].Name == name {
			return &m.Artifacts[i]
		}
	}
	return nil
}

// TestTake takes a snapshot of this host with a child holding sockets of
// every kind and checks the bundle: manifest, every artifact present in
// order, clock, host, processes and connections with the right PIDs.
func TestTake(t *testing.T) {
	requireRoot(t)
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(t.TempDir(), "cordon-helper-with-a-long-name")
	if err := os.Symlink(self, link); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(link, "sockets", "arg with spaces", "")
	h := startSockets(t, cmd)
	signer := newSigner(t)
	pol := policy.Policy{Controllers: []policy.Endpoint{{Addr: netip.MustParseAddr("198.18.0.1"), Port: 7443}},
		DNS: []netip.Addr{netip.MustParseAddr("198.18.0.53")}, DHCP: true}
	before := time.Now()
	bundle, err := Take(context.Background(), Request{
		SnapshotID: "snap-take", OrderID: "ord-take", Incident: "IR-1", Reason: "test",
		HostName: "test-host", AgentVersion: "test", Signer: signer, Policy: &pol,
		ClockProbe: func(ctx context.Context) (time.Duration, error) { return 1234 * time.Nanosecond, nil },
	})
	took := time.Since(before)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("Take took %v; bundle %s is %d bytes", took, bundle.FileName, len(bundle.Data))
	rep, files := bundleFiles(t, bundle, signer)
	m := rep.Manifest

	// The signed manifest records the policy applied next.
	if m.Policy == nil || m.Policy.Digest() != pol.Digest() {
		t.Errorf("manifest policy = %+v, want %+v", m.Policy, pol)
	}
	id := HostIdentity()
	if m.SnapshotID != "snap-take" || m.Host.Name != "test-host" || m.Host.Hostname != id.Hostname ||
		m.Host.BootID != id.BootID || m.Host.MachineID != id.MachineID {
		t.Errorf("manifest = %+v, identity %+v", m, id)
	}
	if m.StartedAt.Before(before) || m.FinishedAt.Before(m.StartedAt) || m.FinishedAt.After(before.Add(took)) {
		t.Errorf("started %v finished %v do not bracket the call (%v + %v)", m.StartedAt, m.FinishedAt, before, took)
	}
	if m.ClockOffsetNS == nil || *m.ClockOffsetNS != 1234 || m.ClockOffsetError != "" {
		t.Errorf("clock offset = %v %q", m.ClockOffsetNS, m.ClockOffsetError)
	}
	// Every artifact, in order of volatility, each with a source.
	var jsonl []string
	for _, a := range m.Artifacts {
		if strings.HasPrefix(a.Path, evidence.ArtifactsDir) {
			jsonl = append(jsonl, a.Name)
		}
		if a.Source == "" {
			t.Errorf("%s has no source", a.Path)
		}
		if len(a.Errors) > 0 {
			t.Logf("%s recorded errors: %q", a.Path, a.Errors)
		}
		for _, e := range a.Errors {
			if strings.HasPrefix(e, CutShort) {
				t.Errorf("%s cut short without a deadline: %s", a.Path, e)
			}
		}
	}
	want := []string{"clock", "host", "connections", "conntrack", "processes", "open_files", "resources", "routes", "neighbours", "interfaces", "sessions", "modules", "mounts", "firewall"}
	if !slices.Equal(jsonl, want) {
		t.Errorf("artifacts = %q, want %q", jsonl, want)
	}
	for _, f := range []string{"raw/proc/uptime", "raw/proc/sys/kernel/random/boot_id", "raw/etc/passwd",
		fmt.Sprintf("raw/netns/%d/proc/net/tcp", h.NetNS), fmt.Sprintf("raw/netns/%d/proc/net/unix", h.NetNS),
		fmt.Sprintf("raw/netns/%d/proc/net/route", h.NetNS)} {
		if _, ok := files[f]; !ok {
			t.Errorf("bundle lacks %s", f)
		}
	}

	clocks := decodeJSONL[ClockRecord](t, files["artifacts/clock.jsonl"])
	if len(clocks) != 1 || clocks[0].MonotonicNS <= 0 || clocks[0].BoottimeNS < clocks[0].MonotonicNS ||
		clocks[0].SystemTime.Before(before.Add(-time.Second)) || clocks[0].ControllerOffsetNS == nil ||
		!clocks[0].BootTime.Equal(time.Unix(0, clocks[0].SystemTimeUnixNS-clocks[0].BoottimeNS)) {
		t.Errorf("clock = %+v", clocks)
	}
	hosts := decodeJSONL[HostRecord](t, files["artifacts/host.jsonl"])
	if len(hosts) != 1 || hosts[0].Name != "test-host" || hosts[0].Identity != id || id.Kernel == "" || id.BootID == "" ||
		hosts[0].OSRelease["ID"] == "" || hosts[0].UptimeSeconds <= 0 || hosts[0].Architecture == "" {
		t.Errorf("host = %+v", hosts)
	}

	procs := decodeJSONL[ProcessRecord](t, files["artifacts/processes.jsonl"])
	if a := artifactNamed(m, ProcessesArtifact); a == nil || a.Records != int64(len(procs)) || len(procs) < 3 {
		t.Fatalf("processes artifact %+v, %d records", a, len(procs))
	}
	s := &taken{procs: procs}
	child := s.proc(h.PID)
	if child == nil {
		t.Fatalf("child %d not in processes.jsonl", h.PID)
	}
	wantName := filepath.Base(link)[:15]
	if child.PPID != int32(os.Getpid()) || child.Name != wantName || child.Exe != self ||
		!slices.Equal(child.Cmdline, cmd.Args) || child.Error != "" || child.ExeDeleted || child.State == "" ||
		child.Threads < 1 || child.RSSBytes <= 0 || child.FDCount == nil || *child.FDCount < 20 ||
		child.Namespaces.Net != h.NetNS || child.Namespaces.Mnt == 0 || child.Namespaces.User == 0 || child.Cwd == "" || child.Root != "/" {
		t.Errorf("child = %+v\nwant ppid %d, name %q (comm, not argv), exe %q, cmdline %q", child, os.Getpid(), wantName, self, cmd.Args)
	}
	exeBytes, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	if sum := sha256.Sum256(exeBytes); child.ExeSHA256 != hex.EncodeToString(sum[:]) || child.ExeSize != int64(len(exeBytes)) {
		t.Errorf("child exe_sha256 %s size %d, want %x %d (%s)", child.ExeSHA256, child.ExeSize, sum, len(exeBytes), child.ExeError)
	}
	if me := s.proc(os.Getpid()); me == nil || me.ExeSHA256 != child.ExeSHA256 || me.ExeInode != child.ExeInode {
		t.Errorf("the test process, running the same file, has hash %v", me)
	}
	if !slices.Contains(child.EnvNames, helperEnv) || bytes.Contains(files["artifacts/processes.jsonl"], []byte("=sockets")) {
		t.Errorf("child env_names = %q (and the value must not be there)", child.EnvNames)
	}
	u, _ := user.Current()
	if child.UID == nil || *child.UID != uint32(os.Getuid()) || child.EUID == nil || child.GID == nil || child.EGID == nil ||
		(u != nil && child.User != u.Username) {
		t.Errorf("child ids = uid %v euid %v gid %v egid %v user %q", child.UID, child.EUID, child.GID, child.EGID, child.User)
	}
	st, err := time.Parse(time.RFC3339Nano, child.StartTime)
	if err != nil || st.Before(before.Add(-time.Minute)) || st.After(before.Add(2*time.Second)) {
		t.Errorf("child start_time = %q (%v), test started %v", child.StartTime, err, before)
	}
	if init := s.proc(1); init == nil || init.Name == "" || init.PPID != 0 {
		t.Errorf("pid 1 = %+v", init)
	}
	var kthreads int
	for _, p := range procs {
		if p.KernelThread {
			kthreads++
			if p.Error != "" || p.Exe != "" {
				t.Errorf("kernel thread %d: %+v", p.PID, p)
			}
		}
	}
	t.Logf("%d processes, %d kernel threads", len(procs), kthreads)

	files2 := decodeJSONL[OpenFilesRecord](t, files["artifacts/open_files.jsonl"])
	if len(files2) != len(procs) {
		t.Errorf("%d open_files records for %d processes", len(files2), len(procs))
	}
	for _, f := range files2 {
		if f.PID == int32(h.PID) {
			var socks int
			for _, fd := range f.FDs {
				if strings.HasPrefix(fd.Target, "socket:[") {
					socks++
				}
			}
			if f.StartTime != child.StartTime || socks < len(h.Sockets) || int32(len(f.FDs)) != *child.FDCount {
				t.Errorf("child's open files: %d fds, %d sockets (want ≥ %d), start %s", len(f.FDs), socks, len(h.Sockets), f.StartTime)
			}
		}
	}

	conns := decodeJSONL[ConnectionRecord](t, files["artifacts/connections.jsonl"])
	checkSockets(t, conns, h, "")
}

// checkSockets checks that every socket the helper reported is in conns,
// tagged with its namespace, with its holders' PIDs.
func checkSockets(t *testing.T, conns []ConnectionRecord, h helperReport, nsName string) {
	t.Helper()
	byInode := map[uint64]ConnectionRecord{}
	for _, c := range conns {
		if c.Inode != 0 {
			byInode[c.Inode] = c
		}
	}
	kinds := map[string]uint64{}
	for _, w := range h.Sockets {
		kinds[w.Kind] = w.Inode
	}
	for _, w := range h.Sockets {
		c, ok := byInode[w.Inode]
		if !ok {
			t.Errorf("%s (inode %d) not in connections.jsonl", w.Kind, w.Inode)
			continue
		}
		pids := []int32{int32(h.PID)}
		if w.Shared {
			pids = append(pids, int32(h.Grandchild))
			slices.Sort(pids)
		}
		got := fmt.Sprintf("%s/%s %s proto %d %s:%d -> %s:%d netns %d %q pids %v pid %d", c.Family, c.Type, c.State, c.Protocol,
			c.LocalAddr, c.LocalPort, c.RemoteAddr, c.RemotePort, c.NetNS, c.NetNSName, c.PIDs, c.PID)
		want := fmt.Sprintf("%s/%s %s proto %d %s:%d -> %s:%d netns %d %q pids %v pid %d", w.Family, w.Type, w.State, w.Protocol,
			w.LocalAddr, w.LocalPort, w.RemoteAddr, w.RemotePort, h.NetNS, nsName, pids, pids[0])
		if got != want {
			t.Errorf("%s:\n got %s\nwant %s", w.Kind, got, want)
		}
		if !w.SkipPath && c.Path != w.Path {
			t.Errorf("%s: path %q, want %q", w.Kind, c.Path, w.Path)
		}
		if w.PeerOf != "" && c.PeerInode != kinds[w.PeerOf] {
			t.Errorf("%s: peer inode %d, want %d (%s)", w.Kind, c.PeerInode, kinds[w.PeerOf], w.PeerOf)
		}
		if (c.Family == "inet" || c.Family == "inet6" || c.Family == "packet") && (c.UID == nil || *c.UID != uint32(os.Getuid())) {
			t.Errorf("%s: uid %v", w.Kind, c.UID)
		}
	}
}

// TestOtherNetworkNamespace: a child in a network namespace of its own
// holds sockets of every kind; the namespace has a route, a neighbour
// entry and tracked flows. The snapshot, taken from the test's own
// namespace, has them all, tagged with that namespace.
func TestOtherNetworkNamespace(t *testing.T) {
	l := labtest.New(t)
	h := labtest.AddHost(t, l, "snap", "198.18.0.2/24", "fd00:c0de::2/64")
	for _, args := range [][]string{
		{"ip", "route", "add", "198.51.100.0/24", "via", "198.18.0.1"},
		{"ip", "neigh", "add", "198.18.0.9", "lladdr", "02:00:00:00:00:09", "dev", "eth0", "nud", "permanent"},
		// Conntrack runs in a namespace once a rule there needs it.
		{"iptables", "-A", "INPUT", "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED,NEW", "-j", "ACCEPT"},
		{"ip6tables", "-A", "INPUT", "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED,NEW", "-j", "ACCEPT"},
		// Ping sockets for root's group, in this namespace only.
		{"sysctl", "-q", "-w", "net.ipv4.ping_group_range=0 0"},
	} {
		if _, err := h.Output(args[0], args[1:]...); err != nil {
			t.Fatal(err)
		}
	}
	self, _ := os.Executable()
	rep := startSockets(t, h.Command(self), "CORDON_SNAPSHOT_TEST_PACKET=1", "CORDON_SNAPSHOT_TEST_PING=1")
	if rep.NetNS == 0 {
		t.Fatal("helper did not say its namespace")
	}
	s := take(t, context.Background())
	for _, a := range s.m.Artifacts {
		if len(a.Errors) > 0 {
			t.Logf("%s recorded errors: %q", a.Path, a.Errors)
		}
	}
	checkSockets(t, s.conns, rep, h.NS)
	// The socket in no table is counted, its holder named.
	unmatched := regexp.MustCompile(`^(\d+) socket fds \((\d+) sockets\) of (\d+) processes matched no socket table read \(pids \[([0-9 …]*)\]\)`)
	var sawUnmatched bool
	for _, e := range artifactNamed(s.m, ConnectionsArtifact).Errors {
		if m := unmatched.FindStringSubmatch(e); m != nil {
			sawUnmatched = true
			pids := strings.Fields(m[4])
			if !slices.Contains(pids, strconv.Itoa(rep.PID)) && !slices.Contains(pids, "…") {
				t.Errorf("the unbound socket's holder %d is not named: %s", rep.PID, e)
			}
		}
	}
	if !sawUnmatched {
		t.Errorf("no error counts the socket fds that matched no table (the helper holds an unbound UDP socket, inode %d)", rep.Unbound)
	}
	for _, c := range s.conns {
		if c.Inode == rep.Unbound {
			t.Errorf("the unbound socket has a row: %+v", c)
		}
	}
	if p := s.proc(rep.PID); p == nil || p.Namespaces.Net != rep.NetNS {
		t.Errorf("helper process = %+v", p)
	}
	if _, ok := s.files[fmt.Sprintf("raw/netns/%d/proc/net/tcp6", rep.NetNS)]; !ok {
		t.Errorf("no raw tcp6 table of the namespace")
	}

	var tcpPort uint16
	for _, w := range rep.Sockets {
		if w.Kind == "tcp4-listen" {
			tcpPort = w.LocalPort
		}
	}
	var sawFlow bool
	for _, c := range decodeJSONL[ConntrackRecord](t, s.files["artifacts/conntrack.jsonl"]) {
		if c.NetNS == rep.NetNS && c.Protocol == unix.IPPROTO_TCP && c.Original.DstPort == tcpPort && c.Original.Dst == "127.0.0.1" {
			sawFlow = c.TCPState == "ESTABLISHED" && c.NetNSName == h.NS && c.Family == "inet"
			if !sawFlow {
				t.Errorf("tracked flow = %+v", c)
			}
		}
	}
	if !sawFlow {
		t.Errorf("conntrack.jsonl has no entry for the helper's connection to 127.0.0.1:%d in netns %d", tcpPort, rep.NetNS)
	}
	var sawRoute bool
	for _, r := range decodeJSONL[RouteRecord](t, s.files["artifacts/routes.jsonl"]) {
		if r.NetNS == rep.NetNS && r.Dst == "198.51.100.0/24" {
			sawRoute = r.Gateway == "198.18.0.1" && r.Dev == "eth0" && r.Table == unix.RT_TABLE_MAIN && r.Family == "inet"
			if !sawRoute {
				t.Errorf("route = %+v", r)
			}
		}
	}
	if !sawRoute {
		t.Error("routes.jsonl lacks 198.51.100.0/24 via 198.18.0.1 in the namespace")
	}
	var sawNeigh bool
	for _, n := range decodeJSONL[NeighbourRecord](t, s.files["artifacts/neighbours.jsonl"]) {
		if n.NetNS == rep.NetNS && n.IP == "198.18.0.9" {
			sawNeigh = n.LLAddr == "02:00:00:00:00:09" && n.State == "PERMANENT" && n.Dev == "eth0"
			if !sawNeigh {
				t.Errorf("neighbour = %+v", n)
			}
		}
	}
	if !sawNeigh {
		t.Error("neighbours.jsonl lacks 198.18.0.9 in the namespace")
	}
	var sawIf bool
	for _, i := range decodeJSONL[InterfaceRecord](t, s.files["artifacts/interfaces.jsonl"]) {
		if i.NetNS == rep.NetNS && i.Name == "eth0" {
			var addrs []string
			for _, a := range i.Addresses {
				addrs = append(addrs, a.Address)
			}
			sawIf = slices.Contains(addrs, "198.18.0.2/24") && slices.Contains(addrs, "fd00:c0de::2/64") &&
				i.Type == "veth" && slices.Contains(i.Flags, "up") && i.HardwareAddr != "" && i.Stats.TxPackets > 0
			if !sawIf {
				t.Errorf("eth0 = %+v", i)
			}
		}
	}
	if !sawIf {
		t.Error("interfaces.jsonl lacks eth0 of the namespace")
	}

	// The lab's switch namespace has a bridge and no process at all: it
	// is found through its bind mount and read from a thread that joins
	// it.
	sw := strings.TrimSuffix(h.NS, "-snap") + "-sw"
	var swNS uint64
	for _, i := range decodeJSONL[InterfaceRecord](t, s.files["artifacts/interfaces.jsonl"]) {
		if i.NetNSName == sw && i.Name == "br0" {
			swNS = i.NetNS
		}
	}
	if swNS == 0 {
		t.Fatalf("interfaces.jsonl lacks br0 of the process-less namespace %s", sw)
	}
	for _, f := range []string{"unix", "tcp", "route", "dev"} {
		if _, ok := s.files[fmt.Sprintf("raw/netns/%d/proc/net/%s", swNS, f)]; !ok {
			t.Errorf("no raw %s table of the process-less namespace %s", f, sw)
		}
	}
}

// TestArgvAndEnv runs a child with arguments holding spaces, newlines,
// invalid UTF-8 and an empty one, and an environment variable whose name
// is not UTF-8: argv round-trips byte for byte through cmdline and
// cmdline_b64, and no environment value reaches the bundle.
func TestArgvAndEnv(t *testing.T) {
	requireRoot(t)
	self, _ := os.Executable()
	args := []string{self, "with space", "new\nline", "\xff\xfe not UTF-8 \x80", "", "tab\tand \"quote\""}
	secret := "s3cr3t-value-" + strconv.Itoa(os.Getpid())
	cmd := exec.Command(self)
	cmd.Args = args
	cmd.Env = append(os.Environ(), helperEnv+"=hold", "CORDON_\xffODD="+secret, "CORDON_SECRET="+secret)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stdin.Close(); cmd.Wait() })

	s := take(t, context.Background())
	p := s.proc(cmd.Process.Pid)
	if p == nil {
		t.Fatal("child not recorded")
	}
	if len(p.CmdlineB64) != len(p.Cmdline) {
		t.Fatalf("cmdline_b64 = %q for cmdline %q", p.CmdlineB64, p.Cmdline)
	}
	var got []string
	for _, b := range p.CmdlineB64 {
		d, err := base64.StdEncoding.DecodeString(b)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, string(d))
	}
	if !slices.Equal(got, args) {
		t.Errorf("argv from cmdline_b64 = %q, want %q", got, args)
	}
	if p.Cmdline[1] != "with space" || p.Cmdline[2] != "new\nline" || p.Cmdline[4] != "" {
		t.Errorf("cmdline = %q", p.Cmdline)
	}
	i := slices.Index(p.EnvNames, "CORDON_\xffODD")
	if i < 0 && len(p.EnvNamesB64) == len(p.EnvNames) {
		for j, b := range p.EnvNamesB64 {
			if d, _ := base64.StdEncoding.DecodeString(b); string(d) == "CORDON_\xffODD" {
				i = j
			}
		}
	}
	if i < 0 || len(p.EnvNamesB64) != len(p.EnvNames) || !slices.Contains(p.EnvNames, "CORDON_SECRET") {
		t.Errorf("env_names = %q, env_names_b64 = %q", p.EnvNames, p.EnvNamesB64)
	}
	for name, data := range s.files {
		if bytes.Contains(data, []byte(secret)) {
			t.Errorf("%s holds an environment value", name)
		}
	}
	// Processes without odd bytes carry no _b64 fields at all.
	if me := s.proc(os.Getpid()); me == nil || me.CmdlineB64 != nil || me.NameB64 != "" || me.ExeB64 != "" {
		t.Errorf("test process = %+v", me)
	}
}

// copyExecutable copies a binary (sleep) into dir and returns its path.
func copyExecutable(t *testing.T, dir, name string) (string, []byte) {
	t.Helper()
	src, err := exec.LookPath("sleep")
	if err != nil {
		t.Skip("no sleep(1)")
	}
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, b, 0o755); err != nil {
		t.Fatal(err)
	}
	return p, b
}

func startProc(t *testing.T, path string, args ...string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(path, args...)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	// Until the exec is done, /proc/PID/exe is still the test binary.
	for i := 0; i < 200; i++ {
		if l, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", cmd.Process.Pid)); strings.HasPrefix(l, path) {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	return cmd
}

// diskDir returns a directory for the atime test on a disk-backed file
// system that updates access times (relatime or strictatime).
func diskDir(t *testing.T) string {
	t.Helper()
	for _, base := range []string{os.TempDir(), "/var/tmp"} {
		var fs unix.Statfs_t
		if err := unix.Statfs(base, &fs); err != nil {
			continue
		}
		if fs.Type == unix.TMPFS_MAGIC || fs.Type == unix.RAMFS_MAGIC || fs.Flags&unix.ST_NOATIME != 0 {
			continue
		}
		dir, err := os.MkdirTemp(base, "cordon-atime-")
		if err != nil {
			continue
		}
		t.Cleanup(func() { os.RemoveAll(dir) })
		return dir
	}
	t.Skip("no disk-backed directory with access times (not tmpfs, not noatime) among $TMPDIR and /var/tmp")
	return ""
}

func atime(t *testing.T, path string) time.Time {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return time.Unix(st.Atim.Unix())
}

// TestExecutableAtime: hashing an executable leaves its access time as it
// was. The file is on a disk-backed file system that keeps access times,
// its atime is set to days ago after the exec (which reads it), and it
// must not move, while its hash is in the snapshot. Without O_NOATIME the
// same snapshot does move it: that is what the check catches.
func TestExecutableAtime(t *testing.T) {
	requireRoot(t)
	dir := diskDir(t)
	var fs unix.Statfs_t
	unix.Statfs(dir, &fs)
	t.Logf("%s: file system type %#x, relatime %v, strictatime %v", dir, fs.Type, fs.Flags&unix.ST_RELATIME != 0, fs.Flags&unix.ST_RELATIME == 0)
	path, content := copyExecutable(t, dir, "atime-sleep")
	sum := sha256.Sum256(content)
	cmd := startProc(t, path, "60")

	check := func(t *testing.T) (kept bool) {
		old := time.Now().Add(-72 * time.Hour).Truncate(time.Second)
		if err := os.Chtimes(path, old, old.Add(-24*time.Hour)); err != nil {
			t.Fatal(err)
		}
		if a := atime(t, path); !a.Equal(old) {
			t.Fatalf("atime set to %v reads back %v", old, a)
		}
		s := take(t, context.Background())
		p := s.proc(cmd.Process.Pid)
		if p == nil || p.ExeSHA256 != hex.EncodeToString(sum[:]) || p.ExeDeleted {
			t.Fatalf("process = %+v, want sha256 %x", p, sum)
		}
		after := atime(t, path)
		t.Logf("atime before %v, after %v", old, after)
		return after.Equal(old)
	}
	if !check(t) {
		t.Error("the snapshot changed the executable's access time")
	}
	t.Run("without O_NOATIME the check fails", func(t *testing.T) {
		noatime = 0
		defer func() { noatime = unix.O_NOATIME }()
		if check(t) {
			t.Error("reading the executable without O_NOATIME left its atime: the check cannot tell")
		}
	})
}

// TestExitMidScan kills and reaps a process right after the scan read its
// stat: its record keeps what was read and says it exited during the
// scan; the snapshot goes on.
func TestExitMidScan(t *testing.T) {
	requireRoot(t)
	cmd := exec.Command("sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Skip(err)
	}
	pid := cmd.Process.Pid
	var once sync.Once
	hook := func(p int, what string) {
		if p == pid && what == "status" {
			once.Do(func() { cmd.Process.Kill(); cmd.Wait() })
		}
	}
	beforeRead.Store(&hook)
	defer beforeRead.Store(nil)
	s := take(t, context.Background())
	p := s.proc(pid)
	if p == nil || !strings.HasPrefix(p.Error, "exited during the scan") || p.Name != "sleep" || p.StartTime == "" {
		t.Errorf("record = %+v", p)
	} else {
		t.Log(p.Error)
	}
}

// TestPIDReuse reads a process as if its PID had been listed before it
// started: the record says the PID was reused during the scan.
func TestPIDReuse(t *testing.T) {
	requireRoot(t)
	cmd := exec.Command("sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Skip(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	c := &collection{ctx: context.Background(), bootEpoch: time.Now()}
	p := &procScan{c: c, fs: newFSTypes(), exes: newExeJobs(), listedTicks: 0}
	s := &scanner{p: p}
	s.process(cmd.Process.Pid, nil)
	recs := decodeJSONL[ProcessRecord](t, s.one.procs)
	if len(recs) != 1 || !strings.HasPrefix(recs[0].Error, "pid reused during the scan") || recs[0].Name != "sleep" {
		t.Errorf("record = %+v", recs)
	}
	// Read normally (listed just now), the same process has no error.
	now, _ := clockNS(unix.CLOCK_BOOTTIME)
	p.listedTicks = uint64(now / (1e9 / userHZ))
	s.process(cmd.Process.Pid, nil)
	if recs := decodeJSONL[ProcessRecord](t, s.one.procs); len(recs) != 1 || recs[0].Error != "" {
		t.Errorf("record = %+v", recs)
	}
}

// TestTakeWithProcessChurn runs Take while processes start and exit as fast
// as they can: Take must not fail, and the bundle must verify.
func TestTakeWithProcessChurn(t *testing.T) {
	requireRoot(t)
	truePath, err := exec.LookPath("true")
	if err != nil {
		t.Skip("no true(1)")
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var started [2]int
	for i := range started {
		wg.Go(func() {
			for ctx.Err() == nil {
				if err := exec.Command(truePath).Run(); err == nil {
					started[i]++
				}
			}
		})
	}
	t.Cleanup(func() { cancel(); wg.Wait() })
	for range 3 {
		s := take(t, context.Background())
		exited := 0
		for _, p := range s.procs {
			if strings.HasPrefix(p.Error, "exited during the scan") || strings.HasPrefix(p.Error, "pid reused during the scan") {
				exited++
			} else if p.Error != "" && !strings.Contains(p.Error, "permission denied") {
				// Permission denied: a process even root may not
				// inspect (ptrace access mode, LSM), such as a
				// sandbox's init; anything else is a bug.
				t.Errorf("process %d: unexpected error %q", p.PID, p.Error)
			}
		}
		t.Logf("%d processes, %d recorded as exited during the scan", len(s.procs), exited)
	}
	cancel()
	wg.Wait()
	t.Logf("%d short-lived processes ran", started[0]+started[1])
}

// TestPartialEvidence: when the context ends, Take returns what it has, in
// a valid bundle whose manifest marks what was cut short.
func TestPartialEvidence(t *testing.T) {
	requireRoot(t)
	signer := newSigner(t)
	cutShort := func(m evidence.Manifest) map[string]string {
		out := map[string]string{}
		for _, a := range m.Artifacts {
			for _, e := range a.Errors {
				if strings.HasPrefix(e, CutShort) {
					out[a.Name] = e
				}
			}
		}
		return out
	}
	t.Run("deadline already past", func(t *testing.T) {
		ctx, cancel := context.WithDeadline(context.Background(), time.Now().Add(-time.Second))
		defer cancel()
		start := time.Now()
		b, err := Take(ctx, Request{SnapshotID: "late", HostName: "h", Signer: signer})
		if err != nil {
			t.Fatal(err)
		}
		if took := time.Since(start); took > WrapUpGrace+2*time.Second {
			t.Errorf("Take took %v", took)
		}
		rep, files := bundleFiles(t, b, signer)
		cut := cutShort(rep.Manifest)
		for _, name := range []string{ConnectionsArtifact, ProcessesArtifact, OpenFilesArtifact, RoutesArtifact, FirewallArtifact} {
			if !strings.Contains(cut[name], "deadline exceeded") {
				t.Errorf("%s not marked cut short: %q", name, cut[name])
			}
		}
		if _, ok := cut[ClockArtifact]; ok {
			t.Error("the clock was cut short")
		}
		if hosts := decodeJSONL[HostRecord](t, files["artifacts/host.jsonl"]); len(hosts) != 1 || hosts[0].BootID == "" {
			t.Errorf("host = %+v", hosts)
		}
		t.Logf("cut short: %q", cut)
	})
	t.Run("deadline during the process scan", func(t *testing.T) {
		// One read of the scan lasts past the point where collectors
		// are told to stop, but ends before the deadline: the scan
		// stops and says how far it got.
		deadline := time.Now().Add(time.Second)
		var once sync.Once
		var n atomic.Int64
		hook := func(_ int, what string) {
			if what == "status" && n.Add(1) == 10 {
				once.Do(func() { time.Sleep(time.Until(deadline.Add(-WrapUpGrace / 2))) })
			}
		}
		beforeRead.Store(&hook)
		defer beforeRead.Store(nil)
		ctx, cancel := context.WithDeadline(context.Background(), deadline)
		defer cancel()
		b, err := Take(ctx, Request{SnapshotID: "short", HostName: "h", Signer: signer})
		if err != nil {
			t.Fatal(err)
		}
		if late := time.Since(deadline); late > 200*time.Millisecond {
			t.Errorf("Take returned %v after the deadline", late)
		}
		rep, files := bundleFiles(t, b, signer)
		cut := cutShort(rep.Manifest)
		if c, ok := cut[ProcessesArtifact]; ok && !regexp.MustCompile(`^cut short: context deadline exceeded: \d+ of \d+ processes read$`).MatchString(c) {
			t.Errorf("processes: %q", c)
		}
		procs := decodeJSONL[ProcessRecord](t, files["artifacts/processes.jsonl"])
		if len(procs) < 10 {
			t.Errorf("%d processes kept, want the ones read before the deadline", len(procs))
		}
		// The process whose read lasted past the stop is recorded as
		// not read, with what was read before.
		var late int
		for _, p := range procs {
			if strings.HasPrefix(p.Error, "not read: /proc/") && strings.Contains(p.Error, "/status did not answer before the snapshot's time ran out") {
				late++
				if p.Name == "" || p.StartTime == "" {
					t.Errorf("late process = %+v", p)
				}
			}
		}
		if late != 1 {
			t.Errorf("%d processes recorded as not read at the deadline, want 1", late)
		}
		if len(decodeJSONL[ConnectionRecord](t, files["artifacts/connections.jsonl"])) == 0 {
			t.Error("the sockets read before the deadline were not kept")
		}
		t.Logf("%d processes kept; cut short: %q", len(procs), cut)
	})
	// A read that never returns: see TestStuckProcess and
	// TestStuckFileSystem.
}

func TestClockProbe(t *testing.T) {
	signer := newSigner(t)
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	tests := []struct {
		name  string
		probe func(context.Context) (time.Duration, error)
		want  string // ClockOffsetError; "" for a measured offset
	}{
		{"none", nil, "no clock probe configured"},
		{"negative", func(context.Context) (time.Duration, error) { return -3 * time.Second, nil }, ""},
		{"fails", func(context.Context) (time.Duration, error) { return 0, errors.New("controller unreachable") }, "clock probe: controller unreachable"},
		{"respects its deadline", func(ctx context.Context) (time.Duration, error) {
			<-ctx.Done()
			return 0, ctx.Err()
		}, "clock probe: context deadline exceeded"},
		{"ignores its deadline", func(context.Context) (time.Duration, error) {
			<-release
			return 0, nil
		}, "clock probe did not return within 500ms"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			start := time.Now()
			b, err := Take(context.Background(), Request{SnapshotID: "clock", HostName: "h", Signer: signer, ClockProbe: tc.probe})
			took := time.Since(start)
			if err != nil {
				t.Fatal(err)
			}
			if took > ClockProbeBudget+probeGrace+5*time.Second {
				t.Errorf("Take took %v", took)
			}
			m := b.Manifest
			if m.ClockOffsetError != tc.want {
				t.Errorf("clock_offset_error = %q, want %q", m.ClockOffsetError, tc.want)
			}
			if (tc.want == "") != (m.ClockOffsetNS != nil) {
				t.Errorf("clock_offset_ns = %v with error %q", m.ClockOffsetNS, m.ClockOffsetError)
			}
		})
	}
}

func TestTakeNoSigner(t *testing.T) {
	if _, err := Take(context.Background(), Request{}); err == nil {
		t.Error("Take without a signer succeeded")
	}
}

// writeSyscall matches strace lines of calls that open a file for writing
// or change the file system.
var writeSyscall = regexp.MustCompile(`(O_WRONLY|O_RDWR|O_CREAT|O_TRUNC)|\b(creat|mkdir|mkdirat|unlink|unlinkat|rename|renameat2?|link|linkat|symlink|symlinkat|truncate|ftruncate|chmod|fchmodat|chown|fchownat|utimensat|mknod|mknodat)\(`)

// TestNoDiskWrites runs Take in a child under strace (following the
// firewall commands it runs too) and checks that no system call opened a
// file for writing or changed the file system.
func TestNoDiskWrites(t *testing.T) {
	straceBin, err := exec.LookPath("strace")
	if err != nil {
		t.Skip("strace not installed")
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	trace := filepath.Join(t.TempDir(), "trace")
	cmd := exec.Command(straceBin, "-f", "-qq", "-o", trace,
		"-e", "trace=%file,ftruncate,fallocate,fchmod,fchown",
		self)
	cmd.Env = append(os.Environ(), helperEnv+"=take")
	out, err := cmd.CombinedOutput()
	if err != nil {
		if strings.Contains(string(out), "ptrace") {
			t.Skipf("strace cannot trace here: %s", out)
		}
		t.Fatalf("take under strace: %v\n%s", err, out)
	}
	b, err := os.ReadFile(trace)
	if err != nil {
		t.Fatal(err)
	}
	var opens, noatime, bad int
	for line := range strings.SplitSeq(string(b), "\n") {
		if strings.Contains(line, "open") {
			opens++
			if strings.Contains(line, "O_NOATIME") {
				noatime++
			}
		}
		if writeSyscall.MatchString(line) {
			bad++
			t.Errorf("write to the file system: %s", line)
		}
	}
	if opens < 100 {
		t.Fatalf("strace saw only %d opens: is it tracing?\n%s", opens, b)
	}
	if os.Geteuid() == 0 && noatime < opens/2 {
		t.Errorf("only %d of %d opens use O_NOATIME", noatime, opens)
	}
	t.Logf("%d file opens (%d with O_NOATIME), none for writing; bundle size %s", opens, noatime, strings.TrimSpace(string(out)))
}

func BenchmarkTake(b *testing.B) {
	signer := newSigner(b)
	var size int
	for b.Loop() {
		bundle, err := Take(context.Background(), Request{SnapshotID: "bench", HostName: "h", Signer: signer})
		if err != nil {
			b.Fatal(err)
		}
		size = len(bundle.Data)
	}
	b.ReportMetric(float64(size), "bundle-bytes")
}

func TestParseCmdline(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want []string
	}{
		{"", []string{}},
		{"sleep\x0060\x00", []string{"sleep", "60"}},
		{"a\x00\x00b\x00\x00", []string{"a", "", "b", ""}},
		{"nginx: worker process", []string{"nginx: worker process"}},
	} {
		if got := parseCmdline([]byte(tc.in)); !slices.Equal(got, tc.want) {
			t.Errorf("parseCmdline(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
	names, b64 := splitNUL([]byte("PATH=/bin\x00\xffX=1\x00NOEQUALS\x00\x00"), true)
	if !slices.Equal(names, []string{"PATH", "\xffX", "NOEQUALS"}) || len(b64) != 3 || b64[1] != base64.StdEncoding.EncodeToString([]byte("\xffX")) {
		t.Errorf("env names = %q %q", names, b64)
	}
}

func TestParseStat(t *testing.T) {
	st, err := parseStat([]byte("4242 (evil) (x 1) S 17 4242 4243 34816 -1 4194560 97 0 0 0 0 0 0 0 20 0 3 0 123456 4321 5 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0\n"))
	if err != nil || string(st.comm) != "evil) (x 1" || st.ppid != 17 || st.startTicks != 123456 || st.state != 'S' ||
		st.pgrp != 4242 || st.sid != 4243 || st.ttyNr != 34816 || st.threads != 3 || st.rssPages != 5 || st.flags != 4194560 {
		t.Errorf("parseStat = %+v, %v", st, err)
	}
	for _, bad := range []string{"", "1 (x S 1", "1 (x) S", "1 (x) S y 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 5 1 1"} {
		if _, err := parseStat([]byte(bad)); err == nil {
			t.Errorf("parseStat(%q) succeeded", bad)
		}
	}
}

func TestProcNetAddr(t *testing.T) {
	for _, tc := range []struct {
		in   string
		addr string
		port uint16
	}{
		{"0100007F:0016", "127.0.0.1", 22},
		{"00000000:0000", "0.0.0.0", 0},
		{"00000000000000000000000001000000:1F90", "::1", 8080},
		{"0000000000000000FFFF00000100007F:0035", "127.0.0.1", 53},
		{"B80D0120000000000000000001000000:01BB", "2001:db8::1", 443},
	} {
		addr, port, err := procNetAddr(tc.in)
		if err != nil || addr != tc.addr || port != tc.port {
			t.Errorf("procNetAddr(%q) = %q, %d, %v; want %q, %d", tc.in, addr, port, err, tc.addr, tc.port)
		}
	}
	for _, bad := range []string{"", "0100007F", "0100007F:ZZ", "01007F:0016", "0100007F:10000"} {
		if _, _, err := procNetAddr(bad); err == nil {
			t.Errorf("procNetAddr(%q) succeeded", bad)
		}
	}
}

func TestParseSockTables(t *testing.T) {
	tcp := `  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:0CEA 00000000:0000 0A 00000000:00000003 00:00000000 00000000     0        0 44444 1 0000000000000000 100 0 0 10 0
   1: 0100007F:A2C4 0100007F:0CEA 01 0000000A:00000000 00:00000000 00000000  1000        0 55555 1 0000000000000000 20 4 30 10 -1
   2: garbage
   3: 0100007F:A2C5 0100007F:0CEA 0D 00000000:00000000 00:00000000 00000000    33        0 0 1 0000000000000000 20 4 30 10 -1
`
	rows, bad := parseSockTable([]byte(tcp), sockTable{file: "tcp", family: famInet, typ: "tcp"}, nil)
	if bad != 1 || len(rows) != 3 {
		t.Fatalf("rows %+v, bad %d", rows, bad)
	}
	got := func(r sockRow) string {
		return fmt.Sprintf("%s/%s %s:%d -> %s:%d %s uid %d inode %d q %d/%d proto %d path %q", famNames[r.family], r.typ, r.local, r.lport, r.remote, r.rport, r.stateName(), r.uid, r.inode, r.txq, r.rxq, r.proto, r.path)
	}
	for i, want := range []string{
		"inet/tcp 127.0.0.1:3306 -> 0.0.0.0:0 LISTEN uid 0 inode 44444 q 0/3 proto 0 path \"\"",
		"inet/tcp 127.0.0.1:41668 -> 127.0.0.1:3306 ESTABLISHED uid 1000 inode 55555 q 10/0 proto 0 path \"\"",
		"inet/tcp 127.0.0.1:41669 -> 127.0.0.1:3306 UNKNOWN_13 uid 33 inode 0 q 0/0 proto 0 path \"\"",
	} {
		if g := got(rows[i]); g != want {
			t.Errorf("row %d = %s\nwant %s", i, g, want)
		}
	}
	udp := "header\n   0: 00000000:0044 00000000:0000 07 00000000:00000000 00:00000000 00000000   101        0 1 2 0000000000000000 0\n" +
		"   1: 0100007F:0044 0100007F:0035 01 00000000:00000000 00:00000000 00000000   101        0 2 2 0000000000000000 0\n"
	if rows, bad := parseSockTable([]byte(udp), sockTable{file: "udp", family: famInet, typ: "udp"}, nil); bad != 0 || len(rows) != 2 ||
		rows[0].stateName() != "UNCONN" || rows[1].stateName() != "ESTABLISHED" || rows[0].lport != 68 {
		t.Errorf("udp = %+v", rows)
	}
	raw := "header\n   0: 00000000:0001 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 77 2 0000000000000000 0\n"
	if rows, _ := parseSockTable([]byte(raw), sockTable{file: "raw", family: famInet, typ: "raw"}, nil); len(rows) != 1 || rows[0].proto != 1 || rows[0].lport != 0 {
		t.Errorf("raw = %+v", rows)
	}
	unixTable := "Num       RefCount Protocol Flags    Type St Inode Path\n" +
		"0000000000000000: 00000002 00000000 00010000 0001 01  1057 /run/a socket with spaces\n" +
		"0000000000000000: 00000003 00000000 00000000 0001 03  1058\n" +
		"0000000000000000: 00000002 00000000 00000000 0002 01  1059 @abstract\n" +
		"0000000000000000: 00000002 00000000 00000000 0005 03  1060\n" +
		// Not as the kernel prints: skipped.
		"0000000000000000: 00000002 00000000 00000000 0005 03 1061\n" +
		"0000000000000000: 2 0 0 5 3  1062\n" +
		"0000000000000000: 00000002 00000000 00000000 0005 03  1063 \n" +
		"0000000000000000: 00000002 00000000 00000000 0005 03  10x4\n" +
		"0000000000000000: 00000002 00000000 00000000 0005 03  123456\n" +
		"garbage\n"
	rows, bad = parseSockTable([]byte(unixTable), sockTable{file: "unix", family: famUnix}, nil)
	if bad != 6 || len(rows) != 4 {
		t.Fatalf("unix = %+v, %d bad", rows, bad)
	}
	for i, want := range []string{
		"unix/stream invalid IP:0 -> invalid IP:0 LISTEN uid 0 inode 1057 q 0/0 proto 0 path \"/run/a socket with spaces\"",
		"unix/stream invalid IP:0 -> invalid IP:0 CONNECTED uid 0 inode 1058 q 0/0 proto 0 path \"\"",
		"unix/dgram invalid IP:0 -> invalid IP:0 UNCONNECTED uid 0 inode 1059 q 0/0 proto 0 path \"@abstract\"",
		"unix/seqpacket invalid IP:0 -> invalid IP:0 CONNECTED uid 0 inode 1060 q 0/0 proto 0 path \"\"",
	} {
		if g := got(rows[i]); g != want {
			t.Errorf("unix row %d = %s\nwant %s", i, g, want)
		}
	}
	packet := "sk               RefCnt Type Proto  Iface R Rmem   User   Inode\n" +
		"00000000c0ffee00 3      3    0003   2     1 0      0      9999\n"
	if rows, bad := parseSockTable([]byte(packet), sockTable{file: "packet", family: famPacket}, nil); bad != 0 || len(rows) != 1 ||
		rows[0].typ != "raw" || rows[0].proto != 3 || rows[0].ifindex != 2 || rows[0].inode != 9999 {
		t.Errorf("packet = %+v", rows)
	}
}

func TestParseIDNames(t *testing.T) {
	u := parseIDNames([]byte("root:x:0:0:root:/root:/bin/bash\n#c:x:5:5::/:/bin/sh\nbad\ntoor:x:0:0::/:/bin/sh\nwww-data:x:33:33::/var/www:/usr/sbin/nologin\n"))
	if len(u) != 2 || u[0] != "root" || u[33] != "www-data" {
		t.Errorf("passwd = %v", u)
	}
	g := parseIDNames([]byte("root:x:0:\nadm:x:4:syslog,alice\n"))
	if len(g) != 2 || g[4] != "adm" {
		t.Errorf("group = %v", g)
	}
}

func TestParseUtmp(t *testing.T) {
	rec := make([]byte, utmpSize)
	put16 := func(off int, v uint16) { rec[off], rec[off+1] = byte(v), byte(v>>8) }
	put32 := func(off int, v uint32) {
		for i := range 4 {
			rec[off+i] = byte(v >> (8 * i))
		}
	}
	put16(0, 7) // USER_PROCESS
	put32(4, 4242)
	copy(rec[8:], "pts/3")
	copy(rec[40:], "ts/3")
	copy(rec[44:], "mallory\xff")
	copy(rec[76:], "203.0.113.9")
	put32(336, 99)
	put32(340, 1_800_000_000)
	put32(344, 250_000)
	copy(rec[348:], []byte{203, 0, 113, 9})
	r, ok := parseUtmp(rec)
	if !ok || r.Type != "USER_PROCESS" || r.PID != 4242 || r.Line != "pts/3" || r.ID != "ts/3" || r.User != "mallory\xff" ||
		r.UserB64 != base64.StdEncoding.EncodeToString([]byte("mallory\xff")) || r.Host != "203.0.113.9" || r.Addr != "203.0.113.9" ||
		r.Session != 99 || r.Time != "2027-01-15T08:00:00.25Z" {
		t.Errorf("parseUtmp = %+v", r)
	}
	if _, ok := parseUtmp(make([]byte, utmpSize)); ok {
		t.Error("an EMPTY record was kept")
	}

	// The tail of a wtmp file, read with O_NOATIME.
	path := filepath.Join(t.TempDir(), "wtmp")
	var f []byte
	for range 5 {
		f = append(f, rec...)
	}
	if err := os.WriteFile(path, f, 0o600); err != nil {
		t.Fatal(err)
	}
	data, skipped, err := readUtmpTail(path, 3)
	if err != nil || skipped != 2 || len(data) != 3*utmpSize {
		t.Errorf("readUtmpTail = %d bytes, %d skipped, %v", len(data), skipped, err)
	}
	if _, _, err := readUtmpTail(filepath.Join(t.TempDir(), "missing"), 3); err == nil || !strings.Contains(err.Error(), "missing") {
		t.Errorf("missing file: %v", err)
	}
}

func TestParseMountinfo(t *testing.T) {
	m, ok := parseMountinfoLine([]byte(`36 35 98:0 /mnt1 /mnt/with\040space rw,noatime master:1 shared:2 - ext3 /dev/root rw,errors=continue`))
	if !ok || m.MountID != 36 || m.ParentID != 35 || m.Device != "98:0" || m.Root != "/mnt1" || m.MountPoint != "/mnt/with space" ||
		m.Options != "rw,noatime" || !slices.Equal(m.Optional, []string{"master:1", "shared:2"}) || m.FSType != "ext3" ||
		m.Source != "/dev/root" || m.SuperOptions != "rw,errors=continue" {
		t.Errorf("parseMountinfoLine = %+v", m)
	}
	if _, ok := parseMountinfoLine([]byte("1 2 3")); ok {
		t.Error("a short line parsed")
	}
}

func TestParseOSRelease(t *testing.T) {
	m := parseOSRelease([]byte("# comment\nNAME=\"Debian GNU/Linux\"\nID=debian\nVERSION_ID='12'\nQ=\"a \\\"b\\\"\"\n"))
	if m["NAME"] != "Debian GNU/Linux" || m["ID"] != "debian" || m["VERSION_ID"] != "12" || m["Q"] != `a "b"` {
		t.Errorf("parseOSRelease = %q", m)
	}
}

// TestFastJSONRealRecords re-encodes every process, open files and
// connection record of a real snapshot both ways: the hand-written
// encoders match encoding/json.
func TestFastJSONRealRecords(t *testing.T) {
	requireRoot(t)
	s := take(t, context.Background())
	check := func(name string, decode func([]byte) any) {
		n := 0
		for line := range bytes.SplitSeq(bytes.TrimSuffix(s.files["artifacts/"+name+".jsonl"], []byte("\n")), []byte("\n")) {
			v := decode(line)
			if fast, slow := appendJSON(nil, v), appendReflect(nil, v); !bytes.Equal(fast, slow) {
				t.Errorf("%s:\nfast %s\nslow %s", name, fast, slow)
			}
			n++
		}
		t.Logf("%s: %d records", name, n)
	}
	check("processes", func(b []byte) any { var r ProcessRecord; json.Unmarshal(b, &r); return &r })
	check("open_files", func(b []byte) any { var r OpenFilesRecord; json.Unmarshal(b, &r); return &r })
	check("connections", func(b []byte) any { var r ConnectionRecord; json.Unmarshal(b, &r); return &r })
}

func TestParseModules(t *testing.T) {
	recs, bad := parseModules([]byte("nf_conntrack 172032 5 xt_conntrack,nf_nat, Live 0xffffffffc0a1b000\n" +
		"evil 16384 0 - Live 0x0000000000000000 (OE)\n" +
		"short line\n"))
	if len(bad) != 1 || len(recs) != 2 {
		t.Fatalf("records %+v, bad %q", recs, bad)
	}
	if r := recs[0]; r.Name != "nf_conntrack" || r.SizeBytes != 172032 || r.RefCount != 5 ||
		!slices.Equal(r.UsedBy, []string{"xt_conntrack", "nf_nat"}) || r.State != "Live" || r.Address != "0xffffffffc0a1b000" || r.Taints != "" {
		t.Errorf("record 0 = %+v", r)
	}
	if r := recs[1]; r.Name != "evil" || len(r.UsedBy) != 0 || r.UsedBy == nil || r.Taints != "OE" {
		t.Errorf("record 1 = %+v", r)
	}
}

func TestParseLogindSession(t *testing.T) {
	r := parseLogindSession([]byte("# comment\nUID=1000\nUSER=alice\nACTIVE=1\nSTATE=active\nREMOTE=1\nTYPE=tty\nCLASS=user\n" +
		"SERVICE=sshd\nREMOTE_HOST=203.0.113.9\nLEADER=4242\nTTY=pts/1\nREALTIME=1800000000250000\n"))
	if r.Type != "LOGIND_SESSION" || r.UID == nil || *r.UID != 1000 || r.User != "alice" || r.State != "active" || r.Class != "user" ||
		r.Service != "sshd" || r.Host != "203.0.113.9" || r.PID != 4242 || r.Line != "pts/1" || r.Time != "2027-01-15T08:00:00.25Z" {
		t.Errorf("parseLogindSession = %+v", r)
	}
}

func TestCloudFromDMI(t *testing.T) {
	for _, tc := range []struct {
		dmi                  map[string]string
		provider, id, source string
	}{
		{map[string]string{"sys_vendor": "Amazon EC2", "board_asset_tag": "i-0123456789abcdef0"}, "aws", "i-0123456789abcdef0", "/sys/class/dmi/id/board_asset_tag"},
		{map[string]string{"sys_vendor": "Xen", "product_uuid": "EC2E1916-9099-7CAF-FD21-012345678901"}, "aws", "", ""},
		{map[string]string{"sys_vendor": "Microsoft Corporation", "chassis_asset_tag": "7783-7084-3265-9085-8269-3286-77", "product_uuid": "ABCD-1"}, "azure", "abcd-1", "/sys/class/dmi/id/product_uuid"},
		{map[string]string{"sys_vendor": "Microsoft Corporation", "chassis_asset_tag": "x"}, "", "", ""},
		{map[string]string{"product_name": "Google Compute Engine"}, "gcp", "", ""},
		{map[string]string{}, "", "", ""},
	} {
		p, id, src := cloudFromDMI(tc.dmi)
		if p != tc.provider || id != tc.id || src != tc.source {
			t.Errorf("cloudFromDMI(%v) = %q %q %q", tc.dmi, p, id, src)
		}
	}
}

func TestReadShortAt(t *testing.T) {
	// A file larger than the first read: the rest is read too.
	path := filepath.Join(t.TempDir(), "big")
	want := bytes.Repeat([]byte("0123456789"), 20000)
	if err := os.WriteFile(path, want, 0o600); err != nil {
		t.Fatal(err)
	}
	got, err := readShortAt(unix.AT_FDCWD, path, nil, 1<<20)
	if err != nil || !bytes.Equal(got, want) {
		t.Errorf("readShortAt: %d bytes, %v", len(got), err)
	}
	if _, err := readShortAt(unix.AT_FDCWD, path, nil, 1000); err == nil {
		t.Error("a file over the limit was read")
	}
	if b, err := readShortAt(unix.AT_FDCWD, "/proc/self/stat", nil, 1<<16); err != nil || !bytes.HasPrefix(b, []byte(strconv.Itoa(os.Getpid())+" (")) {
		t.Errorf("/proc/self/stat: %q, %v", b, err)
	}
}

// TestWouldLoadModule: the firewall commands the snapshot runs are left
// out when they would make the kernel load a module.
func TestWouldLoadModule(t *testing.T) {
	if why := wouldLoadModule("nft", false, "the nf_tables module is not loaded", "legacy"); !strings.Contains(why, "nf_tables") {
		t.Errorf("nft without nf_tables: %q", why)
	}
	if why := wouldLoadModule("iptables-save", false, "the nf_tables module is not loaded", "nf_tables"); !strings.Contains(why, "iptables-nft") {
		t.Errorf("iptables-nft without nf_tables: %q", why)
	}
	for _, cmd := range []string{"nft", "iptables-save", "ip6tables-save"} {
		if why := wouldLoadModule(cmd, true, "", "nf_tables"); why != "" {
			t.Errorf("%s with nf_tables: %q", cmd, why)
		}
	}
}
