package snapshot

import (
	"sync"
	"sync/atomic"
)

// maxStuckReaders bounds the goroutines (each blocked in a system call, so
// each holding an OS thread) left behind in reads of /proc files that did
// not return, counted across the snapshots of this process (stuckReads).
// Past it a scan starts no reader to replace one it gives up on; its
// other readers go on with the rest. A variable for tests.
var maxStuckReaders = 16

// maxStuckHashes bounds, in the same way, the goroutines left behind in
// reads of executables that did not return. Past it no executable is read
// for a hash until one of those reads returns.
const maxStuckHashes = 16

// stuckReads remembers the reads that a snapshot gave up on and that have
// not returned yet: a hung FUSE or NFS server, or a lock held by a thread
// stuck on one, can hold them for as long as it lasts. A later snapshot in
// the same process (the agent's collector takes many) skips what is still
// pending at once, instead of waiting for it again and leaving one more
// goroutine blocked on it.
var stuckReads = &pendingReads{procs: map[procKey]pendingProc{}, files: map[exeKey]int{}}

// procKey identifies a process: its PID and start time in clock ticks
// after boot (0 when its stat was not read).
type procKey struct {
	pid        int
	startTicks uint64
}

// pendingProc is a process with reads pending: what the first was
// reading, and how many.
type pendingProc struct {
	what string
	n    int
}

type pendingReads struct {
	mu     sync.Mutex
	procs  map[procKey]pendingProc
	files  map[exeKey]int
	nProcs atomic.Int64 // reads pending in procs
	nFiles atomic.Int64 // reads pending in files
}

// addProc notes a read of /proc/PID/what given up on.
func (p *pendingReads) addProc(k procKey, what string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	e, ok := p.procs[k]
	if !ok {
		e.what = what
	}
	e.n++
	p.procs[k] = e
	p.nProcs.Add(1)
}

// doneProc notes that a read noted by addProc returned.
func (p *pendingReads) doneProc(k procKey) {
	p.mu.Lock()
	defer p.mu.Unlock()
	e, ok := p.procs[k]
	if !ok {
		return
	}
	if e.n--; e.n == 0 {
		delete(p.procs, k)
	} else {
		p.procs[k] = e
	}
	p.nProcs.Add(-1)
}

// proc returns the file of /proc/PID a pending read of k was reading.
func (p *pendingReads) proc(k procKey) (string, bool) {
	if p.nProcs.Load() == 0 {
		return "", false
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	e, ok := p.procs[k]
	return e.what, ok
}

// addFile notes a read of an executable given up on.
func (p *pendingReads) addFile(k exeKey) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.files[k]++
	p.nFiles.Add(1)
}

// doneFile notes that a read noted by addFile returned.
func (p *pendingReads) doneFile(k exeKey) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.files[k] == 0 {
		return
	}
	if p.files[k]--; p.files[k] == 0 {
		delete(p.files, k)
	}
	p.nFiles.Add(-1)
}

// file reports whether a read of k is pending.
func (p *pendingReads) file(k exeKey) bool {
	if p.nFiles.Load() == 0 {
		return false
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.files[k] > 0
}
