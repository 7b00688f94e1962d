package snapshot

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
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

// chunkSize is how many PIDs a reader takes at a time; chunks are written
// in PID order.
const chunkSize = 32

// pfKthread is PF_KTHREAD in the flags field of /proc/[pid]/stat.
const pfKthread = 0x00200000

// scanWrapUp is how long the scan, once told to stop, lets the readers
// finish the process each is on before it gives up on them.
const scanWrapUp = 30 * time.Millisecond

// beforeRead, when set (by tests), is called with each PID and the file
// of /proc/PID the scan is about to read (stat, status, cmdline, …, exe,
// mountinfo, cwd, root, fd): a hook that blocks stands for a read of that
// file that does not answer.
var beforeRead atomic.Pointer[func(pid int, what string)]

// scanResult is what the process scan leaves for the connections.
type scanResult struct {
	// sockets pairs each socket inode found in an fd table with its
	// holder.
	sockets []sockOwner
	// skipped counts processes not read because ctx ended.
	skipped int
	// unreached counts processes not read because every reader of the
	// scan was stuck and no other could be started (maxStuckReaders);
	// pending is how many reads were pending then.
	unreached, pending int
	// fdUnread lists the live processes whose fd table could not be
	// read (permission): the sockets they hold have no pid.
	fdUnread []int32
	// unread lists the processes given up on: a read of their /proc
	// files did not answer, in this snapshot or since an earlier one.
	unread []int32
}

// procScan is one run of the process scan. Readers (goroutines) take
// chunks of PIDs in order; the writer (the goroutine that called
// scanProcesses) streams open_files.jsonl in PID order and keeps the
// process records, whose executables are hashed in a later phase, until
// hashAndWrite. A watchdog gives up on a reader stuck in one read for
// longer than ProcReadTimeout; the rest of its chunk goes to the other
// readers, and another reader is started in its place while fewer than
// maxStuckReaders reads are pending (stuckReads). When no reader is left
// and none may be started, the processes not read yet are counted as
// unreached: the writer never waits for a read that does not return.
type procScan struct {
	c           *collection
	pids        []int
	listedTicks uint64
	users       map[uint32]string
	groups      map[uint32]string
	fs          *fsTypes
	exes        *exeJobs
	ownMntNS    uint64 // the agent's mount namespace
	chunks      []scanChunk
	next        atomic.Int64 // next chunk to claim

	mu       sync.Mutex
	readers  []*procReader
	live     int           // readers running, not given up on
	resume   []resumePoint // rests of chunks whose reader was given up on
	stuck    int           // readers given up on
	stopping bool          // the deadline came, or no reader is left: no more readers

	// Gathered by the writer.
	held []heldChunk
	res  scanResult
}

// resumePoint is where a chunk is to be read on from: pids[from] in
// chunks[ci].
type resumePoint struct{ ci, from int }

// heldChunk is the process records of one chunk, encoded, waiting for
// their executables' hashes.
type heldChunk struct {
	procs []byte
	holes []hashHole
}

// hashHole is where the hash of job goes in an encoded process record:
// at sha (the closing quote of "exe_sha256":""), and its error, if any, as
// an exe_error field at err (just after exe_inode).
type hashHole struct {
	sha, err int
	job      int
}

// scanChunk is a run of PIDs, read in order by one reader at a time.
type scanChunk struct {
	lo, hi int           // indexes into procScan.pids
	ready  chan struct{} // closed once every PID in it is accounted for

	mu     sync.Mutex
	cursor int  // pids[lo:cursor] are accounted for
	final  bool // settled: no reader may add to it
	out    chunkOut
}

// advanceLocked accounts for pids[cursor:to]; the caller holds ch.mu.
func (ch *scanChunk) advanceLocked(to int) {
	if ch.cursor < ch.hi && to >= ch.hi {
		close(ch.ready)
	}
	ch.cursor = to
}

// chunkOut is what the readers produced for one chunk, or one reader for
// one process.
type chunkOut struct {
	procs, files []byte // JSONL
	holes        []hashHole
	sockets      []sockOwner
	skipped      int
	unreached    int
	fdUnread     []int32
	unread       []int32
}

func (o *chunkOut) reset() {
	o.procs, o.files, o.holes, o.sockets, o.fdUnread, o.unread = o.procs[:0], o.files[:0], o.holes[:0], o.sockets[:0], o.fdUnread[:0], o.unread[:0]
	o.skipped, o.unreached = 0, 0
}

// procReader is one goroutine of the scan and where it is: which process,
// which read, since when, and the fields read so far.
type procReader struct {
	p *procScan
	s scanner

	mu         sync.Mutex
	busy       bool
	abandoned  bool
	pending    procKey // its read, in stuckReads once abandoned
	chunk, idx int     // the process being read: pids[idx], in chunks[chunk]
	what       string
	since      time.Time
	partial    ProcessRecord
	hasPartial bool
}

// step says that the reader starts reading what (a file under /proc/PID),
// keeping a copy of the fields of rec read so far for the record of a
// process given up on; r is nil in tests.
func (r *procReader) step(pid int, rec *ProcessRecord, what string) {
	if r != nil {
		r.mu.Lock()
		r.partial, r.hasPartial = *rec, true
		r.what, r.since = what, time.Now()
		r.mu.Unlock()
	}
	if hook := beforeRead.Load(); hook != nil {
		(*hook)(pid, what)
	}
}

// alive says that the reader is still making progress on its read (a
// long fd table), not stuck.
func (r *procReader) alive() {
	if r == nil {
		return
	}
	r.mu.Lock()
	r.since = time.Now()
	r.mu.Unlock()
}

// startReaderLocked starts a reader on chunk ci from pids[from] (ci < 0:
// on the next work, see nextWork); the caller holds p.mu.
func (p *procScan) startReaderLocked(ci, from int) {
	r := &procReader{p: p, s: scanner{p: p}}
	p.readers = append(p.readers, r)
	p.live++
	go r.run(ci, from)
}

// run reads chunk ci from pids[from], then whatever nextWork gives it,
// until there is nothing left. It returns early once given up on.
func (r *procReader) run(ci, from int) {
	p := r.p
	for {
		if ci >= 0 && !r.readChunk(ci, from) {
			p.readerDone(r)
			return
		}
		var ok bool
		if ci, from, ok = p.nextWork(); !ok {
			return
		}
	}
}

// nextWork returns the rest of a chunk whose reader was given up on, else
// the next chunk no reader has claimed; false when there is none left, and
// the reader is then done.
func (p *procScan) nextWork() (ci, from int, ok bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.resume) > 0 {
		rp := p.resume[0]
		p.resume = p.resume[1:]
		return rp.ci, rp.from, true
	}
	if ci := int(p.next.Add(1) - 1); ci < len(p.chunks) {
		return ci, p.chunks[ci].lo, true
	}
	p.live--
	return 0, 0, false
}

// readerDone notes that r stopped: given up on (abandon counted it), or
// its chunk was settled without it.
func (p *procScan) readerDone(r *procReader) {
	p.mu.Lock()
	defer p.mu.Unlock()
	r.mu.Lock()
	abandoned := r.abandoned
	r.mu.Unlock()
	if !abandoned {
		p.live--
		p.unreachedLocked()
	}
}

// readChunk reads pids[from:] of chunk ci; false when the reader is to
// stop (given up on, or the chunk was settled without it).
func (r *procReader) readChunk(ci, from int) bool {
	p := r.p
	ch := &p.chunks[ci]
	for k := from; k < ch.hi; k++ {
		if p.c.ctx.Err() != nil {
			ch.mu.Lock()
			if !ch.final && ch.cursor == k {
				ch.out.skipped += ch.hi - k
				ch.advanceLocked(ch.hi)
			}
			ch.mu.Unlock()
			return true
		}
		if !r.begin(ci, k) {
			return false
		}
		r.s.process(p.pids[k], r)
		if !r.commit(ci, k) {
			return false
		}
	}
	return true
}

func (r *procReader) begin(ci, k int) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.abandoned {
		return false
	}
	ch := &r.p.chunks[ci]
	ch.mu.Lock()
	ok := !ch.final && ch.cursor == k
	ch.mu.Unlock()
	if !ok {
		return false
	}
	r.busy, r.chunk, r.idx, r.what, r.since, r.hasPartial = true, ci, k, "", time.Now(), false
	return true
}

// commit adds the records of pids[k] to its chunk, unless the reader was
// given up on meanwhile: its read has then returned, and is no longer
// pending.
func (r *procReader) commit(ci, k int) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.busy = false
	if r.abandoned {
		stuckReads.doneProc(r.pending)
		return false
	}
	ch := &r.p.chunks[ci]
	ch.mu.Lock()
	defer ch.mu.Unlock()
	if ch.final || ch.cursor != k {
		return false
	}
	one, out := &r.s.one, &ch.out
	base := len(out.procs)
	out.procs = append(out.procs, one.procs...)
	for _, h := range one.holes {
		out.holes = append(out.holes, hashHole{sha: h.sha + base, err: h.err + base, job: h.job})
	}
	out.files = append(out.files, one.files...)
	out.sockets = append(out.sockets, one.sockets...)
	out.fdUnread = append(out.fdUnread, one.fdUnread...)
	out.unread = append(out.unread, one.unread...)
	ch.advanceLocked(k + 1)
	return true
}

// abandon gives up on the process r is reading if r has been at its
// current read since before cutoff (any time, when cutoff is zero): the
// process gets a record saying which read did not answer, with the fields
// read before it, and the read goes into stuckReads until it returns.
// Before the deadline the other readers go on with the rest of the chunk;
// at it, the rest is skipped.
func (p *procScan) abandon(r *procReader, cutoff time.Time, atDeadline bool) {
	r.mu.Lock()
	if !r.busy || r.abandoned || (!cutoff.IsZero() && !r.since.Before(cutoff)) {
		r.mu.Unlock()
		return
	}
	ci, k := r.chunk, r.idx
	ch := &p.chunks[ci]
	ch.mu.Lock()
	if ch.final || ch.cursor != k {
		ch.mu.Unlock()
		r.mu.Unlock()
		return
	}
	r.abandoned = true
	pid := p.pids[k]
	rec := ProcessRecord{PID: int32(pid), Cmdline: []string{}, EnvNames: []string{}, Cgroup: []string{}}
	if r.hasPartial {
		rec = r.partial
	}
	r.pending = procKey{pid, rec.StartTicks}
	stuckReads.addProc(r.pending, r.what)
	file := "/proc/" + strconv.Itoa(pid)
	if r.what != "" {
		file += "/" + r.what
	}
	if atDeadline {
		rec.Error = "not read: " + file + " did not answer before the snapshot's time ran out"
	} else {
		rec.Error = fmt.Sprintf("not read: %s did not answer within %v (a hung file system, or a lock held by a thread stuck on one)", file, ProcReadTimeout)
	}
	if r.hasPartial {
		rec.Error += "; the fields read before it are kept"
	}
	out := &ch.out
	out.procs = rec.appendJSON(out.procs)
	out.files = appendJSON(out.files, &OpenFilesRecord{PID: rec.PID, StartTime: rec.StartTime, FDs: []OpenFile{}, Error: rec.Error})
	out.unread = append(out.unread, rec.PID)
	next := k + 1
	if atDeadline {
		out.skipped += ch.hi - next
		next = ch.hi
	}
	ch.advanceLocked(next)
	ch.mu.Unlock()
	r.mu.Unlock()

	p.mu.Lock()
	defer p.mu.Unlock()
	p.stuck++
	p.live--
	if p.stopping {
		return
	}
	if next < ch.hi {
		p.resume = append(p.resume, resumePoint{ci, next})
	}
	if stuckReads.nProcs.Load() <= int64(maxStuckReaders) {
		p.startReaderLocked(-1, 0)
		return
	}
	p.unreachedLocked()
}

// unreachedLocked ends the scan when no reader is left to read what
// remains (every one was given up on, and no other may be started): the
// processes not read yet are counted as unreached. The caller holds p.mu.
func (p *procScan) unreachedLocked() {
	if p.live > 0 || p.stopping {
		return
	}
	p.stopping = true
	p.resume = nil
	p.res.pending = int(stuckReads.nProcs.Load())
	for int(p.next.Add(1)-1) < len(p.chunks) { // claim what no reader has
	}
	for i := range p.chunks {
		ch := &p.chunks[i]
		ch.mu.Lock()
		if ch.cursor < ch.hi {
			ch.out.unreached += ch.hi - ch.cursor
			ch.advanceLocked(ch.hi)
		}
		ch.final = true
		ch.mu.Unlock()
	}
}

// watch gives up on readers stuck in one read for longer than
// ProcReadTimeout, until stop is closed.
func (p *procScan) watch(stop <-chan struct{}) {
	t := time.NewTicker(ProcReadTimeout / 4)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
		}
		p.mu.Lock()
		rs := slices.Clone(p.readers)
		p.mu.Unlock()
		cutoff := time.Now().Add(-ProcReadTimeout)
		for _, r := range rs {
			p.abandon(r, cutoff, false)
		}
	}
}

// settle ends the scan at the deadline: every reader still on a process
// is given up on, and every PID not yet read is skipped.
func (p *procScan) settle() {
	p.mu.Lock()
	p.stopping = true
	p.resume = nil
	rs := slices.Clone(p.readers)
	p.mu.Unlock()
	for _, r := range rs {
		p.abandon(r, time.Time{}, true)
	}
	for int(p.next.Add(1)-1) < len(p.chunks) { // claim what no reader has
	}
	for i := range p.chunks {
		ch := &p.chunks[i]
		ch.mu.Lock()
		if ch.cursor < ch.hi {
			ch.out.skipped += ch.hi - ch.cursor
			ch.advanceLocked(ch.hi)
		}
		ch.final = true
		ch.mu.Unlock()
	}
}

// scanProcesses reads every listed process, in parallel, streams
// open_files.jsonl in PID order, and returns once every process has a
// record or the scan's context has ended, with the process records kept
// for hashAndWrite. listedAt is CLOCK_BOOTTIME (ns) when the PIDs were
// listed. It never waits for a read that does not return: see
// ProcReadTimeout.
func (c *collection) scanProcesses(pids []int, listedAt int64) *procScan {
	pa, fa := c.art[ProcessesArtifact], c.art[OpenFilesArtifact]
	defer fa.close()
	p := &procScan{
		c: c, pids: pids, listedTicks: uint64(listedAt / (1e9 / userHZ)),
		users: map[uint32]string{}, groups: map[uint32]string{},
		fs: newFSTypes(), exes: newExeJobs(),
	}
	var link []byte
	if t, err := readlinkAt(unix.AT_FDCWD, "/proc/self/ns/mnt", &link); err == nil {
		p.ownMntNS, _ = nsInode(t)
	}
	if b, err := readFile("/etc/passwd"); err != nil {
		pa.errorf("user names: %v", err)
	} else {
		p.users = parseIDNames(b)
		pa.raw("/etc/passwd", b)
	}
	if b, err := readFile("/etc/group"); err != nil {
		pa.errorf("group names: %v", err)
	} else {
		p.groups = parseIDNames(b)
		pa.raw("/etc/group", b)
	}
	if c.bootEpoch.IsZero() {
		pa.errorf("start_time: boot time unknown")
	}
	n := (len(pids) + chunkSize - 1) / chunkSize
	p.chunks = make([]scanChunk, n)
	for i := range p.chunks {
		lo, hi := i*chunkSize, min((i+1)*chunkSize, len(pids))
		p.chunks[i] = scanChunk{lo: lo, hi: hi, cursor: lo, ready: make(chan struct{})}
	}
	p.mu.Lock()
	for range min(workers(), n) {
		p.startReaderLocked(-1, 0)
	}
	p.mu.Unlock()
	stop := make(chan struct{})
	go p.watch(stop)
	defer close(stop)

	done := c.ctx.Done()
	var wrap <-chan time.Time
	settled, writing := false, true
	for i := range p.chunks {
		ch := &p.chunks[i]
	wait:
		for !settled {
			select {
			case <-ch.ready:
				break wait
			case <-done:
				// Let the readers that are not stuck finish the
				// process they are on.
				done = nil
				t := time.NewTimer(scanWrapUp)
				defer t.Stop()
				wrap = t.C
			case <-wrap:
				p.settle()
				settled = true
			}
		}
		<-ch.ready
		ch.mu.Lock()
		out := ch.out
		ch.out = chunkOut{}
		ch.mu.Unlock()
		if writing {
			writing = fa.lines(out.files)
		}
		p.held = append(p.held, heldChunk{procs: out.procs, holes: out.holes})
		p.res.sockets = append(p.res.sockets, out.sockets...)
		p.res.skipped += out.skipped
		p.res.unreached += out.unreached
		p.res.fdUnread = append(p.res.fdUnread, out.fdUnread...)
		p.res.unread = append(p.res.unread, out.unread...)
	}
	p.errors(fa)
	return p
}

// errors records with a what the scan did not read.
func (p *procScan) errors(a *artifact) {
	if p.res.skipped > 0 {
		a.cutShort(fmt.Sprintf("%d of %d processes read", len(p.pids)-p.res.skipped-p.res.unreached, len(p.pids)))
	}
	if p.res.unreached > 0 {
		a.errorf("%d of %d processes not read: every reader of the scan was stuck in a read that did not answer, and none was started in their place, with %d such reads pending (more than %d)", p.res.unreached, len(p.pids), p.res.pending, maxStuckReaders)
	}
	if len(p.res.unread) > 0 {
		a.errorf("%s", unreadError(p.res.unread))
	}
}

// unreadError says which processes were given up on.
func unreadError(pids []int32) string {
	return fmt.Sprintf("%d processes did not answer and were not read (pids %s): a read of their /proc files blocked, on a hung file system or a lock held by a thread stuck on one", len(pids), pidList(pids))
}

// pidList prints up to 20 PIDs.
func pidList(pids []int32) string {
	const maxList = 20
	list := fmt.Sprint(pids[:min(len(pids), maxList)])
	if len(pids) > maxList {
		list = strings.TrimSuffix(list, "]") + " …]"
	}
	return list
}

// hashAndWrite hashes the executables the scan found (each once, time-boxed,
// see ExeHashTimeout) and writes processes.jsonl in PID order.
func (p *procScan) hashAndWrite() {
	pa := p.c.art[ProcessesArtifact]
	defer pa.close()
	if cut := p.exes.run(p.c.ctx, workers()); cut > 0 {
		pa.cutShort(fmt.Sprintf("%d of %d executables not hashed", cut, len(p.exes.list)))
	}
	var buf []byte
	for i := range p.held {
		h := &p.held[i]
		buf = buf[:0]
		pos := 0
		for _, hole := range h.holes {
			j := p.exes.list[hole.job]
			buf = append(buf, h.procs[pos:hole.sha]...)
			buf = append(buf, j.sum...)
			buf = append(buf, h.procs[hole.sha:hole.err]...)
			if j.err != "" {
				buf = appendKey(buf, "exe_error")
				buf = appendString(buf, j.err)
			}
			pos = hole.err
		}
		buf = append(buf, h.procs[pos:]...)
		*h = heldChunk{}
		if !pa.lines(buf) {
			break
		}
	}
	p.errors(pa)
}

// scanner reads processes; its buffers are reused from process to
// process.
type scanner struct {
	p   *procScan
	one chunkOut // the records of the process being read

	buf, link, dents []byte
	path             []byte
	errs             []string
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

// startTime is when a process started, from its start ticks: boot time
// (rounded to the tick, see measureBootEpoch) plus the ticks.
func startTime(bootEpoch time.Time, ticks uint64) string {
	return bootEpoch.Add(time.Duration(ticks) * (time.Second / userHZ)).UTC().Format(time.RFC3339Nano)
}

// process reads one process into s.one; r (nil in tests) is told which
// read it is at.
func (s *scanner) process(pid int, r *procReader) {
	one := &s.one
	one.reset()
	c := s.p.c
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
		s.emit(&rec, nil, -1)
		return
	}
	defer unix.Close(dfd)
	if s.stillStuck(procKey{pid, 0}, &rec) {
		return
	}

	var st procStat
	statOK := false
	r.step(pid, &rec, "stat")
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
		if !c.bootEpoch.IsZero() {
			rec.StartTime = startTime(c.bootEpoch, st.startTicks)
		}
	}
	if statOK && s.stillStuck(procKey{pid, st.startTicks}, &rec) {
		return
	}
	r.step(pid, &rec, "status")
	// Things a kernel thread or a zombie does not have.
	absent := func(err error) bool { return gone(err) && statOK && (rec.KernelThread || st.state == 'Z') }

	if s.buf, err = readShortAt(dfd, "status", s.buf, 1<<16); err != nil {
		s.fail("status", err)
	} else {
		s.ids(s.buf, &rec)
	}
	// cmdline and environ are read from the process's memory: these are
	// the reads that block when it is backed by a file system that does
	// not answer.
	r.step(pid, &rec, "cmdline")
	if s.buf, err = readShortAt(dfd, "cmdline", s.buf, 4<<20); err != nil {
		s.fail("cmdline", err)
	} else {
		rec.Cmdline, rec.CmdlineB64 = splitNUL(s.buf, false)
	}
	r.step(pid, &rec, "environ")
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
	r.step(pid, &rec, "cgroup")
	if s.buf, err = readShortAt(dfd, "cgroup", s.buf, 1<<20); err != nil {
		s.fail("cgroup", err)
	} else {
		for line := range bytes.SplitSeq(bytes.TrimRight(s.buf, "\n"), []byte{'\n'}) {
			if len(line) > 0 {
				rec.Cgroup = append(rec.Cgroup, string(line))
			}
		}
	}
	r.step(pid, &rec, "ns")
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
	job := -1
	r.step(pid, &rec, "exe")
	if t, err := readlinkAt(dfd, "exe", &s.link); err != nil {
		if !absent(err) {
			s.fail("exe", err)
		}
	} else {
		rec.Exe, rec.ExeB64 = str(string(t))
		job = s.exe(dfd, pid, t, &rec, r)
	}
	r.step(pid, &rec, "cwd")
	if t, err := readlinkAt(dfd, "cwd", &s.link); err != nil {
		if !absent(err) {
			s.fail("cwd", err)
		}
	} else {
		rec.Cwd, rec.CwdB64 = str(string(t))
	}
	r.step(pid, &rec, "root")
	if t, err := readlinkAt(dfd, "root", &s.link); err != nil {
		if !absent(err) {
			s.fail("root", err)
		}
	} else {
		rec.Root, rec.RootB64 = str(string(t))
	}
	r.step(pid, &rec, "fd")
	fds := s.openFiles(dfd, pid, absent, r)
	if fds != nil {
		n := int32(len(fds))
		rec.FDCount = &n
	}

	if len(s.errs) > 0 {
		rec.Error = strings.Join(s.errs, "; ")
		// Is the process still there? The handle is on the process
		// first opened, so a newer one with its PID cannot answer.
		r.step(pid, &rec, "stat")
		if b, err := readShortAt(dfd, "stat", s.buf, 1<<16); err != nil {
			rec.Error = "exited during the scan: " + rec.Error
		} else if now, err := parseStat(b); err == nil && now.state == 'Z' && st.state != 'Z' {
			rec.Error = "exited during the scan (now a zombie): " + rec.Error
		}
	}
	if statOK && st.startTicks > s.p.listedTicks+1 {
		msg := fmt.Sprintf("pid reused during the scan: the process listed as %d ended, and this one, started %d ticks after boot, after the listing (%d), took its pid", pid, st.startTicks, s.p.listedTicks)
		if rec.Error != "" {
			msg += "; " + rec.Error
		}
		rec.Error = msg
	}
	s.emit(&rec, fds, job)
}

// stillStuck records, when a read of k's /proc files that an earlier
// snapshot gave up on is still pending (stuckReads), that the process is
// not read again, with the fields of rec read so far; true when so.
func (s *scanner) stillStuck(k procKey, rec *ProcessRecord) bool {
	what, ok := stuckReads.proc(k)
	if !ok {
		return false
	}
	file := "/proc/" + strconv.Itoa(k.pid)
	if what != "" {
		file += "/" + what
	}
	rec.Error = "not read: " + file + " still not answering since an earlier snapshot, which gave up on it (a hung file system, or a lock held by a thread stuck on one)"
	if k.startTicks != 0 {
		rec.Error += "; the fields of its stat, read now, are kept"
	}
	s.one.unread = append(s.one.unread, rec.PID)
	s.emit(rec, nil, -1)
	return true
}

// ids reads the real and effective user and group IDs from status.
func (s *scanner) ids(status []byte, rec *ProcessRecord) {
	for _, l := range []struct {
		key         string
		real, eff   **uint32
		rname, enam *string
		names       map[uint32]string
	}{
		{"\nUid:", &rec.UID, &rec.EUID, &rec.User, &rec.EUser, s.p.users},
		{"\nGid:", &rec.GID, &rec.EGID, &rec.Group, &rec.EGroup, s.p.groups},
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
func (s *scanner) openFiles(dfd, pid int, absent func(error) bool, r *procReader) []OpenFile {
	one := &s.one
	fdfd, _, err := openAt(dfd, "fd", unix.O_DIRECTORY)
	if err != nil {
		if !absent(err) {
			s.fail("fd", err)
			if !gone(err) {
				one.fdUnread = append(one.fdUnread, int32(pid))
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
		if len(fds)%1024 == 1023 {
			r.alive() // still going: not stuck
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
			one.sockets = append(one.sockets, sockOwner{ino, int32(pid)})
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
			one.fdUnread = append(one.fdUnread, int32(pid))
		}
		return nil
	}
	return fds
}

// emit encodes the records of one process into s.one; job >= 0 is the
// hash job whose result goes into the record later.
func (s *scanner) emit(rec *ProcessRecord, fds []OpenFile, job int) {
	one := &s.one
	if job >= 0 {
		var sha, errAt int
		one.procs, sha, errAt = rec.appendJSONMarks(one.procs)
		one.holes = append(one.holes, hashHole{sha: sha, err: errAt, job: job})
	} else {
		one.procs = rec.appendJSON(one.procs)
	}
	if fds == nil {
		fds = []OpenFile{}
	}
	one.files = appendJSON(one.files, &OpenFilesRecord{PID: rec.PID, StartTime: rec.StartTime, FDs: fds, Error: rec.Error})
}

// deletedSuffix is what the kernel appends to the path of a file whose
// name was removed (d_path(9) of an unlinked dentry).
const deletedSuffix = " (deleted)"

// exe fills the executable's identity from /proc/PID/exe (target is its
// link) and, when its hash is already known, the hash; it returns the hash
// job the record waits for, or -1. It never reads the file: the
// attributes come from what the kernel has cached (statxAt), the file
// system's type from mountinfo.
func (s *scanner) exe(dfd, pid int, target []byte, rec *ProcessRecord, r *procReader) int {
	var stx unix.Statx_t
	if err := statxAt(dfd, "exe", &stx); err != nil {
		rec.ExeError = "stat: " + err.Error()
		return -1
	}
	rec.ExeSize = int64(stx.Size)
	rec.ExeDevice = strconv.FormatUint(uint64(stx.Dev_major), 10) + ":" + strconv.FormatUint(uint64(stx.Dev_minor), 10)
	rec.ExeInode = stx.Ino
	r.step(pid, rec, "mountinfo")
	fsType := s.p.fs.lookup(&stx, rec.Namespaces.Mnt, dfd)
	r.step(pid, rec, "exe")
	rec.ExeDeleted = stx.Nlink == 0 || unlinkedName(dfd, target, &stx, fsType, rec.Namespaces.Mnt == s.p.ownMntNS)
	if remoteFS(fsType) {
		rec.ExeError = fmt.Sprintf("not hashed: on a %s file system (FUSE or network), whose server might not answer", fsType)
		return -1
	}
	if stx.Size > MaxExeHashSize {
		rec.ExeError = fmt.Sprintf("not hashed: %d bytes, larger than the limit of %d", stx.Size, MaxExeHashSize)
		return -1
	}
	key := fileKeyOfStatx(&stx)
	if sum, ok := knownHashes.get(key); ok {
		rec.ExeSHA256 = sum
		return -1
	}
	return s.p.exes.add(key, pid)
}

// unlinkedName reports whether target, the link of /proc/PID/exe (dfd is
// /proc/PID), says that the name the process was started by no longer
// names its file: the kernel appends " (deleted)" then, even when the file
// lives on under another hard link (so its link count is above 0). A file
// may also be named "… (deleted)" for real. On a local file system the
// name is looked up where the kernel's path starts (pathRoot), never
// leaving it and following no /proc magic link (RESOLVE_IN_ROOT,
// RESOLVE_NO_MAGICLINKS), nor a symbolic link at the last name: when it is
// the executable itself (same device and inode), the name was not removed.
// A hard link to the executable made under that very name after the
// removal reads so too: nothing a reader can see tells the two apart. On
// a FUSE or network file system, or one of unknown type, nothing is looked
// up and the suffix is taken as the kernel's.
func unlinkedName(dfd int, target []byte, stx *unix.Statx_t, fsType string, ownNS bool) bool {
	if !bytes.HasSuffix(target, []byte(deletedSuffix)) {
		return false
	}
	if stx.Nlink == 0 || remoteFS(fsType) || fsType == "" || target[0] != '/' {
		return true
	}
	root, err := pathRoot(dfd, ownNS)
	if err != nil {
		return true
	}
	defer unix.Close(root)
	var fd int
	for {
		fd, err = unix.Openat2(root, string(target), &unix.OpenHow{
			Flags:   unix.O_PATH | unix.O_NOFOLLOW | unix.O_CLOEXEC,
			Resolve: unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_MAGICLINKS,
		})
		if err != unix.EINTR && err != unix.EAGAIN {
			break
		}
	}
	if err != nil {
		return true
	}
	defer unix.Close(fd)
	var st unix.Statx_t
	if statxAt(fd, "", &st) != nil {
		return true
	}
	return st.Ino != stx.Ino || st.Dev_major != stx.Dev_major || st.Dev_minor != stx.Dev_minor
}

// pathRoot opens (O_PATH) the directory that the kernel's paths of a
// process's files (/proc/PID/exe, cwd, fd/*) start from, as the agent
// reads them: the agent's root for a process in the agent's mount
// namespace, chrooted or not; else the root of the process's mount
// namespace, reached from the process's root (dfd is /proc/PID) by going
// up as many levels as /proc/PID/root has names (".." stops at the
// namespace's root).
func pathRoot(dfd int, ownNS bool) (int, error) {
	const flags = unix.O_PATH | unix.O_DIRECTORY | unix.O_CLOEXEC
	if ownNS {
		return unix.Open("/", flags, 0)
	}
	var link []byte
	root, err := readlinkAt(dfd, "root", &link)
	if err != nil {
		return -1, err
	}
	if len(root) == 0 || root[0] != '/' || bytes.HasSuffix(root, []byte(deletedSuffix)) {
		return -1, fmt.Errorf("root %q: not a path", root)
	}
	path := "root"
	if len(root) > 1 {
		path += strings.Repeat("/..", bytes.Count(bytes.Trim(root, "/"), []byte{'/'})+1)
	}
	return unix.Openat(dfd, path, flags, 0)
}

// statxAt stats path relative to dirfd from what the kernel has cached
// (AT_STATX_DONT_SYNC): FUSE, NFS and Ceph then do not ask their server;
// 9P (v9fs) does unless mounted with cache=loose or fscache, as may file
// systems that ignore the flag.
func statxAt(dirfd int, path string, stx *unix.Statx_t) error {
	flags := unix.AT_STATX_DONT_SYNC
	if path == "" {
		flags |= unix.AT_EMPTY_PATH
	}
	for {
		err := unix.Statx(dirfd, path, flags, unix.STATX_BASIC_STATS|unix.STATX_MNT_ID, stx)
		if err != unix.EINTR {
			return err
		}
	}
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
