// Package snapshot captures a host's volatile state without writing to disk.
//
// Take collects, in order of volatility (RFC 3227 §2.1): the clocks, the
// host's identity, network connections with their owning processes, and the
// process table, and returns them as a signed evidence bundle
// (pkg/evidence) built in memory. Each artifact keeps its parsed records
// (artifacts/*.jsonl) and, where cheap, the raw kernel text they came from
// (raw/proc/net/tcp, …).
//
// Invariants a caller can rely on:
//   - Nothing is written to disk: no temporary files, no caches. Files that
//     live on disk (/etc/machine-id, /etc/passwd) are opened with O_NOATIME
//     where the kernel allows it, so reading them does not change their
//     inodes.
//   - A failure to collect one artifact is recorded in that artifact's
//     errors in the manifest; it never aborts the snapshot. A process that
//     exits mid-scan is recorded as such. Take fails only when it cannot
//     build a bundle at all or its context ends.
//   - Data comes from the agent's own view: /proc of its PID and network
//     namespace, whatever HOST_PROC says.
package snapshot

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/cordon-ir/cordon/pkg/evidence"
	"golang.org/x/crypto/ssh"
)

// ClockProbeBudget is how long Take lets Request.ClockProbe run.
const ClockProbeBudget = 500 * time.Millisecond

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
}

// Artifact names and sources, as they appear in the manifest.
const (
	ClockArtifact       = "clock"
	HostArtifact        = "host"
	ConnectionsArtifact = "connections"
	ProcessesArtifact   = "processes"

	clockSource       = "clock_gettime(2) CLOCK_REALTIME, CLOCK_MONOTONIC, CLOCK_BOOTTIME; /proc/uptime (proc(5)); TZ, /etc/localtime (tzfile(5)); controller clock probe"
	hostSource        = "uname(2) nodename; /etc/machine-id (machine-id(5)); /proc/sys/kernel/random/boot_id, /proc/sys/kernel/osrelease (proc(5))"
	connectionsSource = "/proc/net/tcp, /proc/net/tcp6, /proc/net/udp, /proc/net/udp6, /proc/[pid]/fd (proc(5)), via gopsutil net.ConnectionsWithoutUidsWithContext(\"inet\"); uid from the same tables read just before"
	processesSource   = "/proc/[pid]/stat (comm, ppid, starttime), /proc/[pid]/cmdline, /proc/[pid]/exe, /proc/[pid]/status (uid) (proc(5)); pids, exe and uid via gopsutil process; start times counted from CLOCK_REALTIME - CLOCK_BOOTTIME; user names from /etc/passwd (passwd(5))"
)

// ClockRecord is the one record of artifacts/clock.jsonl: the host's clocks,
// read back to back at the start of the snapshot.
type ClockRecord struct {
	// SystemTime is CLOCK_REALTIME in UTC, RFC 3339 with nanoseconds;
	// SystemTimeUnixNS the same instant in nanoseconds since the Unix epoch.
	SystemTime time.Time `json:"system_time"`
	// SystemTimeUnixNS is SystemTime in nanoseconds since the Unix epoch.
	SystemTimeUnixNS int64 `json:"system_time_unix_ns"`
	// MonotonicNS is CLOCK_MONOTONIC (time since boot, not counting
	// suspend), BoottimeNS CLOCK_BOOTTIME (counting suspend), in
	// nanoseconds.
	MonotonicNS int64 `json:"monotonic_ns"`
	// BoottimeNS is CLOCK_BOOTTIME in nanoseconds; SystemTimeUnixNS minus
	// BoottimeNS is the wall-clock time of boot.
	BoottimeNS int64 `json:"boottime_ns"`
	// Timezone is the local zone's abbreviation ("UTC", "CET") and
	// UTCOffsetSeconds its offset east of UTC at SystemTime.
	Timezone string `json:"timezone"`
	// UTCOffsetSeconds is the local zone's offset east of UTC, in seconds.
	UTCOffsetSeconds int `json:"utc_offset_seconds"`
	// TZ is the agent's TZ environment variable; LocaltimeLink the target
	// of the /etc/localtime symlink. Either may be empty.
	TZ string `json:"tz"`
	// LocaltimeLink is the target of /etc/localtime, "" when not a link.
	LocaltimeLink string `json:"localtime_link"`
	// ControllerOffsetNS is the controller's clock minus the host's in
	// nanoseconds, null when not measured; ControllerOffsetError says why.
	ControllerOffsetNS *int64 `json:"controller_offset_ns"`
	// ControllerOffsetError says why ControllerOffsetNS is null.
	ControllerOffsetError string `json:"controller_offset_error,omitempty"`
}

// Identity identifies a host.
type Identity struct {
	// Hostname is the kernel's host name (os.Hostname).
	Hostname string `json:"hostname"`
	// MachineID is /etc/machine-id (machine-id(5)), 32 hex digits.
	MachineID string `json:"machine_id"`
	// BootID is /proc/sys/kernel/random/boot_id, a UUID that changes on
	// every boot.
	BootID string `json:"boot_id"`
	// Kernel is the kernel release, /proc/sys/kernel/osrelease.
	Kernel string `json:"kernel"`
}

// HostRecord is the one record of artifacts/host.jsonl.
type HostRecord struct {
	// Name is the host's Cordon name (Request.HostName).
	Name string `json:"name"`
	Identity
}

// ConnectionRecord is one record of artifacts/connections.jsonl: a TCP or
// UDP socket, IPv4 or IPv6, listening ones included.
type ConnectionRecord struct {
	// Family is "inet" or "inet6"; an IPv4 peer of an inet6 socket shows
	// as a dotted IPv4 address.
	Family string `json:"family"`
	// Type is "tcp" or "udp".
	Type string `json:"type"`
	// LocalAddr is the local IP address in text form; "0.0.0.0" or "::"
	// when bound to every address.
	LocalAddr string `json:"local_addr"`
	// LocalPort is the local port; 0 when unbound.
	LocalPort uint16 `json:"local_port"`
	// RemoteAddr is the peer's IP address; "0.0.0.0" or "::" when not
	// connected.
	RemoteAddr string `json:"remote_addr"`
	// RemotePort is the peer's port; 0 when not connected.
	RemotePort uint16 `json:"remote_port"`
	// State is the TCP state ("LISTEN", "ESTABLISHED", "TIME_WAIT", …);
	// "NONE" for UDP.
	State string `json:"state"`
	// PID is a process holding the socket in its fd table; 0 when unknown,
	// e.g. in TIME_WAIT or held only by processes in another PID
	// namespace. When several processes share the socket (after fork),
	// only the first found is given.
	PID int32 `json:"pid"`
	// UID owns the socket, from the uid column of /proc/net/*; null when
	// the socket was not found there.
	UID *uint32 `json:"uid"`
}

// ProcessRecord is one record of artifacts/processes.jsonl.
type ProcessRecord struct {
	// PID is the process ID (in the agent's PID namespace).
	PID int32 `json:"pid"`
	// PPID is the parent's process ID; 0 for init and kthreadd.
	PPID int32 `json:"ppid"`
	// Name is the kernel's comm (field 2 of /proc/[pid]/stat, at most 15
	// bytes), never derived from argv, which a process can rewrite.
	Name string `json:"name"`
	// Exe is the target of /proc/[pid]/exe; "" for kernel threads and
	// zombies, " (deleted)" appended when the file was deleted.
	Exe string `json:"exe"`
	// Cmdline is argv as the process presents it in /proc/[pid]/cmdline,
	// empty arguments kept; empty for kernel threads and zombies.
	Cmdline []string `json:"cmdline"`
	// User is the name of UID in /etc/passwd, "" when not there.
	User string `json:"user"`
	// UID is the real user ID; null when it could not be read.
	UID *uint32 `json:"uid"`
	// StartTime is when the process started, UTC, RFC 3339: boot time
	// (CLOCK_REALTIME − CLOCK_BOOTTIME at the snapshot) plus starttime from
	// /proc/[pid]/stat, so 10 ms resolution; "" when unknown.
	StartTime string `json:"start_time"`
	// Error says what could not be read; it starts with "exited during
	// the scan" for a process that vanished mid-scan.
	Error string `json:"error,omitempty"`
}

// HostIdentity reads the identity of the host the caller runs on, from
// os.Hostname, /etc/machine-id, /proc/sys/kernel/random/boot_id and
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

// collected holds one artifact's results before they go into the bundle.
type collected struct {
	records any
	raws    []rawFile
	errs    []string
}

// Take captures the host's volatile state and returns it as a signed
// evidence bundle, built in memory. See the package documentation for what
// it collects and its guarantees. It returns an error only when req cannot
// be signed or built into a bundle, or when ctx ends (then ctx.Err(),
// wrapped).
func Take(ctx context.Context, req Request) (*evidence.Bundle, error) {
	if req.Signer == nil {
		return nil, errors.New("snapshot: no signer")
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("snapshot: %w", err)
	}
	started := time.Now()
	probe := startClockProbe(ctx, req.ClockProbe)

	// In order of volatility.
	clock, clockRaws, clockErrs := collectClock()
	host, hostRaws, hostErrs := readIdentity()
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("snapshot: %w", err)
	}
	conns := collectConnections(ctx)
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("snapshot: %w", err)
	}
	var bootEpoch time.Time
	if clock.BoottimeNS > 0 {
		bootEpoch = time.Unix(0, clock.SystemTimeUnixNS-clock.BoottimeNS)
	}
	procs := collectProcesses(ctx, bootEpoch)
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("snapshot: %w", err)
	}
	offset, offsetErr := probe.wait()
	finished := time.Now()

	m := evidence.Manifest{
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
	}
	if offsetErr != nil {
		m.ClockOffsetError = offsetErr.Error()
		clock.ControllerOffsetError = m.ClockOffsetError
	} else {
		ns := offset.Nanoseconds()
		m.ClockOffsetNS = &ns
		clock.ControllerOffsetNS = &ns
	}

	b := evidence.NewBuilder(m)
	for _, a := range []struct {
		name, source string
		c            collected
	}{
		{ClockArtifact, clockSource, collected{[]ClockRecord{clock}, clockRaws, clockErrs}},
		{HostArtifact, hostSource, collected{[]HostRecord{{Name: req.HostName, Identity: host}}, hostRaws, hostErrs}},
		{ConnectionsArtifact, connectionsSource, conns},
		{ProcessesArtifact, processesSource, procs},
	} {
		if err := b.AddJSONL(a.name, a.source, a.c.records, a.c.errs); err != nil {
			return nil, fmt.Errorf("snapshot: %w", err)
		}
		for _, r := range a.c.raws {
			if err := b.AddRaw(r.path, "raw text of "+r.path+", for artifacts/"+a.name+".jsonl", r.data, nil); err != nil {
				return nil, fmt.Errorf("snapshot: %w", err)
			}
		}
	}
	bundle, err := b.Finish(req.Signer, finished)
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
