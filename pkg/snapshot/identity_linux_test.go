package snapshot

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestForgedUnixSocket: any user can bind an abstract unix socket whose
// name holds a newline followed by a line in the format of /proc/net/unix,
// which then shows a socket that does not exist. connections.jsonl, read
// from sock_diag, has no such row, and has the real socket with its exact
// name (in path_b64 too when it is not UTF-8).
func TestForgedUnixSocket(t *testing.T) {
	requireRoot(t)
	const fakeInode = 987654321
	forged := fmt.Sprintf("0000000000000000: 00000002 00000000 00010000 0001 01 %d /forged/listener", fakeInode)
	names := []string{
		fmt.Sprintf("cordon-forge-%d\n%s", os.Getpid(), forged),
		fmt.Sprintf("cordon-forge-\xff-%d\n%s", os.Getpid(), forged),
	}
	inodes := map[uint64]string{}
	for _, name := range names {
		fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { unix.Close(fd) })
		if err := unix.Bind(fd, &unix.SockaddrUnix{Name: "@" + name}); err != nil {
			t.Fatal(err)
		}
		if err := unix.Listen(fd, 1); err != nil {
			t.Fatal(err)
		}
		var st unix.Stat_t
		if err := unix.Fstat(fd, &st); err != nil {
			t.Fatal(err)
		}
		inodes[st.Ino] = "@" + name
	}
	link, err := os.Readlink("/proc/self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	netns, _ := nsInode([]byte(link))

	s := take(t, context.Background())
	// The made-up line is there in the raw table: the attack works on
	// /proc/net/unix.
	raw := s.files[fmt.Sprintf("raw/netns/%d/proc/net/unix", netns)]
	if !bytes.Contains(raw, []byte("\n"+forged+"\n")) {
		t.Errorf("raw /proc/net/unix lacks the made-up line %q: the test does not test anything", forged)
	}
	found := map[uint64]bool{}
	for _, c := range s.conns {
		if c.Inode == fakeInode || c.Path == "/forged/listener" {
			t.Errorf("forged row: %+v", c)
		}
		want, ok := inodes[c.Inode]
		if !ok || c.NetNS != netns {
			continue
		}
		found[c.Inode] = true
		got := c.Path
		if c.PathB64 != "" {
			b, err := base64.StdEncoding.DecodeString(c.PathB64)
			if err != nil {
				t.Fatal(err)
			}
			got = string(b)
		}
		if got != want || c.Family != "unix" || c.Type != "stream" || c.State != "LISTEN" || !slices.Contains(c.PIDs, int32(os.Getpid())) {
			t.Errorf("socket %d = %+v\nwant path %q, a stream listener held by %d", c.Inode, c, want, os.Getpid())
		}
		if (c.PathB64 != "") != strings.Contains(want, "\xff") {
			t.Errorf("socket %d: path_b64 %q for path %q", c.Inode, c.PathB64, want)
		}
	}
	if len(found) != len(inodes) {
		t.Errorf("found %d of the %d sockets", len(found), len(inodes))
	}

	t.Run("without sock_diag", func(t *testing.T) {
		// Then /proc/net/unix is all there is: its rows are marked
		// unverified, and lines that do not parse strictly are
		// skipped.
		useSockDiag = false
		defer func() { useSockDiag = true }()
		s := take(t, context.Background())
		var said bool
		for _, e := range artifactNamed(s.m, ConnectionsArtifact).Errors {
			said = said || strings.Contains(e, unixFromProcNet)
		}
		if !said {
			t.Errorf("connections errors %q do not say the unix rows are unverified", artifactNamed(s.m, ConnectionsArtifact).Errors)
		}
		var rows int
		for _, c := range s.conns {
			if _, ok := inodes[c.Inode]; ok && c.State == "LISTEN" {
				rows++
			}
		}
		if rows != len(inodes) {
			t.Errorf("%d of the %d sockets have rows", rows, len(inodes))
		}
	})
}

// TestStartTimeStable: two snapshots give a process the same start_time,
// a whole number of clock ticks (10 ms) after the epoch.
func TestStartTimeStable(t *testing.T) {
	requireRoot(t)
	a := take(t, context.Background())
	time.Sleep(20 * time.Millisecond)
	b := take(t, context.Background())
	n := 0
	for _, p := range a.procs {
		q := b.proc(int(p.PID))
		if q == nil || q.StartTicks != p.StartTicks || p.StartTime == "" {
			continue // exited, or another process with its pid
		}
		n++
		if p.StartTime != q.StartTime {
			t.Errorf("pid %d: start_time %s, then %s", p.PID, p.StartTime, q.StartTime)
		}
		st, err := time.Parse(time.RFC3339Nano, p.StartTime)
		if err != nil || st.UnixNano()%int64(10*time.Millisecond) != 0 {
			t.Errorf("pid %d: start_time %s is not on a 10 ms tick (%v)", p.PID, p.StartTime, err)
		}
	}
	if n < 3 || a.proc(os.Getpid()) == nil {
		t.Errorf("only %d processes in both snapshots", n)
	}
}

// waitExec waits until pid has exec'd a file whose /proc/PID/exe starts
// with prefix.
func waitExec(t *testing.T, pid int, prefix string) {
	t.Helper()
	for range 400 {
		if l, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid)); strings.HasPrefix(l, prefix) {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("process %d did not exec %s", pid, prefix)
}

// helperChroot chroots into $CORDON_CHROOT_DIR, says "ready", and waits
// for its stdin to close. Its executable stays the one it was started
// from, outside the chroot.
func helperChroot() {
	if err := unix.Chroot(os.Getenv("CORDON_CHROOT_DIR")); err != nil {
		fmt.Fprintln(os.Stderr, "chroot helper:", err)
		os.Exit(1)
	}
	if err := unix.Chdir("/"); err != nil {
		fmt.Fprintln(os.Stderr, "chroot helper:", err)
		os.Exit(1)
	}
	fmt.Println("ready")
	io.Copy(io.Discard, os.Stdin)
	os.Exit(0)
}

// startChrooted runs exe (a copy of the test binary) as the chroot
// helper, chrooted into dir, until the test ends.
func startChrooted(t *testing.T, exe, dir string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), helperEnv+"=chroot", "CORDON_CHROOT_DIR="+dir)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stdin.Close(); cmd.Wait() })
	if l, err := bufio.NewReader(stdout).ReadString('\n'); err != nil || l != "ready\n" {
		t.Fatalf("chroot helper: %q %v", l, err)
	}
	return cmd
}

// helperPrivateExec runs in a mount namespace of its own: it mounts a
// tmpfs on $CORDON_EXEC_DIR, there only, copies $CORDON_EXEC_SRC into it
// as $CORDON_EXEC_NAME, and executes that with the argument 600.
func helperPrivateExec() {
	die := func(err error) {
		fmt.Fprintln(os.Stderr, "private-exec helper:", err)
		os.Exit(1)
	}
	dir := os.Getenv("CORDON_EXEC_DIR")
	if err := unix.Mount("cordon-test", dir, "tmpfs", 0, "mode=0755"); err != nil {
		die(err)
	}
	b, err := os.ReadFile(os.Getenv("CORDON_EXEC_SRC"))
	if err != nil {
		die(err)
	}
	path := filepath.Join(dir, os.Getenv("CORDON_EXEC_NAME"))
	if err := os.WriteFile(path, b, 0o755); err != nil {
		die(err)
	}
	die(unix.Exec(path, []string{path, "600"}, os.Environ()))
}

// TestDeletedExecutable: exe_deleted says that the name a process was
// started by no longer names its file: removed after exec, even with
// another hard link left (link count 1), or with another file given the
// name the kernel prints, or a memfd; not for a file whose name merely
// ends in " (deleted)", looked up where the kernel's path starts: the
// agent's root for a chrooted process, the root of its mount namespace for
// a process in another one. The hash is computed in every case, through
// /proc/PID/exe.
func TestDeletedExecutable(t *testing.T) {
	requireRoot(t)
	dir := t.TempDir()
	type tc struct {
		name, exe string
		deleted   bool
		pid       int
		content   []byte
	}
	var cases []*tc

	path, content := copyExecutable(t, dir, "deleted-sleep")
	cmd := startProc(t, path, "60")
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	cases = append(cases, &tc{"removed", path + deletedSuffix, true, cmd.Process.Pid, content})

	path, content = copyExecutable(t, dir, "linked-sleep")
	other := filepath.Join(dir, "other-name")
	if err := os.Link(path, other); err != nil {
		t.Fatal(err)
	}
	cmd = startProc(t, path, "60")
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	cases = append(cases, &tc{"removed, a hard link left", path + deletedSuffix, true, cmd.Process.Pid, content})

	path, content = copyExecutable(t, dir, "replaced-sleep")
	cmd = startProc(t, path, "60")
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	copyExecutable(t, dir, "replaced-sleep"+deletedSuffix)
	cases = append(cases, &tc{"removed, another file named as the kernel prints it", path + deletedSuffix, true, cmd.Process.Pid, content})

	path, content = copyExecutable(t, dir, "sleep"+deletedSuffix)
	cmd = startProc(t, path, "60")
	cases = append(cases, &tc{"named so", path, false, cmd.Process.Pid, content})

	// Named so, in a chroot: the kernel's path starts at the agent's
	// root, not the process's.
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	selfContent, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	path = filepath.Join(dir, "chrooted"+deletedSuffix)
	if err := os.WriteFile(path, selfContent, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd = startChrooted(t, path, dir)
	cases = append(cases, &tc{"named so, chrooted", path, false, cmd.Process.Pid, selfContent})

	// Named so, in another mount namespace, on a file system mounted
	// there only.
	private := filepath.Join(dir, "private")
	if err := os.Mkdir(private, 0o755); err != nil {
		t.Fatal(err)
	}
	sleep, err := exec.LookPath("sleep")
	if err != nil {
		t.Fatal(err)
	}
	cmd = exec.Command(self)
	cmd.Env = append(os.Environ(), helperEnv+"=private-exec", "CORDON_EXEC_DIR="+private, "CORDON_EXEC_SRC="+sleep, "CORDON_EXEC_NAME=ns"+deletedSuffix)
	cmd.SysProcAttr = &syscall.SysProcAttr{Unshareflags: syscall.CLONE_NEWNS, Pdeathsig: syscall.SIGKILL}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	path = filepath.Join(private, "ns"+deletedSuffix)
	waitExec(t, cmd.Process.Pid, path)
	cases = append(cases, &tc{"named so, in another mount namespace", path, false, cmd.Process.Pid, content})

	mfd, err := unix.MemfdCreate("cordon-test", 0)
	if err != nil {
		t.Fatal(err)
	}
	mf := os.NewFile(uintptr(mfd), "memfd")
	if _, err := mf.Write(content); err != nil {
		t.Fatal(err)
	}
	cmd = exec.Command("/proc/self/fd/3", "60")
	cmd.ExtraFiles = []*os.File{mf}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	mf.Close()
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	waitExec(t, cmd.Process.Pid, "/memfd:")
	cases = append(cases, &tc{"memfd", "/memfd:cordon-test" + deletedSuffix, true, cmd.Process.Pid, content})

	s := take(t, context.Background())
	for _, c := range cases {
		p := s.proc(c.pid)
		sum := sha256.Sum256(c.content)
		if p == nil || p.ExeDeleted != c.deleted || p.Exe != c.exe || p.ExeSHA256 != hex.EncodeToString(sum[:]) || p.ExeError != "" {
			t.Errorf("%s: process = %+v\nwant exe %q, exe_deleted %v, sha256 %x", c.name, p, c.exe, c.deleted, sum)
		}
	}
}

// TestMountTypesThroughChroot: /proc/PID/mountinfo of a chrooted process
// lists only the mounts under its root. Reading it must not stand for its
// whole mount namespace: the types of the other mounts stay known.
func TestMountTypesThroughChroot(t *testing.T) {
	requireRoot(t)
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := startChrooted(t, self, t.TempDir())
	open := func(pid int) int {
		t.Helper()
		fd, err := unix.Open(fmt.Sprintf("/proc/%d", pid), unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { unix.Close(fd) })
		return fd
	}
	chrooted, me := open(cmd.Process.Pid), open(os.Getpid())
	var link []byte
	mntns := func(dfd int) uint64 {
		t.Helper()
		l, err := readlinkAt(dfd, "ns/mnt", &link)
		if err != nil {
			t.Fatal(err)
		}
		ino, _ := nsInode(l)
		return ino
	}
	ns := mntns(me)
	if mntns(chrooted) != ns {
		t.Fatal("the chrooted helper is in another mount namespace")
	}
	stat := func(dfd int, path string) *unix.Statx_t {
		t.Helper()
		var stx unix.Statx_t
		if err := statxAt(dfd, path, &stx); err != nil {
			t.Fatal(err)
		}
		return &stx
	}
	f := newFSTypes()
	t.Logf("the chrooted process's executable, outside its root: %q", f.lookup(stat(chrooted, "exe"), ns, chrooted))
	for path, want := range map[string]string{"/proc/version": "proc", "/sys/kernel": "sysfs"} {
		if got := f.lookup(stat(unix.AT_FDCWD, path), ns, me); got != want {
			t.Errorf("file system type of %s = %q, want %q", path, got, want)
		}
	}
}

// TestSocketsHelperCleansUp: the sockets helper removes its temporary
// directory when it ends.
func TestSocketsHelperCleansUp(t *testing.T) {
	requireRoot(t)
	self, _ := os.Executable()
	cmd := exec.Command(self)
	cmd.Env = append(os.Environ(), helperEnv+"=sockets")
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
	var rep helperReport
	err = json.NewDecoder(stdout).Decode(&rep)
	stdin.Close()
	io.Copy(io.Discard, stdout)
	if werr := cmd.Wait(); err != nil || werr != nil {
		t.Fatalf("helper: %v, %v", err, werr)
	}
	if rep.Dir == "" {
		t.Fatal("the helper did not say its directory")
	}
	if _, err := os.Stat(rep.Dir); !os.IsNotExist(err) {
		os.RemoveAll(rep.Dir)
		t.Errorf("the helper left %s behind (%v)", rep.Dir, err)
	}
}
