package snapshot

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// Socket families and types as sockRow holds them.
const (
	famInet = iota + 1
	famInet6
	famUnix
	famPacket
	famNetlink
)

var famNames = [...]string{famInet: "inet", famInet6: "inet6", famUnix: "unix", famPacket: "packet", famNetlink: "netlink"}

// sockTable is one /proc/net table: its file name, family and type, the
// protocol its rows have, and whether a kernel may lack it.
type sockTable struct {
	file     string
	family   uint8
	typ      string
	proto    uint16
	optional bool
}

// sockTables are the tables read, in this order. The unix sockets are
// taken from sock_diag(7); /proc/net/unix is kept as raw text (see
// readSocketTables).
var sockTables = []sockTable{
	{file: "tcp", family: famInet, typ: "tcp"}, {file: "tcp6", family: famInet6, typ: "tcp", optional: true},
	{file: "udp", family: famInet, typ: "udp"}, {file: "udp6", family: famInet6, typ: "udp", optional: true},
	{file: "udplite", family: famInet, typ: "udplite", optional: true}, {file: "udplite6", family: famInet6, typ: "udplite", optional: true},
	{file: "raw", family: famInet, typ: "raw"}, {file: "raw6", family: famInet6, typ: "raw", optional: true},
	{file: "icmp", family: famInet, typ: "icmp", proto: unix.IPPROTO_ICMP, optional: true},
	{file: "icmp6", family: famInet6, typ: "icmp", proto: unix.IPPROTO_ICMPV6, optional: true},
	{file: "unix", family: famUnix}, {file: "packet", family: famPacket, optional: true},
	{file: "netlink", family: famNetlink, optional: true},
}

// sockRow is one parsed line of a socket table, compact: tens of
// thousands are held between reading the tables and reading the fd
// tables that name their owners.
type sockRow struct {
	local, remote netip.Addr
	inode, peer   uint64
	txq, rxq      uint64
	path          string
	uid           uint32
	ifindex       int32
	lport, rport  uint16
	proto         uint16
	state         uint8
	flags         uint32
	family        uint8
	typ           string
	hasUID        bool
}

// nsSockets are the sockets read from one namespace.
type nsSockets struct {
	rows []sockRow
	errs []string
}

// useSockDiag is false only in tests, to take unix sockets from
// /proc/net/unix as when sock_diag cannot be used.
var useSockDiag = true

// unixFromProcNet is the error recorded when the unix sockets of a
// namespace come from /proc/net/unix.
const unixFromProcNet = "unix sockets from /proc/net/unix: rows unverified, since a socket's name may hold a newline followed by a made-up line (any user can bind such an abstract name)"

// readSocketTables reads the socket tables of every namespace, keeping
// the raw text. Unix sockets come from sock_diag(7) (UNIX_DIAG_NAME, PEER,
// UID), which gives each socket's exact name: /proc/net/unix prints names
// as they are, newlines included, so a name can forge lines there. It is
// kept as raw text, and parsed only when sock_diag cannot be used.
func (c *collection) readSocketTables(nss []*netNS) []nsSockets {
	a := c.art[ConnectionsArtifact]
	out := make([]nsSockets, len(nss))
	var skipped atomic.Int64
	defer func() {
		if n := skipped.Load(); n > 0 {
			a.cutShort(fmt.Sprintf("the socket tables of %d of %d network namespaces were not read", n, len(nss)))
		}
	}()
	diagErr := unixDiagReady()
	parallel(len(nss), workers(), func(i int) {
		if c.ctx.Err() != nil {
			skipped.Add(1)
			return
		}
		ns, res := nss[i], &out[i]
		bp := bufPool.Get().(*[]byte)
		defer bufPool.Put(bp)
		for _, t := range sockTables {
			b, err := ns.readNetFile(t.file, *bp)
			*bp = b[:0]
			if err != nil {
				if t.optional && gone(err) {
					continue // not in this kernel or namespace
				}
				res.errs = append(res.errs, fmt.Sprintf("%s: /proc/net/%s: %v", ns.label(), t.file, err))
				if t.family != famUnix {
					continue
				}
			} else {
				a.raw(ns.rawPath(t.file), b)
			}
			if t.family == famUnix {
				var derr error
				if derr = diagErr; derr == nil {
					var rows []sockRow
					if rows, derr = unixDiag(ns.nsfd); derr == nil {
						res.rows = append(res.rows, rows...)
						continue
					}
				}
				if err != nil {
					res.errs = append(res.errs, fmt.Sprintf("%s: unix sockets (sock_diag): %v", ns.label(), derr))
					continue
				}
				var bad int
				res.rows, bad = parseSockTable(b, t, res.rows)
				res.errs = append(res.errs, fmt.Sprintf("%s: sock_diag: %v; %s; %d lines that did not parse strictly were skipped", ns.label(), derr, unixFromProcNet, bad))
				continue
			}
			var bad int
			res.rows, bad = parseSockTable(b, t, res.rows)
			if bad > 0 {
				res.errs = append(res.errs, fmt.Sprintf("%s: /proc/net/%s: %d lines not understood", ns.label(), t.file, bad))
			}
		}
	})
	return out
}

// unixDiagReady says why sock_diag cannot give the unix sockets without
// loading a kernel module (unix_diag), or nil when it can.
func unixDiagReady() error {
	if !useSockDiag {
		return errors.New("not used (test)")
	}
	mods, err := readFile("/proc/modules")
	if err != nil {
		return nil // no loadable modules: unix_diag is built in or absent
	}
	if bytes.Contains(mods, []byte("\nunix_diag ")) || bytes.HasPrefix(mods, []byte("unix_diag ")) {
		return nil
	}
	var uts unix.Utsname
	if unix.Uname(&uts) == nil {
		b, err := readFile("/lib/modules/" + unix.ByteSliceToString(uts.Release[:]) + "/modules.builtin")
		if err == nil && bytes.Contains(b, []byte("/unix_diag.ko")) {
			return nil
		}
	}
	return errors.New("unix_diag is not loaded, and asking sock_diag would load it; the snapshot does not load kernel modules")
}

// parseSockTable appends the sockets of one /proc/net table to rows and
// counts the lines it did not understand.
func parseSockTable(b []byte, t sockTable, rows []sockRow) ([]sockRow, int) {
	bad := 0
	first := true
	for len(b) > 0 {
		var line []byte
		if i := bytes.IndexByte(b, '\n'); i >= 0 {
			line, b = b[:i], b[i+1:]
		} else {
			line, b = b, nil
		}
		if first { // header
			first = false
			continue
		}
		if len(bytes.TrimSpace(line)) == 0 {
			continue
		}
		var r sockRow
		var ok bool
		switch t.family {
		case famInet, famInet6:
			r, ok = parseInetLine(line, t)
		case famUnix:
			r, ok = parseUnixLine(line)
		case famPacket:
			r, ok = parsePacketLine(line)
		case famNetlink:
			r, ok = parseNetlinkLine(line)
		}
		if !ok {
			bad++
			continue
		}
		rows = append(rows, r)
	}
	return rows, bad
}

// fields splits line at runs of spaces into at most len(f) fields and
// returns how many it found; the last field holds the rest of the line.
func fields(line []byte, f [][]byte) int {
	n := 0
	i := 0
	for n < len(f) {
		for i < len(line) && line[i] == ' ' {
			i++
		}
		if i >= len(line) {
			break
		}
		j := i
		if n == len(f)-1 {
			j = len(line)
		} else {
			for j < len(line) && line[j] != ' ' {
				j++
			}
		}
		f[n] = line[i:j]
		n++
		i = j
	}
	return n
}

// parseInetLine parses a line of /proc/net/{tcp,udp,raw}[6] (proc(5)):
// sl local rem st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode.
func parseInetLine(line []byte, t sockTable) (sockRow, bool) {
	var f [11][]byte
	if fields(line, f[:]) < 10 {
		return sockRow{}, false
	}
	r := sockRow{family: t.family, typ: t.typ}
	var ok1, ok2 bool
	r.local, r.lport, ok1 = procNetAddrBytes(f[1])
	r.remote, r.rport, ok2 = procNetAddrBytes(f[2])
	st, ok3 := hexUint(f[3])
	tx, rx, ok4 := bytes.Cut(f[4], []byte{':'})
	txq, ok5 := hexUint(tx)
	rxq, ok6 := hexUint(rx)
	uid, ok7 := atoi(f[7])
	ino, ok8 := atoi(f[9])
	if !(ok1 && ok2 && ok3 && ok4 && ok5 && ok6 && ok7 && ok8) {
		return sockRow{}, false
	}
	r.state, r.txq, r.rxq, r.uid, r.hasUID, r.inode = uint8(st), txq, rxq, uint32(uid), true, uint64(ino)
	r.proto = t.proto
	if t.typ == "raw" {
		// The local "port" of a raw socket is its protocol.
		r.proto, r.lport = r.lport, 0
	}
	return r, true
}

// parseUnixLine parses a line of /proc/net/unix (proc(5)) strictly, as
// the kernel prints it ("%pK: %08X %08X %08X %04X %02X %5lu", then " "
// and the name when bound): Num RefCount Protocol Flags Type St Inode
// [Path]. The name is the rest of the line; one holding a newline cannot
// be told from a line of its own (see unixFromProcNet).
func parseUnixLine(line []byte) (sockRow, bool) {
	num, rest, ok := bytes.Cut(line, []byte(": "))
	if !ok || (len(num) != 8 && len(num) != 16) {
		return sockRow{}, false
	}
	if _, ok := hexUint(num); !ok {
		return sockRow{}, false
	}
	var h [5]uint64
	for k, width := range [5]int{8, 8, 8, 4, 2} {
		if len(rest) < width+1 || rest[width] != ' ' || !upperHex(rest[:width]) {
			return sockRow{}, false
		}
		h[k], _ = hexUint(rest[:width])
		rest = rest[width+1:]
	}
	// The inode, right-aligned in at least 5 columns, then " name" or
	// the end of the line.
	j := 0
	for j < len(rest) && rest[j] == ' ' {
		j++
	}
	k := j
	for k < len(rest) && rest[k] >= '0' && rest[k] <= '9' {
		k++
	}
	ino, ok := atoi(rest[j:k])
	if !ok || (k-j < 5 && j != 5-(k-j)) || (k-j >= 5 && j != 0) {
		return sockRow{}, false
	}
	if k < len(rest) && (rest[k] != ' ' || k+1 == len(rest)) {
		return sockRow{}, false
	}
	flags, typ, st := h[2], h[3], h[4]
	r := sockRow{family: famUnix, flags: uint32(flags), state: uint8(st), inode: uint64(ino), typ: unixType(typ)}
	if k < len(rest) {
		r.path = string(rest[k+1:])
	}
	return r, true
}

func upperHex(b []byte) bool {
	for _, c := range b {
		if !(c >= '0' && c <= '9' || c >= 'A' && c <= 'F') {
			return false
		}
	}
	return true
}

// unixType names a unix socket's type (SOCK_STREAM, …).
func unixType(typ uint64) string {
	switch typ {
	case unix.SOCK_STREAM:
		return "stream"
	case unix.SOCK_DGRAM:
		return "dgram"
	case unix.SOCK_SEQPACKET:
		return "seqpacket"
	}
	return strconv.FormatUint(typ, 10)
}

// parsePacketLine parses a line of /proc/net/packet:
// sk RefCnt Type Proto Iface R Rmem User Inode.
func parsePacketLine(line []byte) (sockRow, bool) {
	var f [10][]byte
	if fields(line, f[:]) < 9 {
		return sockRow{}, false
	}
	typ, ok1 := atoi(f[2])
	proto, ok2 := hexUint(f[3])
	ifi, ok3 := atoi(f[4])
	uid, ok4 := atoi(f[7])
	ino, ok5 := atoi(f[8])
	if !(ok1 && ok2 && ok3 && ok4 && ok5) {
		return sockRow{}, false
	}
	r := sockRow{family: famPacket, proto: uint16(proto), ifindex: int32(ifi), uid: uint32(uid), hasUID: true, inode: uint64(ino)}
	switch typ {
	case unix.SOCK_RAW:
		r.typ = "raw"
	case unix.SOCK_DGRAM:
		r.typ = "dgram"
	default:
		r.typ = strconv.Itoa(typ)
	}
	return r, true
}

// netlinkProtocols names the netlink protocols (NETLINK_ROUTE, …,
// include/uapi/linux/netlink.h).
var netlinkProtocols = [...]string{
	0: "route", 1: "unused", 2: "usersock", 3: "firewall", 4: "sock_diag", 5: "nflog", 6: "xfrm",
	7: "selinux", 8: "iscsi", 9: "audit", 10: "fib_lookup", 11: "connector", 12: "netfilter",
	13: "ip6_fw", 14: "dnrtmsg", 15: "kobject_uevent", 16: "generic", 18: "scsitransport",
	19: "ecryptfs", 20: "rdma", 21: "crypto", 22: "smc",
}

// parseNetlinkLine parses a line of /proc/net/netlink:
// sk Eth Pid Groups Rmem Wmem Dump Locks Drops Inode.
func parseNetlinkLine(line []byte) (sockRow, bool) {
	var f [11][]byte
	if fields(line, f[:]) < 10 {
		return sockRow{}, false
	}
	proto, ok1 := atoi(f[1])
	rmem, ok2 := atoi(f[4])
	wmem, ok3 := atoi(f[5])
	ino, ok4 := atoi(bytes.TrimSpace(f[9]))
	if !(ok1 && ok2 && ok3 && ok4) || proto > 0xffff {
		return sockRow{}, false
	}
	r := sockRow{family: famNetlink, proto: uint16(proto), rxq: uint64(rmem), txq: uint64(wmem), inode: uint64(ino)}
	if proto < len(netlinkProtocols) && netlinkProtocols[proto] != "" {
		r.typ = netlinkProtocols[proto]
	} else {
		r.typ = strconv.Itoa(proto)
	}
	return r, true
}

func hexUint(b []byte) (uint64, bool) {
	if len(b) == 0 || len(b) > 16 {
		return 0, false
	}
	var n uint64
	for _, c := range b {
		switch {
		case c >= '0' && c <= '9':
			n = n<<4 | uint64(c-'0')
		case c >= 'A' && c <= 'F':
			n = n<<4 | uint64(c-'A'+10)
		case c >= 'a' && c <= 'f':
			n = n<<4 | uint64(c-'a'+10)
		default:
			return 0, false
		}
	}
	return n, true
}

// procNetAddrBytes decodes "0100007F:0016" or a 32-hex-digit IPv6 address
// and port as /proc/net/tcp prints them: each 32-bit word of the address
// in host byte order. An IPv4-mapped IPv6 address comes out as IPv4.
func procNetAddrBytes(s []byte) (netip.Addr, uint16, bool) {
	i := bytes.IndexByte(s, ':')
	if i < 0 || len(s)-i-1 > 4 || len(s)-i-1 == 0 {
		return netip.Addr{}, 0, false
	}
	port, ok := hexUint(s[i+1:])
	if !ok {
		return netip.Addr{}, 0, false
	}
	a := s[:i]
	if len(a) != 8 && len(a) != 32 {
		return netip.Addr{}, 0, false
	}
	var ip [16]byte
	for w := 0; w < len(a)/8; w++ {
		v, ok := hexUint(a[w*8 : w*8+8])
		if !ok {
			return netip.Addr{}, 0, false
		}
		binary.NativeEndian.PutUint32(ip[w*4:], uint32(v))
	}
	if len(a) == 8 {
		return netip.AddrFrom4([4]byte(ip[:4])), uint16(port), true
	}
	return netip.AddrFrom16(ip).Unmap(), uint16(port), true
}

// procNetAddr is procNetAddrBytes for text, with an error.
func procNetAddr(s string) (string, uint16, error) {
	a, p, ok := procNetAddrBytes([]byte(s))
	if !ok {
		return "", 0, fmt.Errorf("bad address %q", s)
	}
	return a.String(), p, nil
}

// tcpStates names the st column of /proc/net/tcp
// (include/net/tcp_states.h).
var tcpStates = [...]string{
	1: "ESTABLISHED", 2: "SYN_SENT", 3: "SYN_RECV", 4: "FIN_WAIT1",
	5: "FIN_WAIT2", 6: "TIME_WAIT", 7: "CLOSE", 8: "CLOSE_WAIT",
	9: "LAST_ACK", 10: "LISTEN", 11: "CLOSING", 12: "NEW_SYN_RECV",
}

// stateName names a row's state as ConnectionRecord.State documents.
func (r *sockRow) stateName() string {
	switch r.family {
	case famInet, famInet6:
		if r.typ != "tcp" {
			switch r.state {
			case 7:
				return "UNCONN"
			case 1:
				return "ESTABLISHED"
			}
		}
		if int(r.state) < len(tcpStates) && tcpStates[r.state] != "" {
			return tcpStates[r.state]
		}
		return "UNKNOWN_" + strconv.Itoa(int(r.state))
	case famUnix:
		if r.flags&(1<<16) != 0 { // __SO_ACCEPTCON
			return "LISTEN"
		}
		switch r.state {
		case 1:
			return "UNCONNECTED"
		case 2:
			return "CONNECTING"
		case 3:
			return "CONNECTED"
		case 4:
			return "DISCONNECTING"
		}
		return "UNKNOWN_" + strconv.Itoa(int(r.state))
	}
	return ""
}

// unixDiag dumps the unix sockets of the namespace open as nsfd with
// sock_diag(7): type, state, inode, exact name, peer and owner of each.
func unixDiag(nsfd int) ([]sockRow, error) {
	if nsfd < 0 {
		return nil, errors.New("the namespace could not be opened")
	}
	var fd int
	err := inNetNS(nsfd, func() error {
		var err error
		fd, err = unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_SOCK_DIAG)
		return err
	})
	if err != nil {
		return nil, err
	}
	defer unix.Close(fd)
	const (
		showName = 0x01
		showPeer = 0x04
		showUID  = 0x40
		attrName = 0
		attrPeer = 2
		attrUID  = 7
	)
	// struct nlmsghdr + struct unix_diag_req.
	var req [unix.NLMSG_HDRLEN + 24]byte
	binary.NativeEndian.PutUint32(req[0:], uint32(len(req)))
	binary.NativeEndian.PutUint16(req[4:], 20) // SOCK_DIAG_BY_FAMILY
	binary.NativeEndian.PutUint16(req[6:], unix.NLM_F_REQUEST|unix.NLM_F_DUMP)
	binary.NativeEndian.PutUint32(req[8:], 1)
	q := req[unix.NLMSG_HDRLEN:]
	q[0] = unix.AF_UNIX
	binary.NativeEndian.PutUint32(q[4:], 0xffffffff) // every state
	binary.NativeEndian.PutUint32(q[12:], showName|showPeer|showUID)
	binary.NativeEndian.PutUint32(q[16:], 0xffffffff) // no cookie
	binary.NativeEndian.PutUint32(q[20:], 0xffffffff)
	if err := unix.Sendto(fd, req[:], 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return nil, err
	}
	var rows []sockRow
	buf := make([]byte, 64<<10)
	for {
		n, _, err := unix.Recvfrom(fd, buf, 0)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return nil, err
		}
		msgs, err := syscallParseNetlink(buf[:n])
		if err != nil {
			return nil, err
		}
		for _, m := range msgs {
			switch m.typ {
			case unix.NLMSG_DONE:
				return rows, nil
			case unix.NLMSG_ERROR:
				if len(m.data) >= 4 {
					if e := int32(binary.NativeEndian.Uint32(m.data)); e != 0 {
						return nil, unix.Errno(-e)
					}
				}
				return rows, nil
			}
			// struct unix_diag_msg: family, type, state, pad, ino u32,
			// cookie [2]u32; then attributes.
			if len(m.data) < 16 {
				return nil, errors.New("sock_diag: short message")
			}
			r := sockRow{family: famUnix, typ: unixType(uint64(m.data[1])), inode: uint64(binary.NativeEndian.Uint32(m.data[4:]))}
			r.state, r.flags = unixState(m.data[2], r.inode)
			for a := m.data[16:]; len(a) >= 4; {
				l := int(binary.NativeEndian.Uint16(a))
				typ := binary.NativeEndian.Uint16(a[2:])
				if l < 4 || l > len(a) {
					break
				}
				v := a[4:l]
				switch typ {
				case attrName:
					if len(v) > 0 && v[0] == 0 {
						// Abstract: exactly the name's bytes.
						r.path = "@" + string(v[1:])
					} else {
						// A path, with its terminating NUL.
						r.path = string(bytes.TrimSuffix(v, []byte{0}))
					}
				case attrPeer:
					if len(v) >= 4 {
						r.peer = uint64(binary.NativeEndian.Uint32(v))
					}
				case attrUID:
					if len(v) >= 4 {
						r.uid, r.hasUID = binary.NativeEndian.Uint32(v), true
					}
				}
				a = a[min((l+3)&^3, len(a)):]
			}
			rows = append(rows, r)
		}
	}
}

// unixState turns a unix socket's sk_state, as sock_diag gives it, into
// the St and Flags columns /proc/net/unix would show (unix_seq_show in
// net/unix/af_unix.c), so that stateName names it the same either way: a
// listener has __SO_ACCEPTCON; a socket with a file (inode not 0) is
// CONNECTED when established, else UNCONNECTED; one without (a connection
// not yet accepted) is CONNECTING when established, else DISCONNECTING.
func unixState(skState uint8, inode uint64) (state uint8, flags uint32) {
	const tcpEstablished, tcpListen = 1, 10
	if skState == tcpListen {
		flags = 1 << 16
	}
	switch {
	case inode != 0 && skState == tcpEstablished:
		return 3, flags
	case inode != 0:
		return 1, flags
	case skState == tcpEstablished:
		return 2, flags
	}
	return 4, flags
}

type nlMsg struct {
	typ  uint16
	data []byte
}

// syscallParseNetlink splits a buffer of netlink messages.
func syscallParseNetlink(b []byte) ([]nlMsg, error) {
	var out []nlMsg
	for len(b) >= unix.NLMSG_HDRLEN {
		l := int(binary.NativeEndian.Uint32(b))
		if l < unix.NLMSG_HDRLEN || l > len(b) {
			return out, errors.New("netlink: malformed message")
		}
		out = append(out, nlMsg{typ: binary.NativeEndian.Uint16(b[4:]), data: b[unix.NLMSG_HDRLEN:l]})
		b = b[min((l+3)&^3, len(b)):]
	}
	return out, nil
}

// owners maps socket inodes to the processes holding them.
type owners struct {
	pairs []sockOwner // sorted by inode, then pid
}

type sockOwner struct {
	inode uint64
	pid   int32
}

// lookup returns the holders of inode, and the range of pairs they are.
func (o *owners) lookup(inode uint64) (pids []int32, from, to int) {
	i, _ := slices.BinarySearchFunc(o.pairs, inode, func(p sockOwner, ino uint64) int {
		switch {
		case p.inode < ino:
			return -1
		case p.inode > ino:
			return 1
		}
		return 0
	})
	from = i
	for ; i < len(o.pairs) && o.pairs[i].inode == inode; i++ {
		if n := len(pids); n == 0 || pids[n-1] != o.pairs[i].pid {
			pids = append(pids, o.pairs[i].pid)
		}
	}
	return pids, from, i
}

// writeConnections writes the sockets read from every namespace with
// their owners from the process scan, as far as it got.
func (c *collection) writeConnections(nss []*netNS, tables []nsSockets, scan *scanResult) {
	a := c.art[ConnectionsArtifact]
	defer a.close()
	if tables == nil || len(tables) < len(nss) {
		tables = make([]nsSockets, len(nss))
	}
	own := &owners{pairs: scan.sockets}
	slices.SortFunc(own.pairs, func(x, y sockOwner) int {
		switch {
		case x.inode < y.inode:
			return -1
		case x.inode > y.inode:
			return 1
		}
		return int(x.pid) - int(y.pid)
	})
	matched := make([]bool, len(own.pairs))
	if n := len(scan.fdUnread); n > 0 {
		a.errorf("the fd tables of %d processes could not be read (pids %s): sockets only they hold have no pid", n, pidList(scan.fdUnread))
	}
	if n := len(scan.unread); n > 0 {
		a.errorf("%d processes did not answer and were not read (pids %s): sockets only they hold have no pid", n, pidList(scan.unread))
	}
	if scan.skipped > 0 {
		a.cutShort(fmt.Sprintf("the fd tables of %d processes were not read, so sockets they hold may have no pid", scan.skipped))
	}
	var line []byte
	for i, ns := range nss {
		if ns.err != "" && ns.nsfd < 0 {
			a.errorf("%s: %s", ns.label(), ns.err)
		}
		t := &tables[i]
		for _, e := range t.errs {
			a.errorf("%s", e)
		}
		for j := range t.rows {
			r := &t.rows[j]
			rec := ConnectionRecord{
				NetNS:          ns.inode,
				NetNSName:      ns.name,
				Family:         famNames[r.family],
				Type:           r.typ,
				Protocol:       r.proto,
				LocalPort:      r.lport,
				RemotePort:     r.rport,
				PeerInode:      r.peer,
				InterfaceIndex: r.ifindex,
				State:          r.stateName(),
				Inode:          r.inode,
				TxQueue:        r.txq,
				RxQueue:        r.rxq,
				PIDs:           []int32{},
			}
			if r.local.IsValid() {
				rec.LocalAddr, rec.RemoteAddr = r.local.String(), r.remote.String()
			}
			rec.Path, rec.PathB64 = str(r.path)
			if r.hasUID {
				u := r.uid
				rec.UID = &u
			}
			if r.inode != 0 {
				if p, from, to := own.lookup(r.inode); len(p) > 0 {
					rec.PIDs, rec.PID = p, p[0]
					for k := from; k < to; k++ {
						matched[k] = true
					}
				}
			}
			line = appendJSON(line[:0], &rec)
			if !a.lines(line) {
				return
			}
		}
	}
	// Socket fds that no table row named: a family not read, or a
	// socket made after the tables were read. The snapshot's own (its
	// netlink sockets come and go while it runs) are left out.
	var fds, socks int
	var pids []int32
	var last uint64
	self := int32(os.Getpid())
	for k, m := range matched {
		o := own.pairs[k]
		if m || o.pid == self {
			continue
		}
		fds++
		if fds == 1 || o.inode != last {
			socks++
		}
		last = o.inode
		pids = append(pids, o.pid)
	}
	if fds > 0 {
		slices.Sort(pids)
		pids = slices.Compact(pids)
		a.errorf("%d socket fds (%d sockets) of %d processes matched no socket table read (pids %s): sockets of a family not read (sctp, vsock, bluetooth, alg, xdp, tipc, mptcp, …), sockets never bound (an unbound tcp, udp or ping socket is in no table), or sockets made after the tables were read", fds, socks, len(pids), pidList(pids))
	}
	if c.ctx.Err() == nil && len(nss) == 0 {
		a.errorf("no network namespace found")
	}
}
