package snapshot

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cordon-ir/cordon/pkg/firewall"
)

// utmpSize is sizeof(struct utmp) on Linux with glibc on 64-bit and
// 32-bit architectures alike (utmp(5); ut_tv is two int32).
const utmpSize = 384

// maxSessionRecords bounds the records read from the end of wtmp and btmp.
const maxSessionRecords = 20000

var utmpTypes = [...]string{"EMPTY", "RUN_LVL", "BOOT_TIME", "NEW_TIME", "OLD_TIME", "INIT_PROCESS", "LOGIN_PROCESS", "USER_PROCESS", "DEAD_PROCESS", "ACCOUNTING"}

// collectSessions reads utmp, wtmp, btmp and logind's sessions.
func (c *collection) collectSessions() {
	a := c.art[SessionsArtifact]
	defer a.close()
	var line []byte
	for _, path := range []string{"/run/utmp", "/var/log/wtmp", "/var/log/btmp"} {
		if c.ctx.Err() != nil {
			a.cutShort("stopped before " + path)
			return
		}
		data, skipped, err := readUtmpTail(path, maxSessionRecords)
		if err != nil {
			a.errorf("%v", err)
			continue
		}
		a.raw(path, data)
		if skipped > 0 {
			a.errorf("%s: the %d oldest records were not read (only the last %d are kept, also in raw%s)", path, skipped, maxSessionRecords, path)
		}
		if len(data)%utmpSize != 0 {
			a.errorf("%s: size %d is not a multiple of %d bytes (struct utmp); the trailing part is ignored", path, len(data), utmpSize)
		}
		for off := 0; off+utmpSize <= len(data); off += utmpSize {
			r, ok := parseUtmp(data[off : off+utmpSize])
			if !ok {
				continue
			}
			r.Source = path
			line = appendJSON(line[:0], &r)
			if !a.lines(line) {
				return
			}
		}
	}
	dir := "/run/systemd/sessions"
	dfd, _, err := openAt(unix.AT_FDCWD, dir, unix.O_DIRECTORY)
	if err != nil {
		if !errors.Is(err, unix.ENOENT) {
			a.errorf("%s: %v", dir, err)
		}
		return
	}
	var names []string
	err = listDir(dfd, make([]byte, 16<<10), func(name []byte) bool {
		// Session files are named by their ID; *.ref are FIFOs.
		if !bytes.Contains(name, []byte{'.'}) {
			names = append(names, string(name))
		}
		return true
	})
	unix.Close(dfd)
	if err != nil {
		a.errorf("%s: %v", dir, err)
	}
	slices.Sort(names)
	for _, name := range names {
		path := filepath.Join(dir, name)
		b, err := readFile(path)
		if err != nil {
			a.errorf("%v", err)
			continue
		}
		a.raw(path, b)
		r := parseLogindSession(b)
		r.Source, r.ID = path, name
		line = appendJSON(line[:0], &r)
		if !a.lines(line) {
			return
		}
	}
}

// readUtmpTail reads at most limit whole records from the end of a utmp
// file with O_NOATIME, and says how many earlier records it left.
func readUtmpTail(path string, limit int) ([]byte, int, error) {
	fd, _, err := openAt(unix.AT_FDCWD, path, 0)
	if err != nil {
		return nil, 0, &pathError{path, err}
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, 0, &pathError{path, err}
	}
	n := int(st.Size / utmpSize)
	skipped := max(0, n-limit)
	off := int64(skipped) * utmpSize
	size := int(st.Size - off)
	buf := make([]byte, size)
	got := 0
	for got < size {
		k, err := unix.Pread(fd, buf[got:], off+int64(got))
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return nil, 0, &pathError{path, err}
		}
		if k == 0 {
			break
		}
		got += k
	}
	return buf[:got], skipped, nil
}

// parseUtmp decodes one struct utmp (utmp(5)); false for an EMPTY entry.
func parseUtmp(b []byte) (SessionRecord, bool) {
	// The file is in the host's byte order.
	typ := int16(binary.NativeEndian.Uint16(b[0:]))
	if typ == 0 {
		return SessionRecord{}, false
	}
	cstr := func(p []byte) string {
		if i := bytes.IndexByte(p, 0); i >= 0 {
			p = p[:i]
		}
		return string(p)
	}
	r := SessionRecord{
		PID:             int32(binary.NativeEndian.Uint32(b[4:])),
		Line:            cstr(b[8:40]),
		ID:              cstr(b[40:44]),
		ExitTermination: int16(binary.NativeEndian.Uint16(b[332:])),
		ExitStatus:      int16(binary.NativeEndian.Uint16(b[334:])),
		Session:         int32(binary.NativeEndian.Uint32(b[336:])),
	}
	if int(typ) < len(utmpTypes) {
		r.Type = utmpTypes[typ]
	} else {
		r.Type = strconv.Itoa(int(typ))
	}
	r.User, r.UserB64 = str(cstr(b[44:76]))
	r.Host, r.HostB64 = str(cstr(b[76:332]))
	r.Line, _ = str(r.Line)
	sec := int64(int32(binary.NativeEndian.Uint32(b[340:])))
	usec := int64(int32(binary.NativeEndian.Uint32(b[344:])))
	r.Time = time.Unix(sec, usec*1000).UTC().Format(time.RFC3339Nano)
	addr := b[348:364]
	if !bytes.Equal(addr, make([]byte, 16)) {
		if bytes.Equal(addr[4:], make([]byte, 12)) {
			r.Addr = netip.AddrFrom4([4]byte(addr[:4])).String()
		} else {
			r.Addr = netip.AddrFrom16([16]byte(addr)).String()
		}
	}
	return r, true
}

// parseLogindSession reads a systemd-logind session file (key=value).
func parseLogindSession(b []byte) SessionRecord {
	r := SessionRecord{Type: "LOGIND_SESSION"}
	for line := range strings.SplitSeq(string(b), "\n") {
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			continue
		}
		switch k {
		case "UID":
			if u, err := strconv.ParseUint(v, 10, 32); err == nil {
				u32 := uint32(u)
				r.UID = &u32
			}
		case "USER":
			r.User, r.UserB64 = str(v)
		case "TTY":
			r.Line = v
		case "REMOTE_HOST":
			r.Host, r.HostB64 = str(v)
		case "LEADER":
			if p, err := strconv.ParseInt(v, 10, 32); err == nil {
				r.PID = int32(p)
			}
		case "REALTIME":
			if us, err := strconv.ParseInt(v, 10, 64); err == nil {
				r.Time = time.UnixMicro(us).UTC().Format(time.RFC3339Nano)
			}
		case "SERVICE":
			r.Service = v
		case "CLASS":
			r.Class = v
		case "STATE":
			r.State = v
		}
	}
	return r
}

// collectModules reads /proc/modules.
func (c *collection) collectModules() {
	a := c.art[ModulesArtifact]
	defer a.close()
	b, err := readFile("/proc/modules")
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			a.errorf("/proc/modules does not exist: the kernel was built without loadable module support (everything it runs is built in)")
		} else {
			a.errorf("%v", err)
		}
		return
	}
	a.raw("/proc/modules", b)
	recs, bad := parseModules(b)
	for _, l := range bad {
		a.errorf("/proc/modules: line not understood: %q", l)
	}
	var line []byte
	for i := range recs {
		line = appendJSON(line[:0], &recs[i])
		if !a.lines(line) {
			return
		}
	}
}

// parseModules parses /proc/modules (proc(5)): name size refcount
// used-by state address [taints], used-by "-" or "a,b,"; it returns the
// lines it did not understand.
func parseModules(b []byte) ([]ModuleRecord, []string) {
	var recs []ModuleRecord
	var bad []string
	for l := range strings.SplitSeq(strings.TrimRight(string(b), "\n"), "\n") {
		f := strings.Fields(l)
		if len(f) < 6 {
			if l != "" {
				bad = append(bad, l)
			}
			continue
		}
		r := ModuleRecord{Name: f[0], State: f[4], Address: f[5], UsedBy: []string{}}
		r.SizeBytes, _ = strconv.ParseUint(f[1], 10, 64)
		r.RefCount, _ = strconv.Atoi(f[2])
		if f[3] != "-" {
			for _, d := range strings.Split(strings.TrimSuffix(f[3], ","), ",") {
				if d != "" {
					r.UsedBy = append(r.UsedBy, d)
				}
			}
		}
		if len(f) > 6 {
			r.Taints = strings.Trim(strings.Join(f[6:], ""), "()")
		}
		recs = append(recs, r)
	}
	return recs, bad
}

// collectMounts reads the mount table of every mount namespace, through
// a process in each (mntNS maps namespace inodes to up to maxCandidates
// processes in it, as found when the namespaces were listed).
func (c *collection) collectMounts(mntNS map[uint64][]int) {
	a := c.art[MountsArtifact]
	defer a.close()
	inodes := make([]uint64, 0, len(mntNS))
	for ino := range mntNS {
		inodes = append(inodes, ino)
	}
	slices.Sort(inodes)
	if len(inodes) == 0 {
		// No process could be read: at least our own.
		b, err := readFile("/proc/self/mountinfo")
		if err != nil {
			a.errorf("%v", err)
			return
		}
		a.raw("/proc/self/mountinfo", b)
		c.writeMounts(a, b, 0, int32(os.Getpid()))
		return
	}
	buf := make([]byte, 128)
	var data []byte
	for i, ino := range inodes {
		if c.ctx.Err() != nil {
			a.cutShort(fmt.Sprintf("%d of %d mount namespaces read", i, len(inodes)))
			return
		}
		var pid int
		var err error
		for _, pid = range mntNS[ino] {
			data, err = readMountinfo(pid, ino, data, &buf)
			if err == nil || !gone(err) {
				break
			}
		}
		if err != nil {
			if gone(err) {
				a.errorf("mntns %d: every process in it (%v) exited before its mount table was read", ino, mntNS[ino])
			} else {
				a.errorf("mntns %d: /proc/%d/mountinfo: %v", ino, pid, err)
			}
			continue
		}
		a.raw(fmt.Sprintf("/mntns/%d/proc/self/mountinfo", ino), data)
		if !c.writeMounts(a, data, ino, int32(pid)) {
			return
		}
	}
}

// readMountinfo reads /proc/PID/mountinfo into data[:0], checking that
// the process is in mount namespace ino; an error for which gone is true
// means it is not (any more).
func readMountinfo(pid int, ino uint64, data []byte, buf *[]byte) ([]byte, error) {
	dfd, err := unix.Open("/proc/"+strconv.Itoa(pid), unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return data[:0], err
	}
	defer unix.Close(dfd)
	t, err := readlinkAt(dfd, "ns/mnt", buf)
	if now, _ := nsInode(t); err != nil || now != ino {
		return data[:0], unix.ESRCH
	}
	return readAt(dfd, "mountinfo", data, maxRead)
}

func (c *collection) writeMounts(a *artifact, data []byte, ino uint64, pid int32) bool {
	var line []byte
	bad := 0
	for l := range bytes.SplitSeq(bytes.TrimRight(data, "\n"), []byte{'\n'}) {
		m, ok := parseMountinfoLine(l)
		if !ok {
			bad++
			continue
		}
		m.MntNS, m.PID = ino, pid
		line = appendJSON(line[:0], &m)
		if !a.lines(line) {
			return false
		}
	}
	if bad > 0 {
		a.errorf("mntns %d: %d mountinfo lines not understood", ino, bad)
	}
	return true
}

// parseMountinfoLine parses one line of /proc/[pid]/mountinfo (proc(5)):
// id parent major:minor root mount-point options [optional…] - fstype
// source super-options.
func parseMountinfoLine(l []byte) (MountRecord, bool) {
	f := strings.Fields(string(l))
	sep := slices.Index(f, "-")
	if len(f) < 10 || sep < 6 || len(f) < sep+4 {
		return MountRecord{}, false
	}
	id, err1 := strconv.Atoi(f[0])
	parent, err2 := strconv.Atoi(f[1])
	if err1 != nil || err2 != nil {
		return MountRecord{}, false
	}
	m := MountRecord{
		MountID: id, ParentID: parent, Device: f[2],
		Root: unescapeOctal(f[3]), Options: f[5], Optional: append([]string{}, f[6:sep]...),
		FSType: f[sep+1], Source: unescapeOctal(f[sep+2]), SuperOptions: f[sep+3],
	}
	m.MountPoint, m.MountPointB64 = str(unescapeOctal(f[4]))
	return m, true
}

// unescapeOctal decodes the \ooo escapes the kernel writes for space, tab,
// newline and backslash in mountinfo.
func unescapeOctal(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// firewallCommands are run to dump the rules in force.
var firewallCommands = [][]string{
	{"iptables-save"},
	{"ip6tables-save"},
	{"nft", "list", "ruleset"},
}

// firewallPath is the search path for the firewall tools, whatever the
// agent's environment says.
var firewallPath = []string{"/usr/sbin", "/sbin", "/usr/bin", "/bin", "/usr/local/sbin"}

// collectFirewall runs each firewall dump command and keeps its output.
func (c *collection) collectFirewall() {
	a := c.art[FirewallArtifact]
	defer a.close()
	recs := make([]FirewallRecord, len(firewallCommands))
	nft, nftWhy := firewall.NFTablesPresent()
	variant := firewall.IptablesVariant()
	var wg sync.WaitGroup
	for i, argv := range firewallCommands {
		if why := wouldLoadModule(argv[0], nft, nftWhy, variant); why != "" {
			recs[i] = FirewallRecord{Command: strings.Join(argv, " "), ExitCode: -1, Error: "not run: " + why}
			continue
		}
		wg.Go(func() { recs[i] = c.runFirewall(a, argv) })
	}
	wg.Wait()
	var line []byte
	for _, r := range recs {
		if r.Error != "" {
			a.errorf("%s: %s", r.Command, r.Error)
		}
		line = appendJSON(line[:0], &r)
		if !a.lines(line) {
			return
		}
	}
}

// wouldLoadModule says why running a firewall command would make the
// kernel load a module the host does not use (the snapshot loads none),
// or "": nft and iptables-nft need nf_tables; iptables-legacy-save with
// no table in use (/proc/net/ip_tables_names, ip6_tables_names absent)
// would load ip_tables.
func wouldLoadModule(cmd string, nft bool, nftWhy, variant string) string {
	switch {
	case cmd == "nft" && !nft:
		return nftWhy
	case (cmd == "iptables-save" || cmd == "ip6tables-save") && variant == "nf_tables" && !nft:
		return "iptables is iptables-nft and " + nftWhy
	case cmd == "iptables-save" && variant == "legacy":
		if _, err := os.Stat("/proc/net/ip_tables_names"); err != nil {
			return "no iptables-legacy table is in use (no /proc/net/ip_tables_names); running it would load ip_tables"
		}
	case cmd == "ip6tables-save" && variant == "legacy":
		if _, err := os.Stat("/proc/net/ip6_tables_names"); err != nil {
			return "no ip6tables-legacy table is in use (no /proc/net/ip6_tables_names); running it would load ip6_tables"
		}
	}
	return ""
}

func (c *collection) runFirewall(a *artifact, argv []string) FirewallRecord {
	r := FirewallRecord{Command: strings.Join(argv, " "), ExitCode: -1}
	for _, dir := range firewallPath {
		p := filepath.Join(dir, argv[0])
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0 {
			r.Path = p
			break
		}
	}
	if r.Path == "" {
		r.Error = fmt.Sprintf("not installed (looked in %s)", strings.Join(firewallPath, ", "))
		return r
	}
	ctx, cancel := context.WithTimeout(c.ctx, 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, r.Path, argv[1:]...)
	cmd.Env = []string{"PATH=" + strings.Join(firewallPath, ":"), "LC_ALL=C"}
	cmd.Dir = "/"
	var stdout bytes.Buffer
	stderr := &limitedBuffer{max: 4096}
	cmd.Stdout, cmd.Stderr = &stdout, stderr
	start := time.Now()
	err := cmd.Run()
	r.DurationNS = time.Since(start).Nanoseconds()
	r.Stderr = stderr.String()
	if cmd.ProcessState != nil {
		r.ExitCode = cmd.ProcessState.ExitCode()
	}
	if err != nil {
		r.Error = err.Error()
		if ctx.Err() != nil {
			r.Error = CutShort + ": " + ctx.Err().Error() + ": " + r.Error
		}
	}
	if stdout.Len() > 0 || err == nil {
		r.Output = "raw/exec/" + strings.Join(argv, "-")
		r.OutputBytes = stdout.Len()
		a.raw("/exec/"+strings.Join(argv, "-"), stdout.Bytes())
	}
	return r
}

// limitedBuffer keeps the first max bytes written to it.
type limitedBuffer struct {
	bytes.Buffer
	max int
}

func (l *limitedBuffer) Write(p []byte) (int, error) {
	if room := l.max - l.Len(); room > 0 {
		l.Buffer.Write(p[:min(room, len(p))])
	}
	return len(p), nil
}
