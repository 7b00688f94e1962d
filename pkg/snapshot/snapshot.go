// Package snapshot captures a host's volatile state without writing to disk.
//
// Take collects, in order of volatility (RFC 3227 §2.1), and returns as a
// signed evidence bundle (pkg/evidence) built in memory. The clocks and
// the host's identity come first; then the process listing, and everything
// else at once, the most volatile started first: the socket tables,
// conntrack, the process scan, routes and interfaces, resources, sessions,
// modules, mounts, and the firewall once the processes are listed and the
// socket tables read, so that the commands it runs are in neither. Only
// the connections wait for the process scan (each socket's owners come
// from the processes' fd tables), and only until the deadline; the
// executables are hashed in the scan's last phase, and processes.jsonl is
// written after it. Collection runs on every CPU, and each artifact is
// compressed into the bundle as it is collected. The bundle holds:
//
//	artifacts/clock.jsonl        ClockRecord: clocks, timezone, controller offset
//	artifacts/host.jsonl         HostRecord: host name, machine-id, boot-id, kernel,
//	                             OS release, uptime, DMI and cloud instance ID
//	artifacts/connections.jsonl  ConnectionRecord: TCP, UDP, UDP-Lite, raw, ping,
//	                             unix, packet and netlink sockets of every network
//	                             namespace, with every PID holding each
//	artifacts/conntrack.jsonl    ConntrackRecord: connection tracking, per namespace
//	artifacts/processes.jsonl    ProcessRecord: every process, its executable hashed
//	artifacts/open_files.jsonl   OpenFilesRecord: every process's open descriptors
//	artifacts/resources.jsonl    ResourcesRecord: load, memory, swap, CPU time
//	artifacts/routes.jsonl       RouteRecord: routes of every table, per namespace
//	artifacts/neighbours.jsonl   NeighbourRecord: ARP and NDP caches, per namespace
//	artifacts/interfaces.jsonl   InterfaceRecord: links, addresses, counters
//	artifacts/sessions.jsonl     SessionRecord: utmp, wtmp, btmp, logind sessions
//	artifacts/modules.jsonl      ModuleRecord: loaded kernel modules
//	artifacts/mounts.jsonl       MountRecord: mount table of every mount namespace
//	artifacts/firewall.jsonl     FirewallRecord: iptables-save, ip6tables-save,
//	                             nft list ruleset, their output under raw/exec/
//	raw/...                      the kernel text records were parsed from, by its
//	                             path: raw/proc/uptime, raw/etc/passwd, and per
//	                             network namespace raw/netns/<inode>/proc/net/tcp, …
//	                             per mount namespace raw/mntns/<inode>/proc/self/mountinfo
//
// Every artifact's manifest entry names its source (the man page or kernel
// interface) and its collection errors.
//
// Invariants a caller can rely on:
//   - Nothing is written to disk: no temporary files, no caches. Every file
//     is opened with O_NOATIME where the kernel allows it (the agent runs
//     as root, so everywhere), so reading evidence, executables included,
//     does not change an inode's access time. Two reads cannot take the
//     flag: readlink(2) of /etc/localtime, and the exec of the firewall
//     tools, whose own access times change as with any run of them.
//   - Partial evidence rather than none: a failure to collect one artifact
//     is recorded in that artifact's errors and never aborts the snapshot.
//     When its time runs out, Take stops collecting, keeps what it has, and
//     by about ctx's deadline returns a bundle in which every artifact that
//     was not complete carries an error starting with CutShort. Take fails
//     only when no bundle can be built or signed.
//   - The process scan never waits for a read that does not return (a
//     hung FUSE or NFS server, a lock held by a thread stuck on one): it
//     gives up on a process whose read has not answered within
//     ProcReadTimeout, records it as "not read: /proc/PID/<file> did not
//     answer …" with the fields read before that file, and its other
//     readers go on with the rest, one started in place of the stuck one
//     while fewer than 16 such reads are pending. When every reader is
//     stuck and none may be started, the processes not read yet are left
//     out, and the artifact's errors count them. At the deadline the scan
//     gives up on every read still pending, and the processes not read by
//     then are left out, cut short (with a deadline closer than
//     ProcReadTimeout, that includes the rest of a stuck process's chunk
//     of 32 PIDs). The connections are then written with the owners known.
//     A read given up on is left to its goroutine (an OS thread) until it
//     returns, and remembered by its process (pid, start_ticks): until it
//     returns, later snapshots taken by the same process (the agent's
//     collector) skip that process at once, "not read: … still not
//     answering since an earlier snapshot", so that stuck reads do not
//     pile up from one snapshot to the next.
//   - An executable is never hashed on a FUSE or network file system. Its
//     type comes from mountinfo, read from memory through a process whose
//     root is its mount namespace's; its attributes from the kernel's
//     cache (AT_STATX_DONT_SYNC), which FUSE, NFS and Ceph answer without
//     asking their server, while 9P without cache=loose or fscache asks it
//     even then: a 9P server that does not answer costs that process's
//     record, as above. Elsewhere each file gets ExeHashTimeout, and is no
//     longer read once the snapshot's time runs out. A file whose read was
//     given up on is remembered by device and inode until that read
//     returns, and not read again meanwhile; with 16 such reads pending, no
//     more files are read for a hash until one returns.
//   - A process is identified by (boot_id, pid, start_ticks). Each process
//     is read through one open handle on its /proc directory, so one record
//     never mixes two processes; one that exits while it is read keeps what
//     was read and says "exited during the scan"; one whose PID was reused
//     between the listing and the read says "pid reused during the scan".
//     start_time is the boot time, rounded to the 10 ms clock tick, plus
//     start_ticks: the same in every snapshot of one boot until the clock
//     is stepped.
//   - Network state is read in every network namespace on the host: one
//     process per distinct /proc/[pid]/ns/net (or, for a namespace that
//     only a bind mount holds, a thread that joins it with setns(2)).
//     Records carry the namespace's inode (netns) and name.
//   - Data comes from the agent's own view: /proc of its PID namespace,
//     whatever HOST_PROC says. User and group names come from /etc/passwd
//     and /etc/group, never NSS, which could reach the network. The cloud
//     instance ID comes from local files, never a metadata endpoint.
//   - The snapshot never loads a kernel module: conntrack is read only
//     when nf_conntrack_netlink is already there, unix sockets through
//     sock_diag only when unix_diag is.
//   - Unix sockets come from sock_diag(7), with their exact names:
//     /proc/net/unix prints a name as it is, so a name holding a newline
//     can add made-up lines there. It is kept as raw text, and parsed
//     (strictly, its rows marked unverified) only without sock_diag.
//
// Bytes that are not UTF-8. Values the kernel hands over as bytes — argv,
// comm, paths, environment variable names, unix socket names, utmp fields —
// are written as JSON strings, in which encoding/json turns each invalid
// byte into U+FFFD. Whenever that loses something, and only then, a sibling
// field named after the original with "_b64" appended holds the exact bytes
// in standard base64 (RFC 4648 §4, padded): for a string (exe → exe_b64)
// the whole value; for a list (cmdline → cmdline_b64, env_names →
// env_names_b64) a list of the same length with every element encoded, so
// argv round-trips byte for byte: decode each element of cmdline_b64 when
// it is present, else take cmdline as it is.
package snapshot

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/cordon-ir/cordon/pkg/evidence"
	"github.com/cordon-ir/cordon/pkg/policy"
	"golang.org/x/crypto/ssh"
)

// ClockProbeBudget is how long Take lets Request.ClockProbe run.
const ClockProbeBudget = 500 * time.Millisecond

// WrapUpGrace is how long Take leaves the collectors, once they have been
// told to stop, to write what they have gathered before it cuts them off.
// When ctx has a deadline, they are told to stop WrapUpGrace (at most a
// fifth of the time left) before it, so that Take returns by about the
// deadline; when ctx is cancelled, Take returns about WrapUpGrace later.
const WrapUpGrace = 250 * time.Millisecond

// CutShort starts every artifact error that says the artifact is
// incomplete because Take's context ended, e.g. "cut short: context
// deadline exceeded: 4120 of 10012 processes read".
const CutShort = "cut short"

// MaxExeHashSize is the largest executable Take hashes, in bytes; a larger
// one gets exe_error instead of exe_sha256.
const MaxExeHashSize = 256 << 20

// ProcReadTimeout is how long the process scan waits for one read of a
// process's /proc files (its stat, cmdline, environ, …) before it gives up
// on that process. Such a read can block on a file system that does not
// answer (a stalled FUSE server, a hard-mounted NFS server that is down):
// when a thread of the process stuck on one holds its memory map lock, or,
// before Linux 4.17, when its argv or environment is mapped from a file on
// one. The read is left to its goroutine, which ends when the read
// returns; the process is recorded as "not read: …", the scan goes on
// with the rest, and until the read returns, later snapshots in this
// process skip that process at once.
const ProcReadTimeout = time.Second

// ExeHashTimeout bounds the hashing of one executable. Hashing is the last
// phase of the process scan, after the process table and the connections;
// an executable not read within ExeHashTimeout (a slow disk, a file system
// that stopped answering) is left unhashed, with exe_error saying so, and
// the goroutine reading it is left to end when its read returns; until it
// does, later snapshots in this process do not read that file again.
const ExeHashTimeout = 3 * time.Second

// Request says what snapshot to take and who signs it.
type Request struct {
	// SnapshotID, OrderID, Incident and Reason go into the manifest as
	// they are.
	SnapshotID, OrderID, Incident, Reason string
	// HostName is the host's Cordon name.
	HostName string
	// AgentVersion is the agent's version string.
	AgentVersion string
	// Signer is the agent key (ed25519); it signs the manifest.
	Signer ssh.Signer
	// ClockProbe, when set, measures the controller's clock minus the
	// host's; it must return within its ctx. Take runs it beside the
	// collection with a budget of ClockProbeBudget; a failure is recorded
	// in the manifest (clock_offset_error), not fatal.
	ClockProbe func(ctx context.Context) (time.Duration, error)
	// Sandbox goes into the manifest as it is: how the agent was kept from
	// writing to disk, and which process collected.
	Sandbox string
	// Policy, for a snapshot before an isolation, is the policy the agent
	// applies next; it goes into the manifest as it is.
	Policy *policy.Policy
}

// Artifact names, as they appear in the manifest (artifacts/<name>.jsonl),
// in the order Take collects them.
const (
	ClockArtifact       = "clock"
	HostArtifact        = "host"
	ConnectionsArtifact = "connections"
	ConntrackArtifact   = "conntrack"
	ProcessesArtifact   = "processes"
	OpenFilesArtifact   = "open_files"
	ResourcesArtifact   = "resources"
	RoutesArtifact      = "routes"
	NeighboursArtifact  = "neighbours"
	InterfacesArtifact  = "interfaces"
	SessionsArtifact    = "sessions"
	ModulesArtifact     = "modules"
	MountsArtifact      = "mounts"
	FirewallArtifact    = "firewall"
)

// sources says where each artifact comes from, for the manifest.
var sources = []struct{ name, source string }{
	{ClockArtifact, "clock_gettime(2) CLOCK_REALTIME, CLOCK_MONOTONIC, CLOCK_BOOTTIME; /proc/uptime (proc(5)); TZ, /etc/localtime (tzfile(5)); controller clock probe"},
	{HostArtifact, "uname(2); /etc/machine-id (machine-id(5)); /proc/sys/kernel/random/boot_id, osrelease, version, tainted (proc(5)); /etc/os-release (os-release(5)); /proc/uptime; /sys/class/dmi/id/* (SMBIOS); /var/lib/cloud/data/instance-id (cloud-init)"},
	{ConnectionsArtifact, "/proc/[pid]/net/tcp, tcp6, udp, udp6, udplite, udplite6, raw, raw6, icmp, icmp6, packet, netlink (proc(5)) of one process per network namespace (/proc/[pid]/ns/net, namespaces(7)), or of a thread joined to it with setns(2); unix sockets from sock_diag(7) (UNIX_DIAG_NAME, UNIX_DIAG_PEER, UNIX_DIAG_UID), /proc/[pid]/net/unix kept as raw text; owners from /proc/[pid]/fd (proc(5))"},
	{ConntrackArtifact, "nfnetlink_conntrack (IPCTNL_MSG_CT_GET dump, as conntrack(8) -L) in each network namespace"},
	{ProcessesArtifact, "/proc/[pid]/stat, status, cmdline, environ (names only), cgroup, exe, cwd, root, ns/*, fd (proc(5)), each process read through one open /proc/[pid] handle; executable SHA-256 read through /proc/[pid]/exe with O_NOATIME (open(2)), each file within ExeHashTimeout and never on a FUSE or network file system (type from /proc/[pid]/mountinfo), or reused from an earlier snapshot by the same collector when the file's device, inode, size, mtime and ctime are unchanged (statx(2), AT_STATX_DONT_SYNC); names from /etc/passwd (passwd(5)) and /etc/group (group(5))"},
	{OpenFilesArtifact, "readlink(2) of /proc/[pid]/fd/* (proc(5))"},
	{ResourcesArtifact, "/proc/loadavg, /proc/meminfo, /proc/stat (proc(5)) through gopsutil (load.Avg, mem.VirtualMemory, mem.SwapMemory, cpu.Times)"},
	{RoutesArtifact, "rtnetlink(7) RTM_GETROUTE, every table, in each network namespace; raw /proc/[pid]/net/route, ipv6_route (proc(5))"},
	{NeighboursArtifact, "rtnetlink(7) RTM_GETNEIGH in each network namespace; raw /proc/[pid]/net/arp (proc(5))"},
	{InterfacesArtifact, "rtnetlink(7) RTM_GETLINK, RTM_GETADDR in each network namespace; raw /proc/[pid]/net/dev (proc(5))"},
	{SessionsArtifact, "/run/utmp, /var/log/wtmp, /var/log/btmp (struct utmp, utmp(5)), read with O_NOATIME; /run/systemd/sessions/* (systemd-logind)"},
	{ModulesArtifact, "/proc/modules (proc(5), lsmod(8))"},
	{MountsArtifact, "/proc/[pid]/mountinfo (proc(5)) of one process per mount namespace"},
	{FirewallArtifact, "iptables-save(8), ip6tables-save(8), nft(8) list ruleset, run in the agent's own network namespace only (containers' namespaces have their own rulesets, not read), before any change of an isolate order"},
}

// HostIdentity reads the identity of the host the caller runs on, from
// uname(2), /etc/machine-id, /proc/sys/kernel/random/boot_id and
// /proc/sys/kernel/osrelease. A field that cannot be read is "".
func HostIdentity() Identity {
	id, _, _ := readIdentity()
	return id
}

// rawFile is raw text read from a host file, kept for the bundle.
type rawFile struct {
	path string
	data []byte
}

// collection is one Take in progress: the builder, one writer per JSONL
// artifact, and the raw artifacts being written.
type collection struct {
	ctx context.Context
	b   *evidence.Builder
	art map[string]*artifact

	mu      sync.Mutex
	raws    []*evidence.ArtifactWriter
	closing bool // no more raw artifacts: Take is finishing

	clock ClockRecord
	// bootEpoch is the wall-clock time of boot that process start times
	// count from (measureBootEpoch).
	bootEpoch time.Time
}

// artifact is one JSONL artifact being written.
type artifact struct {
	c    *collection
	name string
	w    *evidence.ArtifactWriter
}

// errorf records a collection error with the artifact.
func (a *artifact) errorf(format string, args ...any) {
	a.w.AddError(fmt.Sprintf(format, args...))
}

// cutShort records that the artifact is incomplete because ctx ended;
// what says how far it got.
func (a *artifact) cutShort(what string) {
	msg := CutShort + ": " + context.Cause(a.c.ctx).Error()
	if what != "" {
		msg += ": " + what
	}
	a.w.AddError(msg)
}

// encode writes one record; false means the artifact was closed (cut off)
// and the caller should stop.
func (a *artifact) encode(v any) bool {
	if err := a.w.Encode(v); err != nil {
		if !errors.Is(err, evidence.ErrArtifactClosed) {
			a.errorf("encode record: %v", err)
		}
		return false
	}
	return true
}

// lines writes pre-encoded records; false as for encode.
func (a *artifact) lines(p []byte) bool {
	if len(p) == 0 {
		return true
	}
	return a.w.WriteLines(p) == nil
}

// close closes the artifact; closing one already cut off is fine.
func (a *artifact) close() {
	if err := a.w.Close(); err != nil && !errors.Is(err, evidence.ErrArtifactClosed) {
		a.w.Cut(err.Error())
	}
}

// raw adds raw text for the artifact, as raw/<path>.
func (a *artifact) raw(path string, data []byte) {
	w := a.rawWriter(path)
	if w == nil {
		return
	}
	if _, err := w.Write(data); err != nil && !errors.Is(err, evidence.ErrArtifactClosed) {
		a.errorf("raw %s: %v", path, err)
	}
	w.Close()
}

// rawWriter starts raw/<path> for the artifact; nil when it cannot (the
// reason is recorded with the artifact).
func (a *artifact) rawWriter(path string) *evidence.ArtifactWriter {
	c := a.c
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closing {
		return nil
	}
	w, err := c.b.CreateRaw(path, "raw text of "+path+", for artifacts/"+a.name+".jsonl")
	if err != nil {
		a.errorf("raw %s: %v", path, err)
		return nil
	}
	c.raws = append(c.raws, w)
	return w
}

// Take captures the host's volatile state and returns it as a signed
// evidence bundle, built in memory. See the package documentation for what
// it collects and its guarantees. It returns the evidence gathered so far,
// artifacts cut short marked so in their errors, by about ctx's deadline
// (see WrapUpGrace), or about WrapUpGrace after ctx is cancelled; add the
// few milliseconds it takes to sign. It returns an error only when req has
// no signer or the bundle cannot be built or signed.
func Take(ctx context.Context, req Request) (*evidence.Bundle, error) {
	if req.Signer == nil {
		return nil, errors.New("snapshot: no signer")
	}
	started := time.Now()
	probe := startClockProbe(ctx, req.ClockProbe)

	// In order of volatility: the clocks, then who the host is, both
	// quick and always collected.
	clock, clockRaws, clockErrs := collectClock()
	host, hostRaws, hostErrs := collectHost(req.HostName)

	b := evidence.NewBuilder(evidence.Manifest{
		SnapshotID: req.SnapshotID,
		OrderID:    req.OrderID,
		Incident:   req.Incident,
		Reason:     req.Reason,
		Host: evidence.Host{
			Name:      req.HostName,
			Hostname:  host.Hostname,
			MachineID: host.MachineID,
			BootID:    host.BootID,
		},
		AgentVersion: req.AgentVersion,
		StartedAt:    started,
		Sandbox:      req.Sandbox,
		Policy:       req.Policy,
	})
	// The collectors stop at cctx, early enough to wrap up by ctx's
	// deadline.
	cctx, grace := ctx, WrapUpGrace
	if dl, ok := ctx.Deadline(); ok {
		grace = min(WrapUpGrace, max(time.Until(dl)/5, 0))
		var cancel context.CancelFunc
		cctx, cancel = context.WithDeadline(ctx, dl.Add(-grace))
		defer cancel()
	}
	c := &collection{ctx: cctx, b: b, art: map[string]*artifact{}, clock: clock}
	for _, s := range sources {
		w, err := b.CreateJSONL(s.name, s.source)
		if err != nil {
			return nil, fmt.Errorf("snapshot: %w", err)
		}
		c.art[s.name] = &artifact{c: c, name: s.name, w: w}
	}
	for _, r := range clockRaws {
		c.art[ClockArtifact].raw(r.path, r.data)
	}
	ha := c.art[HostArtifact]
	ha.encode(host)
	for _, r := range hostRaws {
		ha.raw(r.path, r.data)
	}
	for _, e := range hostErrs {
		ha.errorf("%s", e)
	}
	ha.close()

	done := make(chan struct{})
	go func() {
		defer close(done)
		c.run()
	}()
	select {
	case <-done:
	case <-cctx.Done():
		t := time.NewTimer(grace)
		select {
		case <-done:
		case <-t.C:
		}
		t.Stop()
	}
	// Whatever is still open was cut off: a collector stuck in a read
	// (a hung file system) or not started. Its goroutine ends when the
	// read returns; its writes fail from now on.
	c.mu.Lock()
	c.closing = true
	raws := c.raws
	c.mu.Unlock()
	reason := CutShort + ": still being collected when the snapshot's time ran out"
	if err := context.Cause(cctx); err != nil {
		reason = CutShort + ": " + err.Error() + ": still being collected when the snapshot's time ran out"
	}
	for _, s := range sources[1:] {
		c.art[s.name].w.Cut(reason)
	}
	for _, w := range raws {
		w.Cut(reason)
	}

	offset, offsetErr := probe.wait()
	if offsetErr != nil {
		clock.ControllerOffsetError = offsetErr.Error()
	} else {
		ns := offset.Nanoseconds()
		clock.ControllerOffsetNS = &ns
	}
	ca := c.art[ClockArtifact]
	ca.encode(clock)
	for _, e := range clockErrs {
		ca.errorf("%s", e)
	}
	ca.close()
	b.UpdateManifest(func(m *evidence.Manifest) {
		m.ClockOffsetNS, m.ClockOffsetError = clock.ControllerOffsetNS, clock.ControllerOffsetError
	})
	bundle, err := b.Finish(req.Signer, time.Now())
	if err != nil {
		return nil, fmt.Errorf("snapshot: %w", err)
	}
	return bundle, nil
}

// clockProbe runs Request.ClockProbe beside the collection.
type clockProbe struct {
	done     chan probeResult
	cancel   context.CancelFunc
	deadline time.Time
}

type probeResult struct {
	d   time.Duration
	err error
}

func startClockProbe(ctx context.Context, fn func(context.Context) (time.Duration, error)) *clockProbe {
	if fn == nil {
		return nil
	}
	pctx, cancel := context.WithTimeout(ctx, ClockProbeBudget)
	deadline, _ := pctx.Deadline()
	p := &clockProbe{done: make(chan probeResult, 1), cancel: cancel, deadline: deadline}
	go func() {
		d, err := fn(pctx)
		p.done <- probeResult{d, err}
	}()
	return p
}

// probeGrace is how long past its budget Take waits for a ClockProbe that
// ignores its context before giving up on it.
const probeGrace = 100 * time.Millisecond

// wait returns the probe's result. A probe that overruns its budget by
// more than probeGrace is abandoned: its goroutine ends when it returns.
func (p *clockProbe) wait() (time.Duration, error) {
	if p == nil {
		return 0, errors.New("no clock probe configured")
	}
	defer p.cancel()
	grace := time.NewTimer(time.Until(p.deadline) + probeGrace)
	defer grace.Stop()
	select {
	case r := <-p.done:
		if r.err != nil {
			return 0, fmt.Errorf("clock probe: %w", r.err)
		}
		return r.d, nil
	case <-grace.C:
		return 0, fmt.Errorf("clock probe did not return within %v", ClockProbeBudget)
	}
}
