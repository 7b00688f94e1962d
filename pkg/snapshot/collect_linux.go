package snapshot

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

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
	zone, off, err := localZone(now)
	if err != nil {
		errs = append(errs, "timezone: "+err.Error())
	}
	// readlink(2) takes no O_NOATIME: it may set the symbolic link's own
	// access time (under relatime, at most once a day).
	link, err := os.Readlink("/etc/localtime")
	if err != nil && !errors.Is(err, fs.ErrNotExist) && !errors.Is(err, unix.EINVAL) {
		errs = append(errs, err.Error())
	}
	return ClockRecord{
		SystemTime:       now.UTC(),
		SystemTimeUnixNS: real,
		MonotonicNS:      mono,
		BoottimeNS:       boot,
		BootTime:         time.Unix(0, real-boot).UTC(),
		Timezone:         zone,
		UTCOffsetSeconds: off,
		TZ:               os.Getenv("TZ"),
		LocaltimeLink:    link,
	}, raws, errs
}

// localZone returns the zone abbreviation and offset east of UTC in
// force at t, as the time package would find them (TZ, else
// /etc/localtime, else UTC), but reading the zone file with O_NOATIME:
// time.Local's loader opens it without.
func localZone(t time.Time) (string, int, error) {
	path, name := "/etc/localtime", "Local"
	if tz, set := os.LookupEnv("TZ"); set {
		tz = strings.TrimPrefix(tz, ":")
		switch {
		case tz == "" || tz == "UTC":
			return "UTC", 0, nil
		case strings.HasPrefix(tz, "/"):
			path, name = tz, tz
		case strings.Contains(tz, ".."):
			return "UTC", 0, fmt.Errorf("TZ %q: not a zone name", tz)
		default:
			path, name = "/usr/share/zoneinfo/"+tz, tz
		}
	}
	b, err := readFile(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) && path == "/etc/localtime" {
			return "UTC", 0, nil // no local zone: UTC, as for the time package
		}
		return "UTC", 0, err
	}
	loc, err := time.LoadLocationFromTZData(name, b)
	if err != nil {
		return "UTC", 0, fmt.Errorf("%s: %w", path, err)
	}
	zone, off := t.In(loc).Zone()
	return zone, off, nil
}

// readIdentity reads the host's identity, the raw files it came from and
// what could not be read.
func readIdentity() (Identity, []rawFile, []string) {
	var (
		id   Identity
		raws []rawFile
		errs []string
	)
	var uts unix.Utsname
	if err := unix.Uname(&uts); err != nil {
		errs = append(errs, fmt.Sprintf("uname: %v", err))
	} else {
		id.Hostname = unix.ByteSliceToString(uts.Nodename[:])
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

// dmiFiles are the files of /sys/class/dmi/id that identify a machine.
var dmiFiles = []string{
	"sys_vendor", "product_name", "product_version", "product_serial", "product_uuid", "product_family",
	"board_vendor", "board_name", "board_serial", "board_asset_tag",
	"chassis_vendor", "chassis_serial", "chassis_asset_tag", "bios_vendor", "bios_version", "bios_date",
}

var awsInstanceID = regexp.MustCompile(`^i-[0-9a-f]{8,17}$`)

// collectHost reads everything the host record holds.
func collectHost(name string) (HostRecord, []rawFile, []string) {
	id, raws, errs := readIdentity()
	h := HostRecord{Name: name, Identity: id, OSRelease: map[string]string{}, DMI: map[string]string{}}
	var uts unix.Utsname
	if unix.Uname(&uts) == nil {
		h.Architecture = unix.ByteSliceToString(uts.Machine[:])
	}
	if b, err := readFile("/proc/sys/kernel/version"); err != nil {
		errs = append(errs, err.Error())
	} else {
		h.KernelVersion = strings.TrimSpace(string(b))
	}
	if b, err := readFile("/proc/sys/kernel/tainted"); err != nil {
		errs = append(errs, err.Error())
	} else if t, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64); err == nil {
		h.Tainted = &t
		raws = append(raws, rawFile{"/proc/sys/kernel/tainted", b})
	}
	if b, err := readFile("/proc/uptime"); err != nil {
		errs = append(errs, err.Error())
	} else if f := strings.Fields(string(b)); len(f) > 0 {
		h.UptimeSeconds, _ = strconv.ParseFloat(f[0], 64)
	}
	osr := "/etc/os-release"
	b, err := readFile(osr)
	if errors.Is(err, fs.ErrNotExist) {
		osr = "/usr/lib/os-release"
		b, err = readFile(osr)
	}
	if err != nil {
		errs = append(errs, err.Error())
	} else {
		h.OSRelease = parseOSRelease(b)
		raws = append(raws, rawFile{osr, b})
	}
	for _, f := range dmiFiles {
		b, err := readFile("/sys/class/dmi/id/" + f)
		if err == nil {
			h.DMI[f] = strings.TrimSpace(string(b))
		}
	}
	h.CloudProvider, h.CloudInstanceID, h.CloudInstanceIDSource = cloudOf(h.DMI)
	return h, raws, errs
}

// cloudOf recognizes the cloud and the instance ID from DMI data, and
// cloud-init's record of the instance ID when DMI holds none.
func cloudOf(dmi map[string]string) (provider, id, source string) {
	provider, id, source = cloudFromDMI(dmi)
	if id == "" {
		if b, err := readFile("/var/lib/cloud/data/instance-id"); err == nil {
			id, source = strings.TrimSpace(string(b)), "/var/lib/cloud/data/instance-id"
		}
	}
	return provider, id, source
}

// CloudIdentity returns the cloud provider ("aws", "azure", "gcp", …) and
// the instance ID the host itself records (HostRecord.CloudProvider,
// CloudInstanceID), from local files only, never a metadata endpoint; ""
// when unknown. The agent reports them so that the controller can bind
// the host to its instance.
func CloudIdentity() (provider, instanceID string) {
	dmi := map[string]string{}
	for _, f := range dmiFiles {
		if b, err := readFile("/sys/class/dmi/id/" + f); err == nil {
			dmi[f] = strings.TrimSpace(string(b))
		}
	}
	provider, instanceID, _ = cloudOf(dmi)
	return provider, instanceID
}

// cloudFromDMI recognizes a cloud from the machine's DMI data, and the
// instance ID when DMI holds it (AWS Nitro's board_asset_tag, Azure's
// product_uuid).
func cloudFromDMI(dmi map[string]string) (provider, id, source string) {
	vendor := strings.ToLower(dmi["sys_vendor"] + " " + dmi["product_name"] + " " + dmi["bios_vendor"])
	switch {
	case strings.Contains(vendor, "amazon") || strings.HasPrefix(strings.ToLower(dmi["product_uuid"]), "ec2"):
		if t := dmi["board_asset_tag"]; awsInstanceID.MatchString(t) {
			return "aws", t, "/sys/class/dmi/id/board_asset_tag"
		}
		return "aws", "", ""
	case strings.Contains(vendor, "microsoft") && dmi["chassis_asset_tag"] == "7783-7084-3265-9085-8269-3286-77":
		if u := dmi["product_uuid"]; u != "" {
			return "azure", strings.ToLower(u), "/sys/class/dmi/id/product_uuid"
		}
		return "azure", "", ""
	case strings.Contains(vendor, "google"):
		return "gcp", "", ""
	case strings.Contains(vendor, "openstack"):
		return "openstack", "", ""
	}
	return "", "", ""
}

// parseOSRelease reads os-release(5) assignments, removing shell quoting.
func parseOSRelease(b []byte) map[string]string {
	m := map[string]string{}
	for line := range strings.SplitSeq(string(b), "\n") {
		line = strings.TrimSpace(line)
		k, v, ok := strings.Cut(line, "=")
		if !ok || k == "" || strings.HasPrefix(k, "#") {
			continue
		}
		if len(v) >= 2 && (v[0] == '"' || v[0] == '\'') && v[len(v)-1] == v[0] {
			v = v[1 : len(v)-1]
			if v0 := v; strings.Contains(v0, `\`) {
				v = strings.NewReplacer(`\"`, `"`, `\\`, `\`, `\$`, `$`, "\\`", "`").Replace(v0)
			}
		}
		m[k] = v
	}
	return m
}

// workers is how many goroutines read /proc at once: /proc reads are CPU
// work in the kernel, so one per CPU, and a few more to cover the time
// one blocks.
func workers() int { return runtime.GOMAXPROCS(0) + 2 }

// parallel calls fn(i) for i in [0, n) from up to k goroutines and
// returns when all calls have returned.
func parallel(n, k int, fn func(i int)) {
	var next atomic.Int64
	var wg sync.WaitGroup
	for range min(n, k) {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				fn(i)
			}
		})
	}
	wg.Wait()
}

// measureBootEpoch returns the wall-clock time of boot that process start
// times count from: CLOCK_REALTIME minus CLOCK_BOOTTIME, which the kernel
// keeps constant until the clock is stepped (slewing moves both). It is
// measured between two reads of CLOCK_BOOTTIME, the narrowest of a few
// tries, and rounded to the clock tick (10 ms, the resolution of start
// ticks), so that every snapshot of one boot finds the same value, and a
// process the same start_time, until the clock is stepped. Zero when the
// clocks cannot be read.
func measureBootEpoch() time.Time {
	var lo, hi int64
	width := int64(-1)
	for range 5 {
		b1, err1 := clockNS(unix.CLOCK_BOOTTIME)
		r, err2 := clockNS(unix.CLOCK_REALTIME)
		b2, err3 := clockNS(unix.CLOCK_BOOTTIME)
		if err1 != nil || err2 != nil || err3 != nil {
			return time.Time{}
		}
		if w := b2 - b1; width < 0 || w < width {
			width, lo, hi = w, r-b2, r-b1
		}
	}
	const tick = int64(time.Second / userHZ)
	mid := lo + (hi-lo)/2
	return time.Unix(0, (mid+tick/2)/tick*tick)
}

// run collects every artifact but the clock and host (see the package
// documentation), closing each artifact when done with it. Everything runs
// at once, the most volatile started first; only the connections wait for
// the process scan, for their owners, and the scan gives up on what does
// not answer (ProcReadTimeout) and stops at the deadline.
func (c *collection) run() {
	ctx := c.ctx
	c.bootEpoch = measureBootEpoch()
	pids, err := listPIDs()
	listedAt, _ := clockNS(unix.CLOCK_BOOTTIME)
	if err != nil {
		c.art[ProcessesArtifact].errorf("list /proc: %v", err)
	}
	nss, mnts := c.discoverNamespaces(pids)
	defer func() {
		for _, ns := range nss {
			ns.close()
		}
	}()

	var wg sync.WaitGroup
	var tables []nsSockets
	tablesRead := make(chan struct{})
	wg.Go(func() {
		defer close(tablesRead)
		tables = c.readSocketTables(nss)
	})
	wg.Go(func() { c.collectConntrack(nss) })
	wg.Go(func() { c.collectNetlink(nss) })
	wg.Go(c.collectResources)
	wg.Go(c.collectSessions)
	wg.Go(c.collectModules)
	wg.Go(func() { c.collectMounts(mnts) })
	wg.Go(func() {
		// After the listing of processes and the socket tables, so that
		// the commands it runs, and their sockets, are in neither.
		<-tablesRead
		if ctx.Err() == nil {
			c.collectFirewall()
			return
		}
		fw := c.art[FirewallArtifact]
		fw.cutShort("the firewall commands were not run")
		fw.close()
	})
	scan := c.scanProcesses(pids, listedAt)
	wg.Go(func() {
		<-tablesRead
		c.writeConnections(nss, tables, &scan.res)
	})
	scan.hashAndWrite()
	wg.Wait()
}

// netNS is one network namespace and how to read it.
type netNS struct {
	inode uint64
	name  string
	pids  []int // processes in it, up to maxCandidates
	dfd   int   // open /proc/<pid> of a process in it, or -1
	nsfd  int   // open namespace file, or -1
	err   string
}

// maxCandidates is how many processes per network namespace discovery
// remembers, to read through another when the first has exited.
const maxCandidates = 4

func (ns *netNS) close() {
	if ns.dfd >= 0 {
		unix.Close(ns.dfd)
		ns.dfd = -1
	}
	if ns.nsfd >= 0 {
		unix.Close(ns.nsfd)
		ns.nsfd = -1
	}
}

// discoverNamespaces finds every network namespace: one entry per
// distinct /proc/[pid]/ns/net, plus those only a bind mount (ip netns add)
// holds, named from /proc/self/mountinfo. Each gets an open handle on a
// process in it (pinned: it cannot be swapped for another process) and on
// the namespace itself, which keeps it alive while it is read. The
// namespaces come out sorted by inode, the agent's own first. It also
// returns every mount namespace, with up to maxCandidates processes in
// each, by inode. Reading these links never touches a file system.
func (c *collection) discoverNamespaces(pids []int) ([]*netNS, map[uint64][]int) {
	k := workers()
	nets := make([]map[uint64][]int, k)
	mnts := make([]map[uint64][]int, k)
	chunk := (len(pids) + k - 1) / max(k, 1)
	parallel(k, k, func(w int) {
		net, mnt := map[uint64][]int{}, map[uint64][]int{}
		buf := make([]byte, 128)
		lo, hi := min(w*chunk, len(pids)), min((w+1)*chunk, len(pids))
		var path []byte
		for _, pid := range pids[lo:hi] {
			path = append(strconv.AppendInt(append(path[:0], "/proc/"...), int64(pid), 10), "/ns/net"...)
			if t, err := readlinkAt(unix.AT_FDCWD, string(path), &buf); err == nil {
				if ino, ok := nsInode(t); ok && len(net[ino]) < maxCandidates {
					net[ino] = append(net[ino], pid)
				}
			}
			path = append(path[:len(path)-3], "mnt"...)
			if t, err := readlinkAt(unix.AT_FDCWD, string(path), &buf); err == nil {
				if ino, ok := nsInode(t); ok && len(mnt[ino]) < maxCandidates {
					mnt[ino] = append(mnt[ino], pid)
				}
			}
		}
		nets[w], mnts[w] = net, mnt
	})
	mntNS := map[uint64][]int{}
	for _, m := range mnts {
		for ino, ps := range m {
			mntNS[ino] = append(mntNS[ino], ps...)
		}
	}
	for ino, ps := range mntNS {
		slices.Sort(ps)
		mntNS[ino] = ps[:min(len(ps), maxCandidates)]
	}
	byIno := map[uint64]*netNS{}
	for _, m := range nets {
		for ino, ps := range m {
			ns := byIno[ino]
			if ns == nil {
				ns = &netNS{inode: ino, dfd: -1, nsfd: -1}
				byIno[ino] = ns
			}
			ns.pids = append(ns.pids, ps...)
		}
	}
	names, paths := nsfsMounts("net")
	for ino, name := range names {
		if byIno[ino] == nil {
			byIno[ino] = &netNS{inode: ino, dfd: -1, nsfd: -1}
		}
		byIno[ino].name = name
	}
	var own uint64
	buf := make([]byte, 128)
	if t, err := readlinkAt(unix.AT_FDCWD, "/proc/self/ns/net", &buf); err == nil {
		own, _ = nsInode(t)
	}
	out := make([]*netNS, 0, len(byIno))
	for _, ns := range byIno {
		slices.Sort(ns.pids)
		if len(ns.pids) > maxCandidates {
			ns.pids = ns.pids[:maxCandidates]
		}
		ns.pin(paths[ns.inode])
		out = append(out, ns)
	}
	slices.SortFunc(out, func(a, b *netNS) int {
		switch {
		case a.inode == own:
			return -1
		case b.inode == own:
			return 1
		case a.inode < b.inode:
			return -1
		case a.inode > b.inode:
			return 1
		}
		return 0
	})
	return out, mntNS
}

// pin opens a handle on a process in the namespace and on the namespace
// itself, checking that the process is still in it; mountPath is an nsfs
// bind mount of the namespace, used when no process is.
func (ns *netNS) pin(mountPath string) {
	buf := make([]byte, 128)
	for _, pid := range ns.pids {
		dfd, err := unix.Open("/proc/"+strconv.Itoa(pid), unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			continue
		}
		if t, err := readlinkAt(dfd, "ns/net", &buf); err == nil {
			if ino, _ := nsInode(t); ino == ns.inode {
				if nsfd, _, err := openAt(dfd, "ns/net", 0); err == nil {
					ns.dfd, ns.nsfd = dfd, nsfd
					return
				}
			}
		}
		unix.Close(dfd)
	}
	if mountPath != "" {
		fd, _, err := openAt(unix.AT_FDCWD, mountPath, 0)
		if err == nil {
			var st unix.Stat_t
			if unix.Fstat(fd, &st) == nil && st.Ino == ns.inode {
				ns.nsfd = fd
				return
			}
			unix.Close(fd)
		}
		ns.err = fmt.Sprintf("cannot open %s: %v", mountPath, err)
		return
	}
	ns.err = "every process in it exited before it could be read"
}

// nsfsMounts reads the namespaces of kind ("net", "mnt") bind-mounted in
// the agent's mount namespace, from /proc/self/mountinfo: inode to name
// (the name under /run/netns, else the mount path) and to mount path.
func nsfsMounts(kind string) (names map[uint64]string, paths map[uint64]string) {
	names, paths = map[uint64]string{}, map[uint64]string{}
	b, err := readFile("/proc/self/mountinfo")
	if err != nil {
		return
	}
	for line := range bytes.SplitSeq(b, []byte{'\n'}) {
		m, ok := parseMountinfoLine(line)
		if !ok || m.FSType != "nsfs" || !strings.HasPrefix(m.Root, kind+":[") {
			continue
		}
		ino, ok := nsInode([]byte(m.Root))
		if !ok {
			continue
		}
		name := m.MountPoint
		for _, dir := range []string{"/run/netns/", "/var/run/netns/"} {
			if strings.HasPrefix(name, dir) {
				name = strings.TrimPrefix(name, dir)
			}
		}
		if _, dup := names[ino]; !dup || strings.HasPrefix(m.MountPoint, "/run/netns/") {
			names[ino], paths[ino] = name, m.MountPoint
		}
	}
	return
}

// inNetNS runs fn on an OS thread that has joined the network namespace
// open as nsfd (setns(2)), and then returns the thread to its own
// namespace. The thread is locked meanwhile, so no other goroutine runs
// in the namespace; if it cannot go back, it stays locked and ends with
// the goroutine.
func inNetNS(nsfd int, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("own network namespace: %w", err)
			return
		}
		defer unix.Close(orig)
		if err := unix.Setns(nsfd, unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("setns: %w", err)
			return
		}
		err = fn()
		if rerr := unix.Setns(orig, unix.CLONE_NEWNET); rerr != nil {
			errc <- errors.Join(err, fmt.Errorf("setns back: %w", rerr))
			return // still locked: the thread ends with this goroutine
		}
		runtime.UnlockOSThread()
		errc <- err
	}()
	return <-errc
}

// readNetFile reads /proc/<pid>/net/<name> of the namespace: through its
// pinned process, or, when that has exited or there is none, from a
// thread that joined the namespace (/proc/thread-self/net/<name>).
func (ns *netNS) readNetFile(name string, buf []byte) ([]byte, error) {
	if ns.dfd >= 0 {
		b, err := readAt(ns.dfd, "net/"+name, buf, maxRead)
		if err == nil || !gone(err) || ns.nsfd < 0 {
			return b, err
		}
	}
	if ns.nsfd < 0 {
		return buf[:0], errors.New(ns.err)
	}
	var out []byte
	err := inNetNS(ns.nsfd, func() error {
		var err error
		out, err = readAt(unix.AT_FDCWD, "/proc/thread-self/net/"+name, buf, maxRead)
		return err
	})
	return out, err
}

// label names the namespace in errors: "netns 4026531840 (name)".
func (ns *netNS) label() string {
	if ns.name != "" {
		return fmt.Sprintf("netns %d (%s)", ns.inode, ns.name)
	}
	return fmt.Sprintf("netns %d", ns.inode)
}

// rawPath is where raw text of the namespace's /proc/net/<name> goes.
func (ns *netNS) rawPath(name string) string {
	return fmt.Sprintf("/netns/%d/proc/net/%s", ns.inode, name)
}
