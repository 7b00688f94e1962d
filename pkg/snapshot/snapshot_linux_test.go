package snapshot

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cordon-ir/cordon/pkg/evidence"
	"github.com/shirou/gopsutil/v4/process"
	"golang.org/x/crypto/ssh"
)

// helperEnv selects a helper mode when the test binary is run as a child.
const helperEnv = "CORDON_SNAPSHOT_TEST_HELPER"

func TestMain(m *testing.M) {
	switch os.Getenv(helperEnv) {
	case "":
		os.Exit(m.Run())
	case "listen":
		helperListen()
	case "take":
		helperTake()
	default:
		fmt.Fprintln(os.Stderr, "unknown helper mode")
		os.Exit(2)
	}
}

// helperListen listens on 127.0.0.1, connects to itself, prints both ports
// and holds everything open until its stdin closes.
func helperListen() {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		accepted <- c
	}()
	c, err := net.Dial("tcp4", ln.Addr().String())
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	s := <-accepted
	udp, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	tcp6Port := 0 // no IPv6 loopback here
	if ln6, err := net.Listen("tcp6", "[::1]:0"); err == nil {
		tcp6Port = ln6.Addr().(*net.TCPAddr).Port
		defer ln6.Close()
	}
	fmt.Printf("%d %d %d %d\n", ln.Addr().(*net.TCPAddr).Port, c.LocalAddr().(*net.TCPAddr).Port,
		udp.LocalAddr().(*net.UDPAddr).Port, tcp6Port)
	io.Copy(io.Discard, os.Stdin)
	udp.Close()
	c.Close()
	s.Close()
	ln.Close()
	os.Exit(0)
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

type listener struct {
	cmd                  *exec.Cmd
	link                 string
	listenPort, dialPort uint16
	udpPort, tcp6Port    uint16
}

// startListener runs the test binary, through a symlink with a name longer
// than the kernel's 15-byte comm, as a child that listens on 127.0.0.1 and
// holds an established connection to itself. The child is killed and
// reaped when the test ends.
func startListener(t *testing.T) *listener {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(t.TempDir(), "cordon-helper-with-a-long-name")
	if err := os.Symlink(self, link); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(link, "listen", "arg with spaces", "")
	cmd.Env = append(os.Environ(), helperEnv+"=listen")
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
		cmd.Process.Kill()
		cmd.Wait()
	})
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		t.Fatalf("helper: %v", err)
	}
	var l listener
	if _, err := fmt.Sscanf(line, "%d %d %d %d", &l.listenPort, &l.dialPort, &l.udpPort, &l.tcp6Port); err != nil {
		t.Fatalf("helper said %q: %v", line, err)
	}
	l.cmd, l.link = cmd, link
	return &l
}

// readBundle verifies a bundle and decodes its JSONL artifacts.
func readBundle(t *testing.T, b *evidence.Bundle, signer ssh.Signer) (*evidence.Report, map[string][]byte) {
	t.Helper()
	rep, err := evidence.Verify(bytes.NewReader(b.Data), verifyOpts(signer))
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

func TestTake(t *testing.T) {
	l := startListener(t)
	signer := newSigner(t)
	before := time.Now()
	bundle, err := Take(context.Background(), Request{
		SnapshotID:   "snap-take",
		OrderID:      "ord-take",
		Incident:     "IR-1",
		Reason:       "test",
		HostName:     "test-host",
		AgentVersion: "test",
		Signer:       signer,
		ClockProbe: func(ctx context.Context) (time.Duration, error) {
			return 1234 * time.Nanosecond, nil
		},
	})
	took := time.Since(before)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("Take took %v; bundle %s is %d bytes", took, bundle.FileName, len(bundle.Data))
	rep, files := readBundle(t, bundle, signer)
	m := rep.Manifest

	// Manifest.
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
	wantFiles := []string{
		"artifacts/clock.jsonl", "raw/proc/uptime",
		"artifacts/host.jsonl", "raw/proc/sys/kernel/random/boot_id",
		"artifacts/connections.jsonl", "raw/proc/net/tcp", "raw/proc/net/udp",
		"artifacts/processes.jsonl",
	}
	for _, f := range wantFiles {
		if _, ok := files[f]; !ok {
			t.Errorf("bundle lacks %s", f)
		}
	}
	for _, a := range m.Artifacts {
		if len(a.Errors) > 0 {
			t.Logf("artifact %s recorded errors: %q", a.Name, a.Errors)
		}
	}

	// Clock.
	clocks := decodeJSONL[ClockRecord](t, files["artifacts/clock.jsonl"])
	if len(clocks) != 1 || clocks[0].MonotonicNS <= 0 || clocks[0].BoottimeNS < clocks[0].MonotonicNS ||
		clocks[0].SystemTime.Before(before.Add(-time.Second)) || clocks[0].ControllerOffsetNS == nil {
		t.Errorf("clock = %+v", clocks)
	}

	// Host.
	hosts := decodeJSONL[HostRecord](t, files["artifacts/host.jsonl"])
	if len(hosts) != 1 || hosts[0].Name != "test-host" || hosts[0].Identity != id || id.Kernel == "" || id.BootID == "" {
		t.Errorf("host = %+v", hosts)
	}

	// Processes: the child, by pid, with the right parent, comm, exe and
	// argv.
	procs := decodeJSONL[ProcessRecord](t, files["artifacts/processes.jsonl"])
	if a := artifactNamed(m, ProcessesArtifact); a == nil || a.Records != int64(len(procs)) || len(procs) < 3 {
		t.Fatalf("processes artifact %+v, %d records", a, len(procs))
	}
	pid := int32(l.cmd.Process.Pid)
	child := findProcess(procs, pid)
	if child == nil {
		t.Fatalf("child %d not in processes.jsonl", pid)
	}
	self, _ := os.Executable()
	wantName := filepath.Base(l.link)[:15]
	if child.PPID != int32(os.Getpid()) || child.Name != wantName || child.Exe != self ||
		!slices.Equal(child.Cmdline, l.cmd.Args) || child.Error != "" {
		t.Errorf("child = %+v\nwant ppid %d, name %q (comm, not argv), exe %q, cmdline %q", child, os.Getpid(), wantName, self, l.cmd.Args)
	}
	if child.UID == nil || *child.UID != uint32(os.Getuid()) {
		t.Errorf("child uid = %v, want %d", child.UID, os.Getuid())
	}
	if u, err := user.Current(); err == nil && child.User != u.Username {
		t.Errorf("child user = %q, want %q", child.User, u.Username)
	}
	st, err := time.Parse(time.RFC3339Nano, child.StartTime)
	if err != nil || st.Before(before.Add(-time.Minute)) || st.After(before.Add(2*time.Second)) {
		t.Errorf("child start_time = %q (%v), test started %v", child.StartTime, err, before)
	}
	// Start times agree with gopsutil's (which counts from a boot time
	// truncated to the second).
	if me := findProcess(procs, int32(os.Getpid())); me != nil {
		gp, _ := process.NewProcess(int32(os.Getpid()))
		ms, err := gp.CreateTime()
		got, err2 := time.Parse(time.RFC3339Nano, me.StartTime)
		if d := got.Sub(time.UnixMilli(ms)); err != nil || err2 != nil || d < -1500*time.Millisecond || d > 1500*time.Millisecond {
			t.Errorf("start_time %s, gopsutil says %v (%v, %v)", me.StartTime, time.UnixMilli(ms).UTC(), err, err2)
		}
	}
	if init := findProcess(procs, 1); init == nil || init.Name == "" {
		t.Errorf("pid 1 = %+v", init)
	}
	if me := findProcess(procs, int32(os.Getpid())); me == nil || me.Exe != self {
		t.Errorf("test process = %+v", me)
	}

	// Connections: the child's listening socket and both ends of its
	// established connection, with its pid.
	conns := decodeJSONL[ConnectionRecord](t, files["artifacts/connections.jsonl"])
	uid := uint32(os.Getuid())
	wantConns := []ConnectionRecord{
		{Family: "inet", Type: "tcp", LocalAddr: "127.0.0.1", LocalPort: l.listenPort, RemoteAddr: "0.0.0.0", RemotePort: 0, State: "LISTEN", PID: pid, UID: &uid},
		{Family: "inet", Type: "tcp", LocalAddr: "127.0.0.1", LocalPort: l.dialPort, RemoteAddr: "127.0.0.1", RemotePort: l.listenPort, State: "ESTABLISHED", PID: pid, UID: &uid},
		{Family: "inet", Type: "tcp", LocalAddr: "127.0.0.1", LocalPort: l.listenPort, RemoteAddr: "127.0.0.1", RemotePort: l.dialPort, State: "ESTABLISHED", PID: pid, UID: &uid},
		{Family: "inet", Type: "udp", LocalAddr: "127.0.0.1", LocalPort: l.udpPort, RemoteAddr: "0.0.0.0", RemotePort: 0, State: "NONE", PID: pid, UID: &uid},
	}
	if l.tcp6Port != 0 {
		wantConns = append(wantConns, ConnectionRecord{Family: "inet6", Type: "tcp", LocalAddr: "::1", LocalPort: l.tcp6Port, RemoteAddr: "::", RemotePort: 0, State: "LISTEN", PID: pid, UID: &uid})
	} else {
		t.Log("no IPv6 loopback: the inet6 check is skipped")
	}
	for _, want := range wantConns {
		if !slices.ContainsFunc(conns, func(c ConnectionRecord) bool { return sameConn(c, want) }) {
			t.Errorf("connections.jsonl lacks %s", connString(want))
		}
	}
	// The raw table has the listening socket too: 0100007F:<port> 0A.
	if !strings.Contains(string(files["raw/proc/net/tcp"]), fmt.Sprintf("0100007F:%04X 00000000:0000 0A", l.listenPort)) {
		t.Errorf("raw/proc/net/tcp lacks the listening socket on port %d", l.listenPort)
	}
	var families []string
	for _, c := range conns {
		families = append(families, c.Family+"/"+c.Type+"/"+c.State)
	}
	slices.Sort(families)
	t.Logf("%d processes, %d connections (%s)", len(procs), len(conns), strings.Join(slices.Compact(families), " "))
}

func artifactNamed(m evidence.Manifest, name string) *evidence.Artifact {
	for i := range m.Artifacts {
		if m.Artifacts[i].Name == name {
			return &m.Artifacts[i]
		}
	}
	return nil
}

func findProcess(procs []ProcessRecord, pid int32) *ProcessRecord {
	for i := range procs {
		if procs[i].PID == pid {
			return &procs[i]
		}
	}
	return nil
}

func sameConn(a, b ConnectionRecord) bool {
	if (a.UID == nil) != (b.UID == nil) || (a.UID != nil && *a.UID != *b.UID) {
		return false
	}
	a.UID, b.UID = nil, nil
	return a == b
}

func connString(c ConnectionRecord) string {
	uid := "null"
	if c.UID != nil {
		uid = strconv.Itoa(int(*c.UID))
	}
	return fmt.Sprintf("%s/%s %s:%d -> %s:%d %s pid %d uid %s", c.Family, c.Type, c.LocalAddr, c.LocalPort, c.RemoteAddr, c.RemotePort, c.State, c.PID, uid)
}

// TestTakeWithProcessChurn runs Take while processes start and exit as fast
// as they can: Take must not fail, and whatever exited mid-scan is recorded
// as such.
func TestTakeWithProcessChurn(t *testing.T) {
	truePath, err := exec.LookPath("true")
	if err != nil {
		t.Skip("no true(1)")
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var started [2]int
	for i := range started {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				if err := exec.Command(truePath).Run(); err == nil {
					started[i]++
				}
			}
		}()
	}
	t.Cleanup(func() { cancel(); wg.Wait() })

	signer := newSigner(t)
	for range 3 {
		bundle, err := Take(context.Background(), Request{SnapshotID: "churn", HostName: "h", Signer: signer})
		if err != nil {
			t.Fatalf("Take failed under process churn: %v", err)
		}
		_, files := readBundle(t, bundle, signer)
		procs := decodeJSONL[ProcessRecord](t, files["artifacts/processes.jsonl"])
		exited := 0
		for _, p := range procs {
			if strings.HasPrefix(p.Error, "exited during the scan") {
				exited++
			}
		}
		t.Logf("%d processes, %d recorded as exited during the scan", len(procs), exited)
	}
	cancel()
	wg.Wait()
	t.Logf("%d short-lived processes ran", started[0]+started[1])
}

// TestProcessRecordExited reads a process that has exited and been reaped:
// it is recorded with an error saying so.
func TestProcessRecordExited(t *testing.T) {
	cmd := exec.Command("sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Skip(err)
	}
	pid := int32(cmd.Process.Pid)
	cmd.Process.Kill()
	cmd.Wait()
	r := processRecord(gopsutilEnv(context.Background()), pid, time.Now(), nil)
	if r.PID != pid || !strings.HasPrefix(r.Error, "exited during the scan: ") {
		t.Errorf("record = %+v", r)
	}
	t.Log(r.Error)
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
			if took > ClockProbeBudget+probeGrace+2*time.Second {
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

func TestTakeCancelled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := Take(ctx, Request{Signer: newSigner(t)}); !errors.Is(err, context.Canceled) {
		t.Errorf("err = %v, want context.Canceled", err)
	}
	if _, err := Take(context.Background(), Request{}); err == nil {
		t.Error("Take without a signer succeeded")
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

func TestParsePasswd(t *testing.T) {
	u := parsePasswd([]byte("root:x:0:0:root:/root:/bin/bash\n#c:x:5:5::/:/bin/sh\nbad\ntoor:x:0:0::/:/bin/sh\nwww-data:x:33:33::/var/www:/usr/sbin/nologin\n"))
	if len(u) != 2 || u[0] != "root" || u[33] != "www-data" {
		t.Errorf("parsePasswd = %v", u)
	}
}

// writeSyscall matches strace lines of calls that open a file for writing
// or change the file system.
var writeSyscall = regexp.MustCompile(`(O_WRONLY|O_RDWR|O_CREAT|O_TRUNC)|\b(creat|mkdir|mkdirat|unlink|unlinkat|rename|renameat2?|link|linkat|symlink|symlinkat|truncate|ftruncate|chmod|fchmodat|chown|fchownat|utimensat|mknod|mknodat)\(`)

// TestNoDiskWrites runs Take in a child under strace and checks that no
// system call opened a file for writing or changed the file system.
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
	var opens, bad int
	for line := range strings.SplitSeq(string(b), "\n") {
		if strings.Contains(line, "open") {
			opens++
		}
		if writeSyscall.MatchString(line) {
			bad++
			t.Errorf("write to the file system: %s", line)
		}
	}
	if opens < 100 {
		t.Fatalf("strace saw only %d opens: is it tracing?\n%s", opens, b)
	}
	t.Logf("%d file opens, none for writing; bundle size %s", opens, strings.TrimSpace(string(out)))
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
}

func TestParseStat(t *testing.T) {
	st, err := parseStat([]byte("4242 (evil) (x 1) S 17 4242 4242 0 -1 4194560 97 0 0 0 0 0 0 0 20 0 1 0 123456 4321 5 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0\n"))
	if err != nil || st.comm != "evil) (x 1" || st.ppid != 17 || st.startTicks != 123456 {
		t.Errorf("parseStat = %+v, %v", st, err)
	}
	for _, bad := range []string{"", "1 (x S 1", "1 (x) S", "1 (x) S y 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 5"} {
		if _, err := parseStat([]byte(bad)); err == nil {
			t.Errorf("parseStat(%q) succeeded", bad)
		}
	}
}

func TestParseProcNet(t *testing.T) {
	table := `  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:0CEA 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 44444 1 0000000000000000 100 0 0 10 0
   1: 0100007F:A2C4 0100007F:0CEA 01 00000000:00000000 00:00000000 00000000  1000        0 55555 1 0000000000000000 20 4 30 10 -1
   2: garbage
   3: 0100007F:A2C5 0100007F:0CEA 0C 00000000:00000000 00:00000000 00000000    33        0 0 1 0000000000000000 20 4 30 10 -1
`
	recs, err := parseProcNet([]byte(table), "inet", "tcp")
	if err == nil || !strings.Contains(err.Error(), "1 lines not understood") {
		t.Errorf("err = %v", err)
	}
	if len(recs) != 3 {
		t.Fatalf("records = %+v", recs)
	}
	want := []string{
		"inet/tcp 127.0.0.1:3306 -> 0.0.0.0:0 LISTEN pid 0 uid 0",
		"inet/tcp 127.0.0.1:41668 -> 127.0.0.1:3306 ESTABLISHED pid 0 uid 1000",
		"inet/tcp 127.0.0.1:41669 -> 127.0.0.1:3306 UNKNOWN_0C pid 0 uid 33",
	}
	for i, r := range recs {
		if got := connString(r); got != want[i] {
			t.Errorf("record %d = %s, want %s", i, got, want[i])
		}
	}
	udp, err := parseProcNet([]byte("header\n   0: 00000000:0044 00000000:0000 07 00000000:00000000 00:00000000 00000000   101        0 1 2 0000000000000000 0\n"), "inet", "udp")
	if err != nil || len(udp) != 1 || udp[0].State != "NONE" || udp[0].LocalPort != 68 {
		t.Errorf("udp = %+v, %v", udp, err)
	}
}

func verifyOpts(signer ssh.Signer) evidence.VerifyOptions {
	if signer == nil {
		return evidence.VerifyOptions{}
	}
	return evidence.VerifyOptions{TrustedKeys: []ssh.PublicKey{signer.PublicKey()}}
}
