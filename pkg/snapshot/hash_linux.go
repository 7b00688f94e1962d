package snapshot

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// remoteFS reports whether a file system type (as mountinfo names it) is
// served by a process or a machine that might not answer: FUSE
// (FUSE_SUPER_MAGIC: fuse, fuseblk, fuse.*, virtiofs), NFS
// (NFS_SUPER_MAGIC), SMB (CIFS_SUPER_MAGIC, SMB2_SUPER_MAGIC), 9P
// (V9FS_MAGIC), Ceph (CEPH_SUPER_MAGIC), AFS, Coda, cluster file systems
// that wait for their peers (GFS2, OCFS2, Lustre, GPFS, …). Executables on
// them are not hashed.
//
// The type comes from mountinfo, which the kernel answers from memory,
// not from statfs(2), which on FUSE and NFS asks the server (FUSE_STATFS,
// NFS FSSTAT) and hangs with it.
func remoteFS(t string) bool {
	if t == "fuse" || t == "fuseblk" || strings.HasPrefix(t, "fuse.") {
		return true
	}
	switch t {
	case "virtiofs", "nfs", "nfs4", "cifs", "smb3", "smbfs", "smb2", "9p", "ceph", "afs", "coda", "ncpfs",
		"lustre", "glusterfs", "gpfs", "beegfs", "orangefs", "pvfs2", "gfs2", "ocfs2", "davfs", "sshfs":
		return true
	}
	return false
}

// fsTypes maps mounts to their file system type, from the mountinfo of
// each mount namespace, read once per namespace when first needed.
//
// /proc/PID/mountinfo lists only the mounts under the process's root: for
// a process in a chroot, the part of its namespace below the chroot. A
// namespace counts as read only once it was read through a process whose
// root is the namespace's (/proc/PID/root reads "/"); a listing read
// through a chroot is kept, and read once per (namespace, root).
type fsTypes struct {
	mu      sync.Mutex
	byMount map[uint64]string // mount ID (statx STATX_MNT_ID, mountinfo field 1)
	byDev   map[uint64]string // device, unix.Mkdev(major, minor)
	ns      map[nsRoot]*nsMounts
}

// nsRoot is a mount namespace and a process's root in it, as
// /proc/PID/root reads.
type nsRoot struct {
	mntns uint64
	root  string
}

type nsMounts struct {
	mu   sync.Mutex
	read bool
}

func newFSTypes() *fsTypes {
	return &fsTypes{byMount: map[uint64]string{}, byDev: map[uint64]string{}, ns: map[nsRoot]*nsMounts{}}
}

func (f *fsTypes) get(stx *unix.Statx_t) (string, bool) {
	if stx.Mask&unix.STATX_MNT_ID != 0 {
		if t, ok := f.byMount[stx.Mnt_id]; ok {
			return t, true
		}
	}
	t, ok := f.byDev[unix.Mkdev(stx.Dev_major, stx.Dev_minor)]
	return t, ok
}

// lookup returns the type of the file system stx is on, "" when unknown;
// mntns is the mount namespace of the process (open as dfd, its /proc
// directory) it was found through.
func (f *fsTypes) lookup(stx *unix.Statx_t, mntns uint64, dfd int) string {
	f.mu.Lock()
	if t, ok := f.get(stx); ok {
		f.mu.Unlock()
		return t
	}
	f.mu.Unlock()
	var link []byte
	root, err := readlinkAt(dfd, "root", &link)
	if err != nil {
		return ""
	}
	k := nsRoot{mntns, string(root)}
	f.mu.Lock()
	n := f.ns[k]
	if n == nil {
		n = &nsMounts{}
		f.ns[k] = n
	}
	f.mu.Unlock()
	n.mu.Lock()
	if !n.read {
		if b, err := readAt(dfd, "mountinfo", nil, maxRead); err == nil {
			n.read = true
			f.mu.Lock()
			for line := range bytes.SplitSeq(b, []byte{'\n'}) {
				id, dev, typ, ok := mountinfoType(line)
				if !ok {
					continue
				}
				f.byMount[id] = typ
				if _, dup := f.byDev[dev]; !dup {
					f.byDev[dev] = typ
				}
			}
			f.mu.Unlock()
		}
	}
	n.mu.Unlock()
	f.mu.Lock()
	defer f.mu.Unlock()
	t, _ := f.get(stx)
	return t
}

// mountinfoType reads the mount ID, device and file system type of a
// mountinfo line (proc(5)).
func mountinfoType(line []byte) (id, dev uint64, typ string, ok bool) {
	var f [4][]byte
	if fields(line, f[:]) < 4 {
		return 0, 0, "", false
	}
	n, ok1 := atoi(f[0])
	maj, min, ok2 := bytes.Cut(f[2], []byte{':'})
	ma, ok3 := atoi(maj)
	mi, ok4 := atoi(min)
	sep := bytes.Index(line, []byte(" - "))
	if !(ok1 && ok2 && ok3 && ok4) || sep < 0 {
		return 0, 0, "", false
	}
	var g [1][]byte
	if fields(line[sep+3:], g[:]) < 1 {
		return 0, 0, "", false
	}
	t, _, _ := bytes.Cut(g[0], []byte{' '})
	return uint64(n), unix.Mkdev(uint32(ma), uint32(mi)), string(t), true
}

// exeKey identifies an executable file.
type exeKey struct{ dev, ino uint64 }

// fileKey identifies a file's content without reading it: an in-place
// write changes its size or its mtime, and always its ctime, which no
// system call can set back (only moving the system clock could).
type fileKey struct {
	dev, ino, size   uint64
	mtimeNS, ctimeNS int64
}

func fileKeyOfStatx(st *unix.Statx_t) fileKey {
	return fileKey{
		dev: unix.Mkdev(st.Dev_major, st.Dev_minor), ino: st.Ino, size: st.Size,
		mtimeNS: st.Mtime.Sec*1e9 + int64(st.Mtime.Nsec), ctimeNS: st.Ctime.Sec*1e9 + int64(st.Ctime.Nsec),
	}
}

// knownHashes keeps executable hashes from one snapshot to the next in a
// long-lived process (the agent's collector), so that containment does not
// wait for large binaries to be read again; WarmHashes fills it ahead of any
// incident. Bounded: when full, it is emptied and refills.
var knownHashes = &persistentHashes{m: map[fileKey]string{}}

// maxKnownHashes bounds knownHashes.
const maxKnownHashes = 1 << 16

type persistentHashes struct {
	mu sync.Mutex
	m  map[fileKey]string
}

func (p *persistentHashes) get(k fileKey) (string, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	s, ok := p.m[k]
	return s, ok
}

func (p *persistentHashes) put(k fileKey, sum string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.m) >= maxKnownHashes {
		clear(p.m)
	}
	p.m[k] = sum
}

// exeJob is one executable to hash, and the processes it can be read
// through (/proc/PID/exe, which works for a deleted file too).
type exeJob struct {
	key  fileKey
	pids []int
	sum  string
	err  string
}

// exeJobs are the distinct executables a scan found to hash. Once run
// starts, the list is fixed: a reader the scan gave up on may still come
// back from its read and try to add a job, and is refused.
type exeJobs struct {
	mu      sync.Mutex
	idx     map[exeKey]int
	list    []*exeJob
	running bool
}

func newExeJobs() *exeJobs { return &exeJobs{idx: map[exeKey]int{}} }

// add notes that pid runs the file key; it returns the file's job, or -1
// once run has started.
func (e *exeJobs) add(key fileKey, pid int) int {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.running {
		return -1
	}
	k := exeKey{key.dev, key.ino}
	if i, ok := e.idx[k]; ok {
		if j := e.list[i]; len(j.pids) < maxCandidates {
			j.pids = append(j.pids, pid)
		}
		return i
	}
	e.idx[k] = len(e.list)
	e.list = append(e.list, &exeJob{key: key, pids: []int{pid}})
	return len(e.list) - 1
}

// jobs returns the list of jobs, fixed from now on.
func (e *exeJobs) jobs() []*exeJob {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.running = true
	return e.list
}

// run hashes every job, k at a time, each within ExeHashTimeout, and
// returns how many were left unhashed because ctx ended. A file whose
// read from an earlier snapshot is still pending (stuckReads) is not read
// again.
func (e *exeJobs) run(ctx context.Context, k int) (cut int) {
	list := e.jobs()
	var mu sync.Mutex
	parallel(len(list), k, func(i int) {
		j := list[i]
		if ctx.Err() == nil {
			j.sum, j.err = hashTimeBoxed(ctx, j)
		}
		if ctx.Err() != nil && j.sum == "" && j.err == "" {
			j.err = "not hashed: " + CutShort + ": the snapshot's time ran out before it was read"
		}
		if strings.HasPrefix(j.err, "not hashed: "+CutShort) {
			mu.Lock()
			cut++
			mu.Unlock()
		}
	})
	return cut
}

// errTimedOut is the exe_error of a file not read within ExeHashTimeout.
var errTimedOut = fmt.Sprintf("not hashed: reading it did not finish within %v (a slow disk, or a file system that does not answer)", ExeHashTimeout)

// hashTimeBoxed hashes j's file, giving up after ExeHashTimeout or when
// ctx ends; the goroutine reading it then ends when its read returns, and
// until it does the file is in stuckReads.
func hashTimeBoxed(ctx context.Context, j *exeJob) (sum, errMsg string) {
	k := exeKey{j.key.dev, j.key.ino}
	if stuckReads.file(k) {
		return "", "not hashed: still not answering since an earlier snapshot, whose read of it has not returned (a slow disk, or a file system that does not answer)"
	}
	if n := stuckReads.nFiles.Load(); n >= maxStuckHashes {
		return "", fmt.Sprintf("not hashed: %d reads of executables given up on are still pending, the most left at once: no more are started until one returns", n)
	}
	deadline := time.Now().Add(ExeHashTimeout)
	type result struct{ sum, err string }
	done := make(chan result, 1)
	var mu sync.Mutex
	finished, abandoned := false, false
	go func() {
		s, e := hashExe(ctx, j.key, j.pids, deadline)
		mu.Lock()
		finished = true
		if abandoned {
			stuckReads.doneFile(k)
		}
		mu.Unlock()
		done <- result{s, e}
	}()
	giveUp := func() {
		mu.Lock()
		if !finished {
			abandoned = true
			stuckReads.addFile(k)
		}
		mu.Unlock()
	}
	t := time.NewTimer(ExeHashTimeout)
	defer t.Stop()
	select {
	case r := <-done:
		return r.sum, r.err
	case <-t.C:
		giveUp()
		return "", errTimedOut
	case <-ctx.Done():
		giveUp()
		return "", "not hashed: " + CutShort + ": the snapshot's time ran out while it was read"
	}
}

// hashBufs are the read buffers of hashExe.
var hashBufs = sync.Pool{New: func() any { b := make([]byte, 256<<10); return &b }}

// hashExe reads the file key through /proc/PID/exe of one of pids, with
// O_NOATIME, until deadline or until ctx ends.
func hashExe(ctx context.Context, key fileKey, pids []int, deadline time.Time) (sum, errMsg string) {
	errMsg = "not hashed: every process running it exited or ran another file before it was read"
	for _, pid := range pids {
		fd, atimeKept, err := openAt(unix.AT_FDCWD, "/proc/"+strconv.Itoa(pid)+"/exe", 0)
		if err != nil {
			if !gone(err) {
				errMsg = "open: " + err.Error()
			}
			continue
		}
		sum, errMsg = hashFD(ctx, fd, atimeKept, key, deadline)
		unix.Close(fd)
		if errMsg != errChanged {
			break
		}
	}
	if errMsg == errChanged {
		errMsg = "not hashed: every process running it exited or ran another file before it was read"
	}
	return sum, errMsg
}

// errChanged says that /proc/PID/exe no longer leads to the file to hash.
const errChanged = "\x00changed"

// hashFD hashes the file open as fd, which must be want, until deadline or
// until ctx ends.
func hashFD(ctx context.Context, fd int, atimeKept bool, want fileKey, deadline time.Time) (sum, errMsg string) {
	var st unix.Statx_t
	if err := statxAt(fd, "", &st); err != nil {
		return "", "fstat: " + err.Error()
	}
	got := fileKeyOfStatx(&st)
	if got.dev != want.dev || got.ino != want.ino {
		return "", errChanged
	}
	bp := hashBufs.Get().(*[]byte)
	defer hashBufs.Put(bp)
	buf := *bp
	h := sha256.New()
	var n int64
	for {
		if time.Now().After(deadline) {
			return "", errTimedOut
		}
		if ctx.Err() != nil {
			return "", "not hashed: " + CutShort + ": the snapshot's time ran out while it was read"
		}
		k, err := unix.Read(fd, buf)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return "", "read: " + err.Error()
		}
		if k == 0 {
			break
		}
		h.Write(buf[:k])
		if n += int64(k); n > MaxExeHashSize {
			return "", fmt.Sprintf("not hashed: larger than the limit of %d bytes", MaxExeHashSize)
		}
	}
	sum = hex.EncodeToString(h.Sum(nil))
	var notes []string
	if got != want {
		notes = append(notes, "the file changed (size, mtime or ctime) between the process scan and its hashing: the hash is of its content when hashed")
	} else if atimeKept {
		knownHashes.put(want, sum)
	}
	if !atimeKept {
		notes = append(notes, "read without O_NOATIME (not the file's owner and no CAP_FOWNER): its access time may have changed")
	}
	return sum, strings.Join(notes, "; ")
}

// WarmHashes hashes the executables of the processes running now, so that
// the next snapshot in this process finds them known. It reads with
// O_NOATIME, writes nothing, skips executables on FUSE and network file
// systems, gives each file ExeHashTimeout, and returns when done or when
// ctx ends; the agent's collector runs it once at start.
func WarmHashes(ctx context.Context) {
	pids, err := listPIDs()
	if err != nil {
		return
	}
	fs := newFSTypes()
	jobs := newExeJobs()
	link := make([]byte, 128)
	for _, pid := range pids {
		if ctx.Err() != nil {
			return
		}
		dfd, err := unix.Open("/proc/"+strconv.Itoa(pid), unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			continue
		}
		var stx unix.Statx_t
		if statxAt(dfd, "exe", &stx) == nil && stx.Size <= MaxExeHashSize {
			key := fileKeyOfStatx(&stx)
			if _, ok := knownHashes.get(key); !ok {
				var mntns uint64
				if t, err := readlinkAt(dfd, "ns/mnt", &link); err == nil {
					mntns, _ = nsInode(t)
				}
				if !remoteFS(fs.lookup(&stx, mntns, dfd)) {
					jobs.add(key, pid)
				}
			}
		}
		unix.Close(dfd)
	}
	jobs.run(ctx, 1)
}
