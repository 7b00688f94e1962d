package snapshot

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// noatime is the flag every open adds so that reading a file on a disk
// does not change its access time (open(2), O_NOATIME). It is a variable
// only so that a test can show what happens without it.
var noatime = unix.O_NOATIME

// openAt opens path relative to dirfd (or absolute) read-only with
// O_NOATIME and O_CLOEXEC. O_NOATIME needs the caller to own the file or
// hold CAP_FOWNER; without either the open is retried without it, and
// atimeKept is false.
func openAt(dirfd int, path string, flags int) (fd int, atimeKept bool, err error) {
	flags |= unix.O_RDONLY | unix.O_CLOEXEC
	for {
		fd, err = unix.Openat(dirfd, path, flags|noatime, 0)
		if err == unix.EINTR {
			continue
		}
		if err == unix.EPERM && noatime != 0 {
			// Not the owner and no CAP_FOWNER: O_NOATIME is refused.
			for {
				fd, err = unix.Openat(dirfd, path, flags, 0)
				if err != unix.EINTR {
					return fd, false, err
				}
			}
		}
		return fd, noatime != 0, err
	}
}

// readFD reads fd to its end, appending to buf and growing it as needed,
// up to limit bytes in all; more is an error.
func readFD(fd int, buf []byte, limit int) ([]byte, error) {
	for {
		if len(buf) == cap(buf) {
			if len(buf) >= limit {
				return buf, fmt.Errorf("larger than %d bytes", limit)
			}
			buf = slices.Grow(buf, min(limit-len(buf), max(cap(buf), 4096)))
		}
		n, err := unix.Read(fd, buf[len(buf):cap(buf)])
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return buf, err
		}
		if n == 0 {
			return buf, nil
		}
		buf = buf[:len(buf)+n]
	}
}

// readShortAt is readAt for the /proc/[pid] files whose whole content the
// kernel returns in one read when the buffer is large enough (stat,
// status, cgroup: single_open seq files; cmdline, environ: a loop until
// the buffer is full): a read that does not fill the buffer ends the file,
// which saves the read that would return 0.
func readShortAt(dirfd int, path string, buf []byte, limit int) ([]byte, error) {
	fd, _, err := openAt(dirfd, path, 0)
	if err != nil {
		return buf[:0], err
	}
	defer unix.Close(fd)
	if cap(buf) < 16<<10 {
		buf = make([]byte, 0, 64<<10)
	}
	for {
		n, err := unix.Read(fd, buf[:cap(buf)])
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return buf[:0], err
		}
		if n < cap(buf) {
			return buf[:n], nil
		}
		// Full: read the rest the usual way.
		return readFD(fd, buf[:n], limit)
	}
}

// readAt reads a whole file relative to dirfd (see openAt) into buf[:0].
func readAt(dirfd int, path string, buf []byte, limit int) ([]byte, error) {
	fd, _, err := openAt(dirfd, path, 0)
	if err != nil {
		return buf[:0], err
	}
	defer unix.Close(fd)
	return readFD(fd, buf[:0], limit)
}

// maxRead bounds a whole-file read, in bytes. /proc/net/tcp of a very busy
// host is a few tens of MiB.
const maxRead = 256 << 20

// readFile reads a whole file with O_NOATIME where the kernel allows it
// (the caller owns the file or has CAP_FOWNER), so that reading evidence
// from a disk does not update its access time.
func readFile(path string) ([]byte, error) {
	b, err := readAt(unix.AT_FDCWD, path, nil, maxRead)
	if err != nil {
		return nil, &pathError{path, err}
	}
	return b, nil
}

// pathError is an error about one file: "<path>: <error>".
type pathError struct {
	path string
	err  error
}

func (e *pathError) Error() string { return e.path + ": " + e.err.Error() }
func (e *pathError) Unwrap() error { return e.err }

// readlinkAt returns the target of a symbolic link relative to dirfd,
// using buf (which it may grow) for the bytes.
func readlinkAt(dirfd int, path string, buf *[]byte) ([]byte, error) {
	if len(*buf) < 256 {
		*buf = make([]byte, 4096)
	}
	for {
		n, err := unix.Readlinkat(dirfd, path, *buf)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return nil, err
		}
		if n < len(*buf) {
			return (*buf)[:n], nil
		}
		if len(*buf) >= 1<<20 {
			return (*buf)[:n], errors.New("link target longer than 1 MiB")
		}
		*buf = make([]byte, 2*len(*buf))
	}
}

// listDir calls fn with the name of each entry of the directory open as fd
// (but "." and ".."), reading it with getdents64(2) into buf.
func listDir(fd int, buf []byte, fn func(name []byte) bool) error {
	for {
		n, err := unix.Getdents(fd, buf)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		if n <= 0 {
			return nil
		}
		for b := buf[:n]; len(b) >= 19; {
			// struct linux_dirent64: ino u64, off s64, reclen u16,
			// type u8, name NUL-terminated.
			reclen := int(uint16(b[16]) | uint16(b[17])<<8)
			if reclen < 19 || reclen > len(b) {
				return errors.New("getdents64: malformed record")
			}
			name := b[19:reclen]
			if i := bytes.IndexByte(name, 0); i >= 0 {
				name = name[:i]
			}
			b = b[reclen:]
			if len(name) == 0 || (name[0] == '.' && (len(name) == 1 || (len(name) == 2 && name[1] == '.'))) {
				continue
			}
			if !fn(name) {
				return nil
			}
		}
	}
}

// listPIDs returns the PIDs in /proc, in ascending order as the kernel
// lists them.
func listPIDs() ([]int, error) {
	fd, err := unix.Open("/proc", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	defer unix.Close(fd)
	var pids []int
	buf := make([]byte, 64<<10)
	err = listDir(fd, buf, func(name []byte) bool {
		if pid, ok := atoi(name); ok {
			pids = append(pids, pid)
		}
		return true
	})
	return pids, err
}

// atoi parses a non-negative decimal number of at most 18 digits.
func atoi(b []byte) (int, bool) {
	if len(b) == 0 || len(b) > 18 {
		return 0, false
	}
	n := 0
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int(c-'0')
	}
	return n, true
}

// nsInode parses "net:[4026531840]", a namespace link's target
// (namespaces(7)), into its inode number.
func nsInode(target []byte) (uint64, bool) {
	i, j := bytes.IndexByte(target, '['), bytes.LastIndexByte(target, ']')
	if i < 0 || j < i {
		return 0, false
	}
	n, err := strconv.ParseUint(string(target[i+1:j]), 10, 64)
	return n, err == nil
}

// socketInode parses "socket:[12345]", an fd link's target for a socket.
func socketInode(target []byte) (uint64, bool) {
	if !bytes.HasPrefix(target, []byte("socket:[")) || target[len(target)-1] != ']' {
		return 0, false
	}
	n, ok := atoi(target[8 : len(target)-1])
	return uint64(n), ok
}

// gone reports whether err says a /proc entry's process no longer exists.
func gone(err error) bool {
	return errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ESRCH)
}

// bufPool recycles read buffers of whole /proc files.
var bufPool = sync.Pool{New: func() any { b := make([]byte, 0, 64<<10); return &b }}
