package snapshot

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/shirou/gopsutil/v4/common"
	psnet "github.com/shirou/gopsutil/v4/net"
	"github.com/shirou/gopsutil/v4/process"
	"golang.org/x/sys/unix"
)

// maxRead bounds any one file read, in bytes. /proc/net/tcp of a very busy
// host is a few tens of MiB.
const maxRead = 256 << 20

// readFile reads a whole file with O_NOATIME where the kernel allows it
// (the caller owns the file or has CAP_FOWNER), so that reading evidence
// from a disk does not update its access time.
func readFile(path string) ([]byte, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOATIME, 0)
	if errors.Is(err, syscall.EPERM) {
		f, err = os.Open(path)
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxRead+1))
	if err != nil {
		return nil, err
	}
	if len(b) > maxRead {
		return nil, fmt.Errorf("%s: larger than %d bytes", path, maxRead)
	}
	return b, nil
}

// gopsutilEnv pins gopsutil to the real /proc, /sys and /etc, whatever the
// HOST_PROC, HOST_SYS … environment variables say, so that its records and
// the raw text Take keeps come from the same place.
func gopsutilEnv(ctx context.Context) context.Context {
	return context.WithValue(ctx, common.EnvKey, common.EnvMap{
		common.HostProcEnvKey: "/proc",
		common.HostSysEnvKey:  "/sys",
		common.HostEtcEnvKey:  "/etc",
		common.HostVarEnvKey:  "/var",
		common.HostRunEnvKey:  "/run",
		common.HostDevEnvKey:  "/dev",
		common.HostRootEnvKey: "/",
	})
}

func clockNS(id int32) (int64, error) {
	var ts unix.Timespec
	if err := unix.ClockGettime(id, &ts); err != nil {
		return 0, err
	}
	return ts.Nano(), nil
}

// collectClock reads the host's clocks back to back.
func collectClock() (ClockRecord, []rawFile, []string) {
	var errs []string
	real, err := clockNS(unix.CLOCK_REALTIME)
	if err != nil {
		errs = append(errs, fmt.Sprintf("CLOCK_REALTIME: %v", err))
		real = time.Now().UnixNano()
	}
	mono, err := clockNS(unix.CLOCK_MONOTONIC)
	if err != nil {
		errs = append(errs, fmt.Sprintf("CLOCK_MONOTONIC: %v", err))
	}
	boot, err := clockNS(unix.CLOCK_BOOTTIME)
	if err != nil {
		errs = append(errs, fmt.Sprintf("CLOCK_BOOTTIME: %v", err))
	}
	var raws []rawFile
	if b, err := readFile("/proc/uptime"); err != nil {
		errs = append(errs, err.Error())
	} else {
		raws = append(raws, rawFile{"/proc/uptime", b})
	}
	now := time.Unix(0, real)
	zone, off := now.Zone()
	link, err := os.Readlink("/etc/localtime")
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		errs = append(errs, err.Error())
	}
	return ClockRecord{
		SystemTime:       now.UTC(),
		SystemTimeUnixNS: real,
		MonotonicNS:      mono,
		BoottimeNS:       boot,
		Timezone:         zone,
		UTCOffsetSeconds: off,
		TZ:               os.Getenv("TZ"),
		LocaltimeLink:    link,
	}, raws, errs
}

// readIdentity reads the host's identity, the raw files it came from and
// what could not be read.
func readIdentity() (Identity, []rawFile, []string) {
	var (
		id   Identity
		raws []rawFile
		errs []string
		err  error
	)
	if id.Hostname, err = os.Hostname(); err != nil {
		errs = append(errs, fmt.Sprintf("hostname: %v", err))
	}
	for _, f := range []struct {
		path string
		dst  *string
	}{
		{"/etc/machine-id", &id.MachineID},
		{"/proc/sys/kernel/random/boot_id", &id.BootID},
		{"/proc/sys/kernel/osrelease", &id.Kernel},
	} {
		b, err := readFile(f.path)
		if err != nil {
			errs = append(errs, err.Error())
			continue
		}
		*f.dst = strings.TrimSpace(string(b))
		raws = append(raws, rawFile{f.path, b})
	}
	return id, raws, errs
}

// collectConnections lists TCP and UDP sockets with gopsutil, which finds
// each socket's owning PID by walking /proc/[pid]/fd. The raw /proc/net
// tables, read just before, are kept for the record and give each socket's
// UID, which gopsutil does not report. If gopsutil fails, the records come
// from the raw tables alone, with PID 0.
func collectConnections(ctx context.Context) collected {
	var (
		raws    []rawFile
		errs    []string
		fromRaw []ConnectionRecord
	)
	for _, t := range []struct{ file, typ, family string }{
		{"tcp", "tcp", "inet"}, {"tcp6", "tcp", "inet6"},
		{"udp", "udp", "inet"}, {"udp6", "udp", "inet6"},
	} {
		p := "/proc/net/" + t.file
		b, err := readFile(p)
		if err != nil {
			errs = append(errs, err.Error())
			continue
		}
		raws = append(raws, rawFile{p, b})
		recs, err := parseProcNet(b, t.family, t.typ)
		if err != nil {
			errs = append(errs, fmt.Sprintf("%s: %v", p, err))
		}
		fromRaw = append(fromRaw, recs...)
	}
	uids := map[string][]uint32{}
	for _, r := range fromRaw {
		k := connKey(r)
		if u := uids[k]; len(u) == 0 || u[0] != *r.UID {
			uids[k] = append(u, *r.UID)
		}
	}

	conns, err := psnet.ConnectionsWithoutUidsWithContext(gopsutilEnv(ctx), "inet")
	if err != nil {
		errs = append(errs, fmt.Sprintf("owning PIDs unknown, records are from /proc/net/* alone: %v", err))
		return collected{records: fromRaw, raws: raws, errs: errs}
	}
	recs := make([]ConnectionRecord, 0, len(conns))
	for _, c := range conns {
		r := ConnectionRecord{
			LocalAddr:  c.Laddr.IP,
			LocalPort:  uint16(c.Laddr.Port),
			RemoteAddr: c.Raddr.IP,
			RemotePort: uint16(c.Raddr.Port),
			State:      c.Status,
			PID:        c.Pid,
		}
		switch c.Family {
		case syscall.AF_INET:
			r.Family = "inet"
		case syscall.AF_INET6:
			r.Family = "inet6"
		default:
			r.Family = strconv.Itoa(int(c.Family))
		}
		switch c.Type {
		case syscall.SOCK_STREAM:
			r.Type = "tcp"
		case syscall.SOCK_DGRAM:
			r.Type = "udp"
			r.State = "NONE"
		default:
			r.Type = strconv.Itoa(int(c.Type))
		}
		if u := uids[connKey(r)]; len(u) == 1 {
			r.UID = &u[0]
		}
		recs = append(recs, r)
	}
	if msg := unreadableFDTables(ctx, recs); msg != "" {
		errs = append(errs, msg)
	}
	if n := len(fromRaw) - len(recs); n > 0 {
		errs = append(errs, fmt.Sprintf("%d sockets in /proc/net/* have no record: gopsutil merges sockets with the same addresses and state, and sockets change between reads; raw/proc/net/* has them all", n))
	}
	return collected{records: recs, raws: raws, errs: errs}
}

// unreadableFDTables explains sockets without an owner: when a socket that
// a process should hold (not TIME_WAIT) has PID 0, it names the processes
// whose fd tables could not be read, since gopsutil skips them silently.
func unreadableFDTables(ctx context.Context, recs []ConnectionRecord) string {
	orphans := 0
	for _, r := range recs {
		if r.PID == 0 && r.State != "TIME_WAIT" {
			orphans++
		}
	}
	if orphans == 0 {
		return ""
	}
	pids, err := process.PidsWithContext(gopsutilEnv(ctx))
	if err != nil {
		return ""
	}
	var denied []string
	for _, pid := range pids {
		dir := "/proc/" + strconv.Itoa(int(pid)) + "/fd"
		ents, err := os.ReadDir(dir)
		if err == nil && len(ents) > 0 {
			// Listing may be allowed where reading the links is not.
			_, err = os.Readlink(dir + "/" + ents[0].Name())
		}
		if err != nil && errors.Is(err, fs.ErrPermission) {
			denied = append(denied, strconv.Itoa(int(pid)))
		}
	}
	if len(denied) == 0 {
		return ""
	}
	const maxList = 50
	list := strings.Join(denied[:min(len(denied), maxList)], " ")
	if len(denied) > maxList {
		list += " …"
	}
	return fmt.Sprintf("%d sockets have pid 0: the fd tables of %d processes could not be read (pids %s), so their sockets' owners are unknown", orphans, len(denied), list)
}

// tcpStates maps the st column of /proc/net/tcp to the names gopsutil uses
// (include/net/tcp_states.h).
var tcpStates = map[string]string{
	"01": "ESTABLISHED", "02": "SYN_SENT", "03": "SYN_RECV", "04": "FIN_WAIT1",
	"05": "FIN_WAIT2", "06": "TIME_WAIT", "07": "CLOSE", "08": "CLOSE_WAIT",
	"09": "LAST_ACK", "0A": "LISTEN", "0B": "CLOSING",
}

// connKey identifies a socket by what gopsutil reports of it.
func connKey(r ConnectionRecord) string {
	return fmt.Sprintf("%s %s %s %d %s %d %s", r.Family, r.Type, r.LocalAddr, r.LocalPort, r.RemoteAddr, r.RemotePort, r.State)
}

// parseProcNet parses one /proc/net/{tcp,udp}[6] table (proc(5)) into
// records with UID set and PID 0. Lines it does not understand are
// skipped and counted in the error.
func parseProcNet(table []byte, family, typ string) ([]ConnectionRecord, error) {
	var recs []ConnectionRecord
	sc := bufio.NewScanner(bytes.NewReader(table))
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	first := true
	bad := 0
	for sc.Scan() {
		if first { // header
			first = false
			continue
		}
		f := strings.Fields(sc.Text())
		if len(f) < 10 {
			bad++
			continue
		}
		la, lp, err1 := procNetAddr(f[1])
		ra, rp, err2 := procNetAddr(f[2])
		uid, err3 := strconv.ParseUint(f[7], 10, 32)
		if err1 != nil || err2 != nil || err3 != nil {
			bad++
			continue
		}
		state := "NONE"
		if typ == "tcp" {
			if state = tcpStates[f[3]]; state == "" {
				state = "UNKNOWN_" + f[3]
			}
		}
		u := uint32(uid)
		recs = append(recs, ConnectionRecord{
			Family: family, Type: typ,
			LocalAddr: la, LocalPort: lp, RemoteAddr: ra, RemotePort: rp,
			State: state, UID: &u,
		})
	}
	if err := sc.Err(); err != nil {
		return recs, err
	}
	if bad > 0 {
		return recs, fmt.Errorf("%d lines not understood", bad)
	}
	return recs, nil
}

// procNetAddr decodes "0100007F:0016" or a 32-hex-digit IPv6 address and
// port as /proc/net/tcp prints them: each 32-bit word of the address in
// host byte order. An IPv4-mapped IPv6 address comes out as IPv4 text, as
// gopsutil prints it.
func procNetAddr(s string) (string, uint16, error) {
	a, p, ok := strings.Cut(s, ":")
	if !ok {
		return "", 0, fmt.Errorf("no port in %q", s)
	}
	port, err := strconv.ParseUint(p, 16, 16)
	if err != nil {
		return "", 0, err
	}
	raw, err := hex.DecodeString(a)
	if err != nil || (len(raw) != 4 && len(raw) != 16) {
		return "", 0, fmt.Errorf("bad address %q", a)
	}
	ip := make([]byte, len(raw))
	for i := 0; i < len(raw); i += 4 {
		binary.NativeEndian.PutUint32(ip[i:], binary.BigEndian.Uint32(raw[i:]))
	}
	addr, _ := netip.AddrFromSlice(ip)
	return addr.Unmap().String(), uint16(port), nil
}

// userHZ is the unit of times in /proc/[pid]/stat (sysconf(_SC_CLK_TCK)):
// 100 on every Linux architecture Cordon runs on.
const userHZ = 100

// collectProcesses records every process in /proc. A process that exits
// mid-scan is recorded with an error, never dropped. bootEpoch is the
// wall-clock time of boot (CLOCK_REALTIME − CLOCK_BOOTTIME, read together)
// that start times are counted from; zero when unknown.
func collectProcesses(ctx context.Context, bootEpoch time.Time) collected {
	ctx = gopsutilEnv(ctx)
	var errs []string
	var raws []rawFile
	users := map[uint32]string{}
	if b, err := readFile("/etc/passwd"); err != nil {
		errs = append(errs, fmt.Sprintf("user names: %v", err))
	} else {
		users = parsePasswd(b)
		raws = append(raws, rawFile{"/etc/passwd", b})
	}
	if bootEpoch.IsZero() {
		errs = append(errs, "start_time: boot time unknown")
	}
	pids, err := process.PidsWithContext(ctx)
	if err != nil {
		errs = append(errs, fmt.Sprintf("list processes: %v", err))
	}
	recs := make([]ProcessRecord, 0, len(pids))
	for _, pid := range pids {
		if ctx.Err() != nil {
			errs = append(errs, fmt.Sprintf("scan stopped: %v", ctx.Err()))
			break
		}
		recs = append(recs, processRecord(ctx, pid, bootEpoch, users))
	}
	return collected{records: recs, raws: raws, errs: errs}
}

// processRecord reads one process. Field errors go into Error; if the
// process is gone when an error happens, Error says it exited during the
// scan.
//
// Name, PPID and StartTime come from one read of /proc/[pid]/stat, and
// Cmdline from /proc/[pid]/cmdline, parsed here rather than by gopsutil:
// its Name is extended from argv when comm is 15 bytes long, its
// CmdlineSlice drops trailing empty arguments, and its CreateTime counts
// from a boot time truncated to whole seconds that it reads again for
// every process.
func processRecord(ctx context.Context, pid int32, bootEpoch time.Time, users map[uint32]string) ProcessRecord {
	r := ProcessRecord{PID: pid, Cmdline: []string{}}
	var errs []string
	fail := func(what string, err error) { errs = append(errs, fmt.Sprintf("%s: %v", what, err)) }
	dir := "/proc/" + strconv.Itoa(int(pid))

	if b, err := readFile(dir + "/stat"); err != nil {
		fail("stat", err)
	} else if st, err := parseStat(b); err != nil {
		fail("stat", err)
	} else {
		r.Name, r.PPID = st.comm, st.ppid
		if !bootEpoch.IsZero() {
			start := bootEpoch.Add(time.Duration(st.startTicks) * (time.Second / userHZ))
			r.StartTime = start.UTC().Format(time.RFC3339Nano)
		}
	}
	if b, err := readFile(dir + "/cmdline"); err != nil {
		fail("cmdline", err)
	} else {
		r.Cmdline = parseCmdline(b)
	}
	p := &process.Process{Pid: pid}
	if exe, err := p.ExeWithContext(ctx); err != nil {
		// Kernel threads and zombies have no executable: ENOENT while
		// the process is still there.
		if !errors.Is(err, fs.ErrNotExist) || !exists(dir) {
			fail("exe", err)
		}
	} else {
		r.Exe = exe
	}
	if uids, err := p.UidsWithContext(ctx); err != nil {
		fail("uid", err)
	} else if len(uids) > 0 {
		u := uids[0]
		r.UID = &u
		r.User = users[u]
	}
	if len(errs) > 0 {
		r.Error = strings.Join(errs, "; ")
		if !exists(dir) {
			r.Error = "exited during the scan: " + r.Error
		}
	}
	return r
}

type procStat struct {
	comm       string
	ppid       int32
	startTicks uint64
}

// parseStat reads comm (field 2), ppid (4) and starttime (22, clock ticks
// after boot) from /proc/[pid]/stat (proc(5)). comm is in parentheses and
// may itself contain spaces and parentheses, so the fields after it are
// found from the last ')'.
func parseStat(b []byte) (procStat, error) {
	i, j := bytes.IndexByte(b, '('), bytes.LastIndexByte(b, ')')
	if i < 0 || j < i {
		return procStat{}, errors.New("malformed: no (comm)")
	}
	rest := strings.Fields(string(b[j+1:]))
	if len(rest) < 20 {
		return procStat{}, fmt.Errorf("malformed: %d fields after comm", len(rest))
	}
	ppid, err := strconv.ParseInt(rest[1], 10, 32)
	if err != nil {
		return procStat{}, fmt.Errorf("ppid: %w", err)
	}
	start, err := strconv.ParseUint(rest[19], 10, 64)
	if err != nil {
		return procStat{}, fmt.Errorf("starttime: %w", err)
	}
	return procStat{comm: string(b[i+1 : j]), ppid: int32(ppid), startTicks: start}, nil
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// parsePasswd maps UIDs to names from /etc/passwd (passwd(5)); the first
// entry for a UID wins, as getpwuid(3) does.
func parsePasswd(b []byte) map[uint32]string {
	users := map[uint32]string{}
	for line := range strings.SplitSeq(string(b), "\n") {
		f := strings.Split(line, ":")
		if len(f) < 3 || strings.HasPrefix(f[0], "#") {
			continue
		}
		uid, err := strconv.ParseUint(f[2], 10, 32)
		if err != nil {
			continue
		}
		if _, dup := users[uint32(uid)]; !dup {
			users[uint32(uid)] = f[0]
		}
	}
	return users
}

// parseCmdline splits /proc/[pid]/cmdline into argv: arguments end in NUL,
// so empty arguments survive (gopsutil's CmdlineSlice drops trailing ones).
// A process that rewrote its argv may leave no final NUL; the text is then
// split as it stands.
func parseCmdline(b []byte) []string {
	if len(b) == 0 {
		return []string{}
	}
	b = bytes.TrimSuffix(b, []byte{0})
	return strings.Split(string(b), "\x00")
}
