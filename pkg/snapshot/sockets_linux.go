package snapshot

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// Socket families and types as sockRow holds them.
const (
	famInet = iota + 1
	famInet6
	famUnix
	famPacket
)

var famNames = [...]string{famInet: "inet", famInet6: "inet6", famUnix: "unix", famPacket: "packet"}

// sockTable is one /proc/net table: its file name, family and type.
type sockTable struct {
	file   string
	family uint8
	typ    string
}

var sockTables = []sockTable{
	{"tcp", famInet, "tcp"}, {"tcp6", famInet6, "tcp"},
	{"udp", famInet, "udp"}, {"udp6", famInet6, "udp"},
	{"raw", famInet, "raw"}, {"raw6", famInet6, "raw"},
	{"unix", famUnix, ""}, {"packet", famPacket, ""},
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

// readSocketTables reads the socket tables of every namespace, keeping
// the raw text, and the unix sockets' peers from sock_diag.
func (c *collection) readSocketTables(nss []*netNS) []nsSockets {
	a := c.art[ConnectionsArtifact]
	out := make([]nsSockets, len(nss))
	var skipped atomic.Int64
	defer func() {
		if n := skipped.Load(); n > 0 {
			a.cutShort(fmt.Sprintf("the socket tables of %d of %d network namespaces were not read", n, len(nss)))
		}
	}()
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
				if t.family == famInet6 && gone(err) {
					continue // no IPv6 in this kernel or namespace
				}
				res.errs = append(res.errs, fmt.Sprintf("%s: /proc/net/%s: %v", ns.label(), t.file, err))
				continue
			}
			a.raw(ns.rawPath(t.file), b)
			var bad int
			res.rows, bad = parseSockTable(b, t, res.rows)
			if bad > 0 {
				res.errs = append(res.errs, fmt.Sprintf("%s: /proc/net/%s: %d lines not understood", ns.label(), t.file, bad))
			}
		}
		if ns.nsfd >= 0 {
			peers, err := unixDiag(ns.nsfd)
			if err != nil {
				res.errs = append(res.errs, fmt.Sprintf("%s: unix socket peers and owners (sock_diag): %v", ns.label(), err))
			}
			for j := range res.rows {
				r := &res.rows[j]
				if r.family != famUnix {
					continue
				}
				if d, ok := peers[r.inode]; ok {
					r.peer, r.uid, r.hasUID = d.peer, d.uid, d.hasUID
					if d.hasName {
						r.path = d.name
					}
				}
			}
		}
	})
	return out
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
	if t.typ == "raw" {
		// The local "port" of a raw socket is its protocol.
		r.proto, r.lport = r.lport, 0
	}
	return r, true
}

// parseUnixLine parses a line of /proc/net/unix (proc(5)):
// Num RefCount Protocol Flags Type St Inode [Path].
func parseUnixLine(line []byte) (sockRow, bool) {
	var f [8][]byte
	n := fields(line, f[:])
	if n < 7 {
		return sockRow{}, false
	}
	flags, ok1 := hexUint(f[3])
	typ, ok2 := hexUint(f[4])
	st, ok3 := hexUint(f[5])
	ino, ok4 := atoi(f[6])
	if !(ok1 && ok2 && ok3 && ok4) {
		return sockRow{}, false
	}
	r := sockRow{family: famUnix, flags: uint32(flags), state: uint8(st), inode: uint64(ino)}
	switch typ {
	case unix.SOCK_STREAM:
		r.typ = "stream"
	case unix.SOCK_DGRAM:
		r.typ = "dgram"
	case unix.SOCK_SEQPACKET:
		r.typ = "seqpacket"
	default:
		r.typ = strconv.FormatUint(typ, 10)
	}
	if n == 8 {
		r.path = string(f[7])
	}
	return r, true
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

// unixPeer is what sock_diag says of one unix socket.
type unixPeer struct {
	peer    uint64
	uid     uint32
	hasUID  bool
	name    string
	hasName bool
}

// unixDiag dumps the unix sockets of the namespace open as nsfd with
// sock_diag(7), for their peers, owners and exact names.
func unixDiag(nsfd int) (map[uint64]unixPeer, error) {
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
	out := map[uint64]unixPeer{}
	buf := make([]byte, 64<<10)
	for {
		n, _, err := unix.Recvfrom(fd, buf, 0)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return out, err
		}
		msgs, err := syscallParseNetlink(buf[:n])
		if err != nil {
			return out, err
		}
		for _, m := range msgs {
			switch m.typ {
			case unix.NLMSG_DONE:
				return out, nil
			case unix.NLMSG_ERROR:
				if len(m.data) >= 4 {
					if e := int32(binary.NativeEndian.Uint32(m.data)); e != 0 {
						return out, unix.Errno(-e)
					}
				}
				return out, nil
			}
			// struct unix_diag_msg: family, type, state, pad, ino u32,
			// cookie [2]u32; then attributes.
			if len(m.data) < 16 {
				continue
			}
			ino := uint64(binary.NativeEndian.Uint32(m.data[4:]))
			var p unixPeer
			for a := m.data[16:]; len(a) >= 4; {
				l := int(binary.NativeEndian.Uint16(a))
				typ := binary.NativeEndian.Uint16(a[2:])
				if l < 4 || l > len(a) {
					break
				}
				v := a[4:l]
				switch typ {
				case attrName:
					p.hasName = true
					if len(v) > 0 && v[0] == 0 {
						// Abstract: exactly the name's bytes.
						p.name = "@" + string(v[1:])
					} else {
						// A path, with its terminating NUL.
						p.name = string(bytes.TrimSuffix(v, []byte{0}))
					}
				case attrPeer:
					if len(v) >= 4 {
						p.peer = uint64(binary.NativeEndian.Uint32(v))
					}
				case attrUID:
					if len(v) >= 4 {
						p.uid, p.hasUID = binary.NativeEndian.Uint32(v), true
					}
				}
				a = a[min((l+3)&^3, len(a)):]
			}
			out[ino] = p
		}
	}
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

func (o *owners) lookup(inode uint64) []int32 {
	i, _ := slices.BinarySearchFunc(o.pairs, inode, func(p sockOwner, ino uint64) int {
		switch {
		case p.inode < ino:
			return -1
		case p.inode > ino:
			return 1
		}
		return 0
	})
	var pids []int32
	for ; i < len(o.pairs) && o.pairs[i].inode == inode; i++ {
		if n := len(pids); n == 0 || pids[n-1] != o.pairs[i].pid {
			pids = append(pids, o.pairs[i].pid)
		}
	}
	return pids
}

// writeConnections writes the sockets read from every namespace with
// their owners from the process scan.
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
	if n := len(scan.fdUnread); n > 0 {
		const maxList = 20
		list := fmt.Sprint(scan.fdUnread[:min(n, maxList)])
		if n > maxList {
			list = strings.TrimSuffix(list, "]") + " …]"
		}
		a.errorf("the fd tables of %d processes could not be read (pids %s): sockets only they hold have no pid", n, list)
	}
	if c.ctx.Err() != nil && scan.skipped > 0 {
		a.cutShort(fmt.Sprintf("the fd tables of %d processes were not read, so sockets they hold may have no pid", scan.skipped))
	}
	var line []byte
	total := 0
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
				if p := own.lookup(r.inode); len(p) > 0 {
					rec.PIDs, rec.PID = p, p[0]
				}
			}
			line = appendJSON(line[:0], &rec)
			if !a.lines(line) {
				return
			}
			total++
		}
	}
	if c.ctx.Err() == nil && len(nss) == 0 {
		a.errorf("no network namespace found")
	}
}
