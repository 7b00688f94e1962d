package logging

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// journalConn sends entries to journald: one unconnected datagram socket,
// one sendmsg(2) per entry to the journal socket's path (as sd_journal_send
// does), so that a journald restarted with a new socket is found again.
// Datagrams are sent whole or not at all: no lock is needed.
type journalConn struct {
	conn *net.UnixConn
	addr *net.UnixAddr
}

// journalSendTimeout bounds how long an entry waits for room in journald's
// queue before it goes to the fallback handler.
const journalSendTimeout = 250 * time.Millisecond

// journalSndBuf is the send buffer asked for, as sd-journal does: entries
// up to its size go in one datagram, larger ones in a memfd.
const journalSndBuf = 8 << 20

// dialJournal checks that journald listens at path (connect(2) fails when
// the socket is missing, nobody listens on it or it may not be written
// to) and returns a connection to send to it.
func dialJournal(path string) (*journalConn, error) {
	addr := &net.UnixAddr{Name: path, Net: "unixgram"}
	probe, err := net.DialUnix("unixgram", nil, addr)
	if err != nil {
		return nil, fmt.Errorf("journal socket: %w", err)
	}
	probe.Close()
	fd, err := syscall.Socket(syscall.AF_UNIX, syscall.SOCK_DGRAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("journal socket: %w", err)
	}
	f := os.NewFile(uintptr(fd), "journal")
	defer f.Close()
	fc, err := net.FileConn(f) // a duplicate of fd, in Go's poller
	if err != nil {
		return nil, fmt.Errorf("journal socket: %w", err)
	}
	conn, ok := fc.(*net.UnixConn)
	if !ok {
		fc.Close()
		return nil, fmt.Errorf("journal socket: got a %T", fc)
	}
	conn.SetWriteBuffer(journalSndBuf) // capped by net.core.wmem_max; the memfd path covers the rest
	return &journalConn{conn: conn, addr: addr}, nil
}

// send sends one encoded entry: in a datagram, or, when it is too large for
// one, in a sealed memfd passed in an empty datagram (the native protocol).
func (j *journalConn) send(entry []byte) error {
	j.conn.SetWriteDeadline(time.Now().Add(journalSendTimeout))
	_, _, err := j.conn.WriteMsgUnix(entry, nil, j.addr)
	if err == nil || !(errors.Is(err, syscall.EMSGSIZE) || errors.Is(err, syscall.ENOBUFS)) {
		return err
	}
	fd, err := unix.MemfdCreate("cordon-journal-entry", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		return fmt.Errorf("journal entry of %d bytes: %w", len(entry), err)
	}
	f := os.NewFile(uintptr(fd), "journal-entry")
	defer f.Close()
	if _, err := f.Write(entry); err != nil {
		return fmt.Errorf("journal entry of %d bytes: %w", len(entry), err)
	}
	// journald takes a memfd only sealed: nobody can change the entry
	// once sent.
	if _, err := unix.FcntlInt(f.Fd(), unix.F_ADD_SEALS, unix.F_SEAL_SEAL|unix.F_SEAL_SHRINK|unix.F_SEAL_GROW|unix.F_SEAL_WRITE); err != nil {
		return fmt.Errorf("journal entry of %d bytes: seal: %w", len(entry), err)
	}
	j.conn.SetWriteDeadline(time.Now().Add(journalSendTimeout))
	_, _, err = j.conn.WriteMsgUnix(nil, syscall.UnixRights(fd), j.addr)
	return err
}

// IsJournalStream reports whether f is the stream systemd connected to the
// journal for the service: systemd sets JOURNAL_STREAM to the device and
// inode numbers ("dev:ino", in decimal) of the standard output or error
// it connected to the journal (systemd.exec(5), "Environment variables in
// spawned processes"), and a process whose stream matches may upgrade to
// the native protocol (https://systemd.io/JOURNAL_NATIVE_PROTOCOL/,
// "Automatic Protocol Upgrading"). A redirected stream (cordon-agent …
// 2>file) does not match, and a child process that inherited the variable
// but not the stream does not either.
func IsJournalStream(f *os.File) bool {
	devText, inoText, ok := strings.Cut(os.Getenv("JOURNAL_STREAM"), ":")
	if !ok || f == nil {
		return false
	}
	dev, err1 := strconv.ParseUint(devText, 10, 64)
	ino, err2 := strconv.ParseUint(inoText, 10, 64)
	if err1 != nil || err2 != nil {
		return false
	}
	rc, err := f.SyscallConn()
	if err != nil {
		return false
	}
	var st unix.Stat_t
	var serr error
	if err := rc.Control(func(fd uintptr) { serr = unix.Fstat(int(fd), &st) }); err != nil || serr != nil {
		return false
	}
	return uint64(st.Dev) == dev && uint64(st.Ino) == ino // Dev is 32 bits on some platforms
}
