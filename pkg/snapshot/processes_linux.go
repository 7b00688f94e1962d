package snapshot

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// userHZ is the unit of times in /proc/[pid]/stat (sysconf(_SC_CLK_TCK)):
// 100 on every Linux architecture Cordon runs on.
const userHZ = 100

// chunkSize is how many PIDs a worker takes at a time; chunks are written
// in PID order.
const chunkSize = 32

// pfKthread is PF_KTHREAD in the flags field of /proc/[pid]/stat.
const pfKthread = 0x00200000

// afterStat, when set (by tests), is called with each PID once its stat
// has been read.
var afterStat atomic.Pointer[func(pid int)]

// scanResult is what the process scan leaves for later artifacts.
type scanResult struct {
	// sockets pairs each socket inode found in an fd table with its
	// holder.
	sockets []sockOwner
	// mntNS maps each mount namespace to a process in it.
	mntNS map[uint64]int32
	// skipped counts processes not read because ctx ended.
	skipped int
	// fdUnread lists the live processes whose fd table could not be
	// read (permission): the sockets they hold have no pid.
	fdUnread []int32
}

// chunkOut is what a worker produced for one chunk of PIDs.
type chunkOut struct {
	procs, files []byte // JSONL
	sockets      []sockOwner
	mntNS        map[uint64]int32
	skipped      int
	fdUnread     []int32 // processes whose fd table could not be read
}

// scanProcesses reads every listed process, in parallel, and streams
// processes.jsonl and open_files.jsonl in PID order. listedAt is
// CLOCK_BOOTTIME (ns) when the PIDs were listed.
func (c *collection) scanProcesses(pids []int, listedAt int64) *scanResult {
	pa, fa := c.art[ProcessesArtifact], c.art[OpenFilesArtifact]
	defer pa.close()
	defer fa.close()
	users, groups := map[uint32]string{}, map[uint32]string{}
	if b, err := readFile("/etc/passwd"); err != nil {
		pa.errorf("user names: %v", err)
	} else {
		users = parseIDNames(b)
		pa.raw("/etc/passwd", b)
	}
	if b, err := readFile("/etc/group"); err != nil {
		pa.errorf("group names: %v", err)
	} else {
		groups = parseIDNames(b)
		pa.raw("/etc/group", b)
	}
	if c.bootEpoch.IsZero() {
		pa.errorf("start_time: boot time unknown")
	}

	n := (len(pids) + chunkSize - 1) / chunkSize
	outs := make([]chunkOut, n)
	ready := make([]chan struct{}, n)
	for i := range ready {
		ready[i] = make(chan struct{})
	}
	hashes := &hashCache{m: map[exeKey]*exeHash{}}
	var next atomic.Int64
	var wg sync.WaitGroup
	for range workers() {
		wg.Go(func() {
			s := &scanner{c: c, users: users, groups: groups, hashes: hashes, listedTicks: uint64(listedAt / (1e9 / userHZ))}
			for {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				out := &outs[i]
				for _, pid := range pids[i*chunkSize : min((i+1)*chunkSize, len(pids))] {
					if c.ctx.Err() != nil {
						out.skipped++
						continue
					}
					s.process(pid, out)
				}
				close(ready[i])
			}
		})
	}
	res := &scanResult{mntNS: map[uint64]int32{}}
	read := 0
	writing := true
	for i := range n {
		<-ready[i]
		out := &outs[i]
		if writing {
			writing = pa.lines(out.procs) && fa.lines(out.files)
		}
		res.sockets = append(res.sockets, out.sockets...)
		res.skipped += out.skipped
		res.fdUnread = append(res.fdUnread, out.fdUnread...)
		read += min(chunkSize, len(pids)-i*chunkSize) - out.skipped
		for ino, pid := range out.mntNS {
			if _, ok := res.mntNS[ino]; !ok {
				res.mntNS[ino] = pid
			}
		}
		outs[i] = chunkOut{}
	}
	wg.Wait()
	if res.skipped > 0 {
		what := fmt.Sprintf("%d of %d processes read", read, len(pids))
		pa.cutShort(what)
		fa.cutShort(what)
	}
	return res
}

// scanner is one worker's state: its buffers are reused from process to
// process.
type scanner struct {
	c           *collection
	users       map[uint32]string
	groups      map[uint32]string
	hashes      *hashCache
	listedTicks uint64

	buf, link, dents []byte
	hashBuf          []byte
	path             []byte
	errs             []string
	fds              []OpenFile
}

type procStat struct {
	comm       []byte
	state      byte
	ppid       int32
	pgrp, sid  int32
	ttyNr      uint32
	flags      uint64
	threads    int32
	startTicks uint64
	rssPages   int64
}

// parseStat reads /proc/[pid]/stat (proc(5)). comm is in parentheses and
// may itself contain spaces and parentheses, so the fields after it are
// found from the last ')'.
func parseStat(b []byte) (procStat, error) {
	i, j := bytes.IndexByte(b, '('), bytes.LastIndexByte(b, ')')
	if i < 0 || j < i {
		return procStat{}, errors.New("malformed: no (comm)")
	}
	var f [23][]byte
	n := fields(bytes.TrimRight(b[j+1:], "\n"), f[:])
	if n < 22 {
		return procStat{}, fmt.Errorf("malformed: %d fields after comm", n)
	}
	st := procStat{comm: b[i+1 : j]}
	if len(f[0]) != 1 {
		return procStat{}, errors.New("malformed: state")
	}
	st.state = f[0][0]
	num := func(k int) (int64, bool) {
		v, err := strconv.ParseInt(string(f[k]), 10, 64)
		return v, err == nil
	}
	ppid, ok1 := num(1)
	pgrp, ok2 := num(2)
	sid, ok3 := num(3)
	tty, ok4 := num(4)
	flags, ok5 := num(6)
	thr, ok6 := num(17)
	start, err := strconv.ParseUint(string(f[19]), 10, 64)
	rss, ok7 := num(21)
	if !ok1 {
		return procStat{}, errors.New("malformed: ppid")
	}
	if err != nil {
		return procStat{}, fmt.Errorf("starttime: %w", err)
	}
	if !(ok2 && ok3 && ok4 && ok5 && ok6 && ok7) {
		return procStat{}, errors.New("malformed: numeric field")
	}
	st.ppid, st.pgrp, st.sid, st.ttyNr = int32(ppid), int32(pgrp), int32(sid), uint32(tty)
	st.flags, st.threads, st.startTicks, st.rssPages = uint64(flags), int32(thr), start, rss
	return st, nil
}

var pageSize = int64(unix.Getpagesize())

var nsNames = [...]string{"ns/net", "ns/pid", "ns/mnt", "ns/uts", "ns/ipc", "ns/user", "ns/cgroup"}

func (s *scanner) fail(what string, err error) {
	s.errs = append(s.errs, what+": "+err.Error())
}

// process reads one process into out.
func (s *scanner) process(pid int, out *chunkOut) {
	rec := ProcessRecord{PID: int32(pid), Cmdline: []string{}, EnvNames: []string{}, Cgroup: []string{}}
	s.errs = s.errs[:0]
	s.path = strconv.AppendInt(append(s.path[:0], "/proc/"...), int64(pid), 10)
	dfd, err := unix.Open(string(s.path), unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		if gone(err) {
			rec.Error = "exited during the scan: before it could be read"
		} else {
			rec.Error = "open /proc/" + strconv.Itoa(pid) + ": " + err.Error()
		}
		s.emit(out, &rec, nil)
		return
	}
	defer unix.Close(dfd)

	var st procStat
	statOK := false
	if s.buf, err = readShortAt(dfd, "stat", s.buf, 1<<16); err != nil {
		s.fail("stat", err)
	} else if st, err = parseStat(s.buf); err != nil {
		s.fail("stat", err)
	} else {
		statOK = true
		rec.Name, rec.NameB64 = str(string(st.comm))
		rec.PPID, rec.PGID, rec.SID, rec.TTY = st.ppid, st.pgrp, st.sid, st.ttyNr
		rec.State = string(st.state)
		rec.KernelThread = st.flags&pfKthread != 0
		rec.Threads = st.threads
		rec.RSSBytes = st.rssPages * pageSize
		rec.StartTicks = st.startTicks
		if !s.c.bootEpoch.IsZero() {
			rec.StartTime = s.c.bootEpoch.Add(time.Duration(st.startTicks) * (time.Second / userHZ)).UTC().Format(time.RFC3339Nano)
		}
	}
	if hook := afterStat.Load(); hook != nil {
		(*hook)(pid)
	}
	// Things a kernel thread or a zombie does not have.
	absent := func(err error) bool { return gone(err) && statOK && (rec.KernelThread || st.state == 'Z') }

	if s.buf, err = readShortAt(dfd, "status", s.buf, 1<<16); err != nil {
		s.fail("status", err)
	} else {
		s.ids(s.buf, &rec)
	}
	if s.buf, err = readShortAt(dfd, "cmdline", s.buf, 4<<20); err != nil {
		s.fail("cmdline", err)
	} else {
		rec.Cmdline, rec.CmdlineB64 = splitNUL(s.buf, false)
	}
	if s.buf, err = readShortAt(dfd, "environ", s.buf, 4<<20); err != nil && len(s.buf) == 0 {
		if !absent(err) {
			s.fail("environ", err)
		}
	} else {
		if err != nil {
			s.fail("environ", err)
		}
		rec.EnvNames, rec.EnvNamesB64 = splitNUL(s.buf, true)
	}
	if s.buf, err = readShortAt(dfd, "cgroup", s.buf, 1<<20); err != nil {
		s.fail("cgroup", err)
	} else {
		for line := range bytes.SplitSeq(bytes.TrimRight(s.buf, "\n"), []byte{'\n'}) {
			if len(line) > 0 {
				rec.Cgroup = append(rec.Cgroup, string(line))
			}
		}
	}
	if t, err := readlinkAt(dfd, "exe", &s.link); err != nil {
		if !absent(err) {
			s.fail("exe", err)
		}
	} else {
		rec.Exe, rec.ExeB64 = str(string(t))
		s.exe(dfd, &rec)
	}
	if t, err := readlinkAt(dfd, "cwd", &s.link); err != nil {
		if !absent(err) {
			s.fail("cwd", err)
		}
	} else {
		rec.Cwd, rec.CwdB64 = str(string(t))
	}
	if t, err := readlinkAt(dfd, "root", &s.link); err != nil {
		if !absent(err) {
			s.fail("root", err)
		}
	} else {
		rec.Root, rec.RootB64 = str(string(t))
	}
	ns := [...]*uint64{&rec.Namespaces.Net, &rec.Namespaces.PID, &rec.Namespaces.Mnt, &rec.Namespaces.UTS,
		&rec.Namespaces.IPC, &rec.Namespaces.User, &rec.Namespaces.Cgroup}
	for k, name := range nsNames {
		t, err := readlinkAt(dfd, name, &s.link)
		if err != nil {
			if !absent(err) {
				s.fail(name, err)
			}
			continue
		}
		*ns[k], _ = nsInode(t)
	}
	if ino := rec.Namespaces.Mnt; ino != 0 {
		if out.mntNS == nil {
			out.mntNS = map[uint64]int32{}
		}
		if _, ok := out.mntNS[ino]; !ok {
			out.mntNS[ino] = int32(pid)
		}
	}
	fds := s.openFiles(dfd, pid, out, absent)
	if fds != nil {
		n := int32(len(fds))
		rec.FDCount = &n
	}

	if len(s.errs) > 0 {
		rec.Error = strings.Join(s.errs, "; ")
		// Is the process still there? The handle is on the process
		// first opened, so a newer one with its PID cannot answer.
		if b, err := readShortAt(dfd, "stat", s.buf, 1<<16); err != nil {
			rec.Error = "exited during the scan: " + rec.Error
		} else if now, err := parseStat(b); err == nil && now.state == 'Z' && st.state != 'Z' {
			rec.Error = "exited during the scan (now a zombie): " + rec.Error
		}
	}
	if statOK && st.startTicks > s.listedTicks+1 {
		msg := fmt.Sprintf("pid reused during the scan: the process listed as %d ended, and this one, started %d ticks after boot, after the listing (%d), took its pid", pid, st.startTicks, s.listedTicks)
		if rec.Error != "" {
			msg += "; " + rec.Error
		}
		rec.Error = msg
	}
	s.emit(out, &rec, fds)
}

// ids reads the real and effective user and group IDs from status.
func (s *scanner) ids(status []byte, rec *ProcessRecord) {
	for _, l := range []struct {
		key         string
		real, eff   **uint32
		rname, enam *string
		names       map[uint32]string
	}{
		{"\nUid:", &rec.UID, &rec.EUID, &rec.User, &rec.EUser, s.users},
		{"\nGid:", &rec.GID, &rec.EGID, &rec.Group, &rec.EGroup, s.groups},
	} {
		i := bytes.Index(status, []byte(l.key))
		if i < 0 {
			s.fail("status", fmt.Errorf("no %s line", strings.TrimSpace(l.key)))
			continue
		}
		line := status[i+len(l.key):]
		if j := bytes.IndexByte(line, '\n'); j >= 0 {
			line = line[:j]
		}
		var f [5][]byte
		if fields(bytes.ReplaceAll(line, []byte{'\t'}, []byte{' '}), f[:]) < 2 {
			s.fail("status", fmt.Errorf("malformed %s line", strings.TrimSpace(l.key)))
			continue
		}
		r, ok1 := atoi(f[0])
		e, ok2 := atoi(f[1])
		if !ok1 || !ok2 {
			s.fail("status", fmt.Errorf("malformed %s line", strings.TrimSpace(l.key)))
			continue
		}
		rv, ev := uint32(r), uint32(e)
		*l.real, *l.eff = &rv, &ev
		*l.rname, *l.enam = l.names[rv], l.names[ev]
	}
}

// openFiles lists the process's descriptors, noting sockets; nil when
// the fd table could not be read.
func (s *scanner) openFiles(dfd, pid int, out *chunkOut, absent func(error) bool) []OpenFile {
	fdfd, _, err := openAt(dfd, "fd", unix.O_DIRECTORY)
	if err != nil {
		if !absent(err) {
			s.fail("fd", err)
			if !gone(err) {
				out.fdUnread = append(out.fdUnread, int32(pid))
			}
		}
		return nil
	}
	defer unix.Close(fdfd)
	if s.dents == nil {
		s.dents = make([]byte, 32<<10)
	}
	fds := make([]OpenFile, 0, 8)
	var lerr error
	err = listDir(fdfd, s.dents, func(name []byte) bool {
		n, ok := atoi(name)
		if !ok {
			return true
		}
		t, err := readlinkAt(fdfd, string(name), &s.link)
		if err != nil {
			if gone(err) { // closed since listed: not open any more
				return true
			}
			lerr = err // listing is allowed where reading the links is not
			return false
		}
		if ino, ok := socketInode(t); ok {
			out.sockets = append(out.sockets, sockOwner{ino, int32(pid)})
		}
		f := OpenFile{FD: int32(n)}
		f.Target, f.TargetB64 = str(string(t))
		fds = append(fds, f)
		return true
	})
	if err == nil {
		err = lerr
	}
	if err != nil {
		s.fail("fd", err)
		if !gone(err) {
			out.fdUnread = append(out.fdUnread, int32(pid))
		}
		return nil
	}
	return fds
}

// emit encodes the records of one process into the chunk.
func (s *scanner) emit(out *chunkOut, rec *ProcessRecord, fds []OpenFile) {
	out.procs = appendJSON(out.procs, rec)
	if fds == nil {
		fds = []OpenFile{}
	}
	out.files = appendJSON(out.files, &OpenFilesRecord{PID: rec.PID, StartTime: rec.StartTime, FDs: fds, Error: rec.Error})
}

// exeKey identifies an executable file.
type exeKey struct{ dev, ino uint64 }

// exeHash is the hash of one executable, computed once.
type exeHash struct {
	done chan struct{}
	sum  string
	err  string
}

// hashCache holds the hashes computed during one snapshot, so that a file
// run by many processes is read once.
type hashCache struct {
	mu sync.Mutex
	m  map[exeKey]*exeHash
}

// claim returns the entry for key and whether the caller must compute it
// (and then close done).
func (h *hashCache) claim(key exeKey) (*exeHash, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if e, ok := h.m[key]; ok {
		return e, false
	}
	e := &exeHash{done: make(chan struct{})}
	h.m[key] = e
	return e, true
}

// fileKey identifies a file's content without reading it: an in-place
// write changes its size or its mtime, and always its ctime, which no
// system call can set back (only moving the system clock could).
type fileKey struct {
	dev, ino, size   uint64
	mtimeNS, ctimeNS int64
}

func fileKeyOf(st *unix.Stat_t) fileKey {
	return fileKey{dev: st.Dev, ino: st.Ino, size: uint64(st.Size), mtimeNS: st.Mtim.Nano(), ctimeNS: st.Ctim.Nano()}
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

// WarmHashes hashes the executables of the processes running now, so that
// the next snapshot in this process finds them known. It reads with
// O_NOATIME, writes nothing, and returns when done or when ctx ends; the
// agent's collector runs it once at start.
func WarmHashes(ctx context.Context) {
	pids, err := listPIDs()
	if err != nil {
		return
	}
	var s scanner
	seen := map[exeKey]bool{}
	for _, pid := range pids {
		if ctx.Err() != nil {
			return
		}
		dfd, err := unix.Open("/proc/"+strconv.Itoa(pid), unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			continue
		}
		var st unix.Stat_t
		if unix.Fstatat(dfd, "exe", &st, 0) == nil && st.Size <= MaxExeHashSize && !seen[exeKey{st.Dev, st.Ino}] {
			seen[exeKey{st.Dev, st.Ino}] = true
			fk := fileKeyOf(&st)
			if _, ok := knownHashes.get(fk); !ok {
				if sum, errMsg := s.hash(dfd, st); errMsg == "" && sum != "" {
					knownHashes.put(fk, sum)
				}
			}
		}
		unix.Close(dfd)
	}
}

// exe fills the executable's identity and hash.
func (s *scanner) exe(dfd int, rec *ProcessRecord) {
	var st unix.Stat_t
	if err := unix.Fstatat(dfd, "exe", &st, 0); err != nil {
		rec.ExeError = "stat: " + err.Error()
		return
	}
	rec.ExeDeleted = st.Nlink == 0
	rec.ExeSize = st.Size
	rec.ExeDevice = strconv.FormatUint(uint64(unix.Major(st.Dev)), 10) + ":" + strconv.FormatUint(uint64(unix.Minor(st.Dev)), 10)
	rec.ExeInode = st.Ino
	if st.Size > MaxExeHashSize {
		rec.ExeError = fmt.Sprintf("not hashed: %d bytes, larger than the limit of %d", st.Size, MaxExeHashSize)
		return
	}
	e, mine := s.hashes.claim(exeKey{st.Dev, st.Ino})
	if mine {
		fk := fileKeyOf(&st)
		if sum, ok := knownHashes.get(fk); ok {
			e.sum = sum
		} else {
			e.sum, e.err = s.hash(dfd, st)
			if e.err == "" && e.sum != "" {
				knownHashes.put(fk, e.sum)
			}
		}
		close(e.done)
	} else {
		select {
		case <-e.done:
		case <-s.c.ctx.Done():
			rec.ExeError = "not hashed: " + CutShort + " while another worker read it"
			return
		}
	}
	rec.ExeSHA256, rec.ExeError = e.sum, e.err
}

// hash reads the executable through /proc/[pid]/exe with O_NOATIME.
func (s *scanner) hash(dfd int, want unix.Stat_t) (sum, errMsg string) {
	fd, atimeKept, err := openAt(dfd, "exe", 0)
	if err != nil {
		return "", "open: " + err.Error()
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return "", "fstat: " + err.Error()
	}
	if st.Dev != want.Dev || st.Ino != want.Ino {
		return "", "the executable changed while it was read (exec)"
	}
	if s.hashBuf == nil {
		s.hashBuf = make([]byte, 256<<10)
	}
	h := sha256.New()
	var n int64
	for {
		k, err := unix.Read(fd, s.hashBuf)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return "", "read: " + err.Error()
		}
		if k == 0 {
			break
		}
		h.Write(s.hashBuf[:k])
		if n += int64(k); n > MaxExeHashSize {
			return "", fmt.Sprintf("not hashed: larger than the limit of %d bytes", MaxExeHashSize)
		}
	}
	if !atimeKept {
		errMsg = "read without O_NOATIME (not the file's owner and no CAP_FOWNER): its access time may have changed"
	}
	return hex.EncodeToString(h.Sum(nil)), errMsg
}

// parseIDNames maps IDs to names from /etc/passwd (passwd(5)) or
// /etc/group (group(5)), both name:password:ID:…; the first entry for an
// ID wins, as getpwuid(3) does.
func parseIDNames(b []byte) map[uint32]string {
	names := map[uint32]string{}
	for line := range strings.SplitSeq(string(b), "\n") {
		f := strings.SplitN(line, ":", 4)
		if len(f) < 3 || strings.HasPrefix(f[0], "#") {
			continue
		}
		id, err := strconv.ParseUint(f[2], 10, 32)
		if err != nil {
			continue
		}
		if _, dup := names[uint32(id)]; !dup {
			names[uint32(id)] = f[0]
		}
	}
	return names
}
