package snapshot

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/cordon-ir/cordon/pkg/evidence"
	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// fuseSubtype names the helper's FUSE file systems: go-fuse mounts them
// as type "fuse.cordon-test" in mountinfo (it always gives a subtype).
const fuseSubtype = "cordon-test"

// fuseFS is a tiny read-only FUSE file system served by this process
// with go-fuse: a root directory of files. Once stalled it answers no
// request (lookup, getattr, open, read, opendir, readdir, statfs,
// getxattr), as a hung server does, so that whatever waits on it blocks
// until the connection is aborted (when this process exits and
// /dev/fuse is closed).
type fuseFS struct {
	files   []fuseFile // inode i+2
	stalled atomic.Bool
}

type fuseFile struct {
	name string
	data []byte
	mode uint32
}

// wait returns at once until the file system is stalled; from then on
// it never returns, and the request it serves is never answered.
func (ffs *fuseFS) wait() {
	if ffs.stalled.Load() {
		select {}
	}
}

// fuseNode is the root directory of a fuseFS (file nil) or one of its
// files.
type fuseNode struct {
	fs.Inode
	fsys *fuseFS
	file *fuseFile
}

var (
	_ fs.NodeLookuper   = (*fuseNode)(nil)
	_ fs.NodeGetattrer  = (*fuseNode)(nil)
	_ fs.NodeOpener     = (*fuseNode)(nil)
	_ fs.NodeReader     = (*fuseNode)(nil)
	_ fs.NodeOpendirer  = (*fuseNode)(nil)
	_ fs.NodeReaddirer  = (*fuseNode)(nil)
	_ fs.NodeStatfser   = (*fuseNode)(nil)
	_ fs.NodeGetxattrer = (*fuseNode)(nil)
)

// attr fills a with the node's attributes (go-fuse adds the inode
// number).
func (n *fuseNode) attr(a *fuse.Attr) {
	a.Mode, a.Nlink, a.Size = syscall.S_IFDIR|0o755, 2, 0
	if n.file != nil {
		a.Mode, a.Nlink, a.Size = syscall.S_IFREG|n.file.mode, 1, uint64(len(n.file.data))
	}
	a.Blocks, a.Blksize = (a.Size+511)/512, 4096
	a.Atime, a.Mtime, a.Ctime = 1_700_000_000, 1_700_000_000, 1_700_000_000
}

func (n *fuseNode) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	n.fsys.wait()
	for i := range n.fsys.files {
		if f := &n.fsys.files[i]; n.file == nil && f.name == name {
			child := &fuseNode{fsys: n.fsys, file: f}
			child.attr(&out.Attr)
			return n.NewInode(ctx, child, fs.StableAttr{Mode: syscall.S_IFREG, Ino: uint64(i + 2)}), 0
		}
	}
	return nil, syscall.ENOENT
}

func (n *fuseNode) Getattr(ctx context.Context, fh fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	n.fsys.wait()
	n.attr(&out.Attr)
	return 0
}

// Open returns no open flags, as a plain server does: no
// FOPEN_KEEP_CACHE, so each open drops what the kernel cached of the
// file, and no FOPEN_DIRECT_IO, so that the file can be executed.
func (n *fuseNode) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	n.fsys.wait()
	return nil, 0, 0
}

func (n *fuseNode) Read(ctx context.Context, fh fs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	n.fsys.wait()
	d := n.file.data
	off = min(off, int64(len(d)))
	return fuse.ReadResultData(d[off:min(off+int64(len(dest)), int64(len(d)))]), 0
}

func (n *fuseNode) Opendir(ctx context.Context) syscall.Errno {
	n.fsys.wait()
	return 0
}

func (n *fuseNode) Readdir(ctx context.Context) (fs.DirStream, syscall.Errno) {
	n.fsys.wait()
	var ents []fuse.DirEntry
	for i, f := range n.fsys.files {
		ents = append(ents, fuse.DirEntry{Name: f.name, Mode: syscall.S_IFREG, Ino: uint64(i + 2)})
	}
	return fs.NewListDirStream(ents), 0
}

func (n *fuseNode) Statfs(ctx context.Context, out *fuse.StatfsOut) syscall.Errno {
	n.fsys.wait()
	return 0
}

func (n *fuseNode) Getxattr(ctx context.Context, attr string, dest []byte) (uint32, syscall.Errno) {
	n.fsys.wait()
	return 0, syscall.ENODATA
}

// mountFUSE mounts a fuseFS holding files on dir with mount(2) (no
// fusermount), open to every user, and serves it until this process
// exits. The kernel caches none of its entries and attributes.
func mountFUSE(dir string, files []fuseFile) (*fuseFS, error) {
	ffs := &fuseFS{files: files}
	var noCache time.Duration // every use asks the server again
	_, err := fs.Mount(dir, &fuseNode{fsys: ffs}, &fs.Options{
		MountOptions: fuse.MountOptions{
			DirectMountStrict: true,
			AllowOther:        true,
			FsName:            fuseSubtype,
			Name:              fuseSubtype,
			// Replies are written from memory: no splice pipes, nor the
			// /dev/null go-fuse opens without O_CLOEXEC to drain them.
			DisableSplice: true,
		},
		EntryTimeout:    &noCache,
		AttrTimeout:     &noCache,
		NegativeTimeout: &noCache,
	})
	if err != nil {
		return nil, fmt.Errorf("mount fuse on %s: %w", dir, err)
	}
	return ffs, closeFUSEOnExec()
}

// closeFUSEOnExec marks this process's /dev/fuse descriptors
// close-on-exec: go-fuse opens /dev/fuse for a direct mount without
// O_CLOEXEC, and the processes started from the file systems are to
// hold none.
func closeFUSEOnExec() error {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return err
	}
	for _, e := range ents {
		if l, _ := os.Readlink("/proc/self/fd/" + e.Name()); l == "/dev/fuse" {
			fd, err := strconv.Atoi(e.Name())
			if err != nil {
				return err
			}
			unix.CloseOnExec(fd)
		}
	}
	return nil
}

// fuseReport is what the fuse helper prints: the processes running an
// executable from its file systems.
type fuseReport struct {
	Mounted  int // its executable on a mounted FUSE file system
	Detached int // its executable on a FUSE file system detached since (umount -l): in no mountinfo
}

// helperFUSE runs in a mount namespace of its own (the test starts it so),
// where its mounts are private: it mounts two FUSE file systems, each
// holding a copy of sleep(1), starts a process from each, detaches the
// second, and prints a fuseReport. "stall" on stdin makes both file
// systems stop answering. When stdin closes it kills its processes and
// exits, which aborts the FUSE connections: every read waiting on them
// fails, and the namespace, with its mounts, goes when its last process
// does.
func helperFUSE() {
	die := func(what string, err error) {
		fmt.Fprintf(os.Stderr, "fuse helper: %s: %v\n", what, err)
		os.Exit(1)
	}
	dir := os.Getenv("CORDON_FUSE_DIR")
	sleepPath, err := exec.LookPath("sleep")
	if err != nil {
		die("sleep", err)
	}
	prog, err := os.ReadFile(sleepPath)
	if err != nil {
		die("read sleep", err)
	}
	var fss []*fuseFS
	var procs []*exec.Cmd
	kill := func() {
		for _, p := range procs {
			p.Process.Kill()
			p.Wait()
		}
	}
	start := func(mnt string) int {
		ffs, err := mountFUSE(mnt, []fuseFile{{name: "prog", data: prog, mode: 0o755}})
		if err != nil {
			die("mount", err)
		}
		fss = append(fss, ffs)
		cmd := exec.Command(filepath.Join(mnt, "prog"), "3600")
		cmd.Dir = "/"
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if err := cmd.Start(); err != nil {
			kill()
			die("start "+mnt+"/prog", err)
		}
		procs = append(procs, cmd)
		for range 400 { // until the exec is done
			if l, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", cmd.Process.Pid)); strings.HasSuffix(l, "/prog") {
				break
			}
			time.Sleep(5 * time.Millisecond)
		}
		return cmd.Process.Pid
	}
	var rep fuseReport
	rep.Mounted = start(filepath.Join(dir, "mounted"))
	rep.Detached = start(filepath.Join(dir, "detached"))
	if err := unix.Unmount(filepath.Join(dir, "detached"), unix.MNT_DETACH); err != nil {
		kill()
		die("umount -l", err)
	}
	if err := json.NewEncoder(os.Stdout).Encode(rep); err != nil {
		kill()
		die("report", err)
	}
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		if in.Text() == "stall" {
			for _, ffs := range fss {
				ffs.stalled.Store(true)
			}
			fmt.Println("stalled")
		}
	}
	kill()
	os.Exit(0)
}

// startFUSE runs the fuse helper in a mount namespace of its own and
// returns its report and a function that stalls its file systems. The
// helper is stopped when the test ends, before t's temporary directories
// are removed.
func startFUSE(t *testing.T) (fuseReport, func()) {
	t.Helper()
	if _, err := os.Stat("/dev/fuse"); err != nil {
		t.Skipf("no FUSE here: %v", err)
	}
	dir := t.TempDir()
	for _, d := range []string{"mounted", "detached"} {
		if err := os.Mkdir(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(self)
	cmd.Env = append(os.Environ(), helperEnv+"=fuse", "CORDON_FUSE_DIR="+dir)
	// A private mount namespace (Go makes its mounts private too): the
	// FUSE mounts exist only there, and go with it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Unshareflags: syscall.CLONE_NEWNS, Pdeathsig: syscall.SIGKILL}
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
	t.Cleanup(func() {
		stdin.Close()
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-done
		}
	})
	out := bufio.NewReader(stdout)
	var rep fuseReport
	line, err := out.ReadBytes('\n')
	if err != nil || json.Unmarshal(line, &rep) != nil || rep.Mounted == 0 || rep.Detached == 0 {
		t.Fatalf("fuse helper: %q %v", line, err)
	}
	stall := func() {
		t.Helper()
		if _, err := io.WriteString(stdin, "stall\n"); err != nil {
			t.Fatal(err)
		}
		if l, err := out.ReadString('\n'); err != nil || l != "stalled\n" {
			t.Fatalf("fuse helper: %q %v", l, err)
		}
	}
	return rep, stall
}

// independentArtifacts are the artifacts that do not depend on the
// process scan.
var independentArtifacts = []string{ConntrackArtifact, ResourcesArtifact, RoutesArtifact, NeighboursArtifact,
	InterfacesArtifact, SessionsArtifact, ModulesArtifact, MountsArtifact, FirewallArtifact}

// checkComplete fails t for every artifact in names cut short, and for an
// independent artifact without the records it always has.
func checkComplete(t *testing.T, m evidence.Manifest, names ...string) {
	t.Helper()
	for _, name := range names {
		a := artifactNamed(m, name)
		if a == nil {
			t.Errorf("no artifact %s", name)
			continue
		}
		for _, e := range a.Errors {
			if strings.HasPrefix(e, CutShort) {
				t.Errorf("%s cut short: %s", name, e)
			}
		}
		want := map[string]int64{ResourcesArtifact: 1, InterfacesArtifact: 1, RoutesArtifact: 1, MountsArtifact: 1, FirewallArtifact: 3, ConnectionsArtifact: 1, ProcessesArtifact: 3}[name]
		if a.Records < want {
			t.Errorf("%s has %d records, want at least %d", name, a.Records, want)
		}
	}
}

// TestStuckFileSystem: processes run executables from FUSE file systems
// that stop answering, one still mounted, one detached (so that its type
// is in no mountinfo). Looking at them must not block the snapshot: the
// first is not hashed because of its file system type, and never asked
// for its attributes; the second is tried, and given up on after
// ExeHashTimeout. Every artifact is complete, and Take returns long
// before its deadline.
func TestStuckFileSystem(t *testing.T) {
	requireRoot(t)
	pids, stall := startFUSE(t)
	self, _ := os.Executable()
	h := startSockets(t, exec.Command(self))
	stall()

	signer := newSigner(t)
	deadline := time.Now().Add(4 * ExeHashTimeout)
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	start := time.Now()
	b, err := Take(ctx, Request{SnapshotID: "stuck-fs", HostName: "h", Signer: signer})
	took := time.Since(start)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("Take took %v (deadline in %v)", took, deadline.Sub(start))
	if took > ExeHashTimeout+2*time.Second {
		t.Errorf("Take took %v: it waited for the stalled file systems", took)
	}
	rep, files := bundleFiles(t, b, signer)
	for _, a := range rep.Manifest.Artifacts {
		if len(a.Errors) > 0 {
			t.Logf("%s: %q", a.Path, a.Errors)
		}
	}
	checkComplete(t, rep.Manifest, append([]string{ConnectionsArtifact, ProcessesArtifact, OpenFilesArtifact}, independentArtifacts...)...)
	s := &taken{procs: decodeJSONL[ProcessRecord](t, files["artifacts/processes.jsonl"])}
	checkSockets(t, decodeJSONL[ConnectionRecord](t, files["artifacts/connections.jsonl"]), h, "")
	if p := s.proc(pids.Mounted); p == nil || p.Error != "" || p.ExeSHA256 != "" || p.ExeInode == 0 ||
		p.ExeError != "not hashed: on a fuse."+fuseSubtype+" file system (FUSE or network), whose server might not answer" ||
		len(p.Cmdline) != 2 || p.Cmdline[1] != "3600" {
		t.Errorf("process on the mounted FUSE file system = %+v", p)
	}
	if p := s.proc(pids.Detached); p == nil || p.Error != "" || p.ExeSHA256 != "" ||
		!strings.HasPrefix(p.ExeError, "not hashed: reading it did not finish within "+ExeHashTimeout.String()) {
		t.Errorf("process on the detached FUSE file system = %+v", p)
	}
	var sawFUSE bool
	for _, m := range decodeJSONL[MountRecord](t, files["artifacts/mounts.jsonl"]) {
		sawFUSE = sawFUSE || (m.FSType == "fuse."+fuseSubtype && strings.HasSuffix(m.MountPoint, "/mounted"))
	}
	if !sawFUSE {
		t.Error("mounts.jsonl lacks the FUSE mount of the helper's mount namespace")
	}

	// The read of the detached executable is still pending: later
	// snapshots do not try it again, so they neither wait ExeHashTimeout
	// for it nor leave another goroutine (and OS thread) blocked on it.
	first := settledGoroutines(0)
	for i := range 3 {
		ctx, cancel := context.WithTimeout(context.Background(), 4*ExeHashTimeout)
		start := time.Now()
		b, err := Take(ctx, Request{SnapshotID: "stuck-fs-again", HostName: "h", Signer: signer})
		took := time.Since(start)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("Take %d took %v", i+2, took)
		_, files := bundleFiles(t, b, signer)
		s := &taken{procs: decodeJSONL[ProcessRecord](t, files["artifacts/processes.jsonl"])}
		if p := s.proc(pids.Detached); p == nil || p.Error != "" || p.ExeSHA256 != "" ||
			!strings.HasPrefix(p.ExeError, "not hashed: still not answering since an earlier snapshot") {
			t.Errorf("Take %d: process on the detached FUSE file system = %+v", i+2, p)
		}
	}
	if n := settledGoroutines(first + 1); n > first+1 {
		t.Errorf("%d goroutines after three more snapshots, %d after the first: each left one behind", n, first)
	}
}

// hangReads starts n processes (sleep) whose read of what (a file of
// /proc/PID, see beforeRead) by the scan does not return until the test
// ends; the test then waits until those reads have returned and are no
// longer pending, so that later tests start without them.
func hangReads(t *testing.T, what string, n int) []*exec.Cmd {
	t.Helper()
	release := make(chan struct{})
	pids := map[int]bool{}
	var cmds []*exec.Cmd
	for range n {
		cmd := exec.Command("sleep", "600")
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		cmds = append(cmds, cmd)
		pids[cmd.Process.Pid] = true
	}
	hook := func(pid int, w string) {
		if w == what && pids[pid] {
			<-release
		}
	}
	beforeRead.Store(&hook)
	t.Cleanup(func() {
		beforeRead.Store(nil)
		close(release)
		for end := time.Now().Add(10 * time.Second); pendingOf(pids) > 0 && time.Now().Before(end); {
			time.Sleep(10 * time.Millisecond)
		}
		if n := pendingOf(pids); n > 0 {
			t.Errorf("%d reads still pending after they were let go", n)
		}
		for _, cmd := range cmds {
			cmd.Process.Kill()
			cmd.Wait()
		}
	})
	return cmds
}

// pendingOf counts the reads of the processes in pids that stuckReads
// holds.
func pendingOf(pids map[int]bool) int {
	stuckReads.mu.Lock()
	defer stuckReads.mu.Unlock()
	n := 0
	for k, e := range stuckReads.procs {
		if pids[k.pid] {
			n += e.n
		}
	}
	return n
}

// settledGoroutines returns the number of goroutines once those that
// are ending have ended (within a second), for a leak check.
func settledGoroutines(atMost int) int {
	n := runtime.NumGoroutine()
	for end := time.Now().Add(time.Second); n > atMost && time.Now().Before(end); n = runtime.NumGoroutine() {
		time.Sleep(10 * time.Millisecond)
	}
	return n
}

// TestStuckProcess: a read of one process's /proc files never returns (the
// beforeRead hook blocks, as a read of its status would on a kernel where
// it can hang). The scan gives up on that process only: with time to
// spare after ProcReadTimeout, every other process, the connections with
// their owners and every other artifact are complete; later snapshots
// skip it at once, without leaving another goroutine on it; at the
// deadline, Take still returns on time, and what does not depend on the
// scan is complete.
func TestStuckProcess(t *testing.T) {
	requireRoot(t)
	self, _ := os.Executable()
	h := startSockets(t, exec.Command(self))
	signer := newSigner(t)
	takeBy := func(t *testing.T, deadline time.Time) (evidence.Manifest, map[string][]byte) {
		t.Helper()
		ctx, cancel := context.WithDeadline(context.Background(), deadline)
		defer cancel()
		b, err := Take(ctx, Request{SnapshotID: "stuck", HostName: "h", Signer: signer})
		if err != nil {
			t.Fatal(err)
		}
		if late := time.Since(deadline); late > 100*time.Millisecond {
			t.Errorf("Take returned %v after its deadline", late)
		}
		rep, files := bundleFiles(t, b, signer)
		for _, a := range rep.Manifest.Artifacts {
			if len(a.Errors) > 0 {
				t.Logf("%s: %q", a.Path, a.Errors)
			}
		}
		return rep.Manifest, files
	}
	stuckRecord := func(t *testing.T, files map[string][]byte, pid int) *ProcessRecord {
		t.Helper()
		s := &taken{procs: decodeJSONL[ProcessRecord](t, files["artifacts/processes.jsonl"])}
		p := s.proc(pid)
		if p == nil {
			t.Fatal("the stuck process has no record")
		}
		// The fields read before the read that hung are kept.
		if p.Name != "sleep" || p.StartTime == "" || p.StartTicks == 0 || len(p.Cmdline) != 0 {
			t.Errorf("stuck process = %+v", p)
		}
		return p
	}

	t.Run("given up on after ProcReadTimeout, then skipped", func(t *testing.T) {
		stuck := hangReads(t, "status", 1)[0].Process.Pid
		start := time.Now()
		// A deadline far off, so that a Take that waits for the stuck
		// read shows as one that runs to it; hashing the executables can
		// take seconds on a loaded machine.
		m, files := takeBy(t, start.Add(20*ProcReadTimeout))
		took := time.Since(start)
		t.Logf("Take took %v", took)
		if took > 10*ProcReadTimeout {
			t.Errorf("Take took %v: it waited for the stuck read", took)
		}
		checkComplete(t, m, append([]string{ConnectionsArtifact, ProcessesArtifact, OpenFilesArtifact}, independentArtifacts...)...)
		checkSockets(t, decodeJSONL[ConnectionRecord](t, files["artifacts/connections.jsonl"]), h, "")
		want := fmt.Sprintf("not read: /proc/%d/status did not answer within %v", stuck, ProcReadTimeout)
		if p := stuckRecord(t, files, stuck); !strings.HasPrefix(p.Error, want) {
			t.Errorf("stuck process error = %q, want it to start %q", p.Error, want)
		}
		if e := artifactNamed(m, ProcessesArtifact).Errors; !strings.Contains(strings.Join(e, "\n"), fmt.Sprintf("1 processes did not answer and were not read (pids [%d])", stuck)) {
			t.Errorf("processes errors = %q", e)
		}
		// Every other listed process was read.
		for _, p := range decodeJSONL[ProcessRecord](t, files["artifacts/processes.jsonl"]) {
			if strings.HasPrefix(p.Error, "not read") && p.PID != int32(stuck) {
				t.Errorf("process %d not read: %s", p.PID, p.Error)
			}
		}

		// The read is still pending: later snapshots do not wait for it
		// again, nor leave another goroutine blocked on it.
		first := settledGoroutines(0)
		for i := range 3 {
			start := time.Now()
			m, files := takeBy(t, start.Add(20*ProcReadTimeout))
			t.Logf("Take %d took %v", i+2, time.Since(start))
			checkComplete(t, m, ProcessesArtifact, OpenFilesArtifact, ConnectionsArtifact)
			want := fmt.Sprintf("not read: /proc/%d/status still not answering since an earlier snapshot", stuck)
			if p := stuckRecord(t, files, stuck); !strings.HasPrefix(p.Error, want) {
				t.Errorf("stuck process error = %q, want it to start %q", p.Error, want)
			}
		}
		if n := settledGoroutines(first + 1); n > first+1 {
			t.Errorf("%d goroutines after three more snapshots, %d after the first: each left one behind", n, first)
		}
	})
	t.Run("at the deadline", func(t *testing.T) {
		stuck := hangReads(t, "status", 1)[0].Process.Pid
		m, files := takeBy(t, time.Now().Add(ProcReadTimeout/2))
		checkComplete(t, m, independentArtifacts...)
		for _, name := range []string{ConnectionsArtifact, ProcessesArtifact, OpenFilesArtifact} {
			for _, e := range artifactNamed(m, name).Errors {
				if strings.Contains(e, "still being collected") {
					t.Errorf("%s was not written by the deadline: %s", name, e)
				}
			}
		}
		if n := artifactNamed(m, ConnectionsArtifact).Records; n < int64(len(h.Sockets)) {
			t.Errorf("%d connections, want at least the helper's %d", n, len(h.Sockets))
		}
		want := fmt.Sprintf("not read: /proc/%d/status did not answer before the snapshot's time ran out", stuck)
		if p := stuckRecord(t, files, stuck); !strings.HasPrefix(p.Error, want) {
			t.Errorf("stuck process error = %q, want it to start %q", p.Error, want)
		}
	})
	t.Run("fields read before a late hang are kept", func(t *testing.T) {
		cmd := hangReads(t, "fd", 1)[0]
		_, files := takeBy(t, time.Now().Add(20*ProcReadTimeout))
		s := &taken{procs: decodeJSONL[ProcessRecord](t, files["artifacts/processes.jsonl"])}
		p := s.proc(cmd.Process.Pid)
		want := fmt.Sprintf("not read: /proc/%d/fd did not answer within %v", cmd.Process.Pid, ProcReadTimeout)
		if p == nil || !strings.HasPrefix(p.Error, want) || p.Name != "sleep" || p.UID == nil ||
			!slices.Equal(p.Cmdline, []string{"sleep", "600"}) || len(p.EnvNames) == 0 || len(p.Cgroup) == 0 ||
			p.Namespaces.Mnt == 0 || p.Namespaces.Net == 0 || !strings.HasSuffix(p.Exe, "/sleep") || p.ExeInode == 0 ||
			p.Cwd == "" || p.Root != "/" || p.FDCount != nil {
			t.Errorf("process stuck at its fd table = %+v, want the fields read before it and an error starting %q", p, want)
		}
	})
}

// TestManyStuckProcesses: more processes hang than the scan leaves reads
// pending (maxStuckReaders, made small), with no deadline. Take still
// returns: once no reader is left and none may be started, the rest is
// counted as not read. A later snapshot skips at once every process given
// up on before.
func TestManyStuckProcesses(t *testing.T) {
	requireRoot(t)
	// Few readers, and few reads left pending, for a short test.
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(2))
	defer func(n int) { maxStuckReaders = n }(maxStuckReaders)
	before := stuckReads.nProcs.Load()
	maxStuckReaders = int(before) + 2
	cmds := hangReads(t, "status", 2+workers()+2)
	stuck := map[int32]bool{}
	for _, c := range cmds {
		stuck[int32(c.Process.Pid)] = true
	}
	takeBg := func(t *testing.T) *taken {
		t.Helper()
		done := make(chan *taken, 1)
		go func() { done <- take(t, context.Background()) }()
		select {
		case s := <-done:
			return s
		case <-time.After(time.Duration(len(cmds)+30) * ProcReadTimeout):
			t.Fatal("Take without a deadline waits for the stuck reads")
			return nil
		}
	}
	s := takeBg(t)
	errs := strings.Join(artifactNamed(s.m, ProcessesArtifact).Errors, "\n")
	t.Logf("processes errors: %q", errs)
	if n := stuckReads.nProcs.Load() - before; n > int64(2+workers()) {
		t.Errorf("%d reads left pending, more than %d", n, 2+workers())
	}
	if !strings.Contains(errs, "processes not read: every reader of the scan was stuck") {
		t.Errorf("processes errors = %q, want the processes not reached counted", errs)
	}
	givenUp := map[int32]bool{}
	for _, p := range s.procs {
		if stuck[p.PID] && strings.Contains(p.Error, "did not answer within") {
			givenUp[p.PID] = true
		}
	}

	s = takeBg(t)
	errs = strings.Join(artifactNamed(s.m, ProcessesArtifact).Errors, "\n")
	skipped := 0
	for pid := range givenUp {
		p := s.proc(int(pid))
		switch {
		case p != nil && strings.Contains(p.Error, "still not answering since an earlier snapshot"):
			skipped++
		case p == nil && strings.Contains(errs, "processes not read: every reader of the scan was stuck"):
			// Known gap: when every reader is stuck on processes not
			// seen stuck before, a process still pending from the
			// earlier snapshot that comes later in the scan gets no
			// record, only the count in the artifact's errors.
		default:
			t.Errorf("process %d, given up on before: %+v", pid, p)
		}
	}
	if skipped == 0 && len(givenUp) > 0 && !strings.Contains(errs, "every reader of the scan was stuck") {
		t.Error("no process given up on before was skipped at once")
	}
	t.Logf("%d stuck processes given up on in the first snapshot, skipped in the second; processes errors: %q", len(givenUp), artifactNamed(s.m, ProcessesArtifact).Errors)
	if len(givenUp) == 0 {
		t.Error("no stuck process was given up on")
	}
}

// TestRemoteFS checks which file system types are never read for a hash:
// those a process or another machine serves (the FUSE test above covers
// only "fuse.<name>").
func TestRemoteFS(t *testing.T) {
	for typ, want := range map[string]bool{
		"fuse": true, "fuseblk": true, "fuse.sshfs": true, "fuse.cordon-test": true, "virtiofs": true,
		"nfs": true, "nfs4": true, "cifs": true, "smb3": true, "9p": true, "ceph": true,
		"ext4": false, "xfs": false, "btrfs": false, "overlay": false, "tmpfs": false, "erofs": false,
		"fusectl": false, "": false,
	} {
		if got := remoteFS(typ); got != want {
			t.Errorf("remoteFS(%q) = %v, want %v", typ, got, want)
		}
	}
}
