package snapshot

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"strconv"
	"unicode/utf8"
)

// str returns s for a JSON string field and, when s is not valid UTF-8
// (so that encoding/json would replace bytes with U+FFFD), its exact bytes
// in base64 for the field's _b64 sibling; else "".
func str(s string) (string, string) {
	if utf8.ValidString(s) {
		return s, ""
	}
	return s, base64.StdEncoding.EncodeToString([]byte(s))
}

// splitNUL splits NUL-terminated strings (/proc/[pid]/cmdline, environ)
// into a list for a JSON field and, when any is not UTF-8, the parallel
// list of every element in base64; else nil. Empty elements are kept
// (an empty argument is an argument), but a missing final NUL is
// tolerated: a process that rewrote its argv may leave none. With names,
// each element is cut at its first '=' and only the name is kept.
func splitNUL(b []byte, names bool) ([]string, []string) {
	out := []string{}
	if len(b) == 0 {
		return out, nil
	}
	b = bytes.TrimSuffix(b, []byte{0})
	valid := true
	for el := range bytes.SplitSeq(b, []byte{0}) {
		if names {
			if len(el) == 0 {
				continue
			}
			if i := bytes.IndexByte(el, '='); i >= 0 {
				el = el[:i]
			}
		}
		valid = valid && utf8.Valid(el)
		out = append(out, string(el))
	}
	if valid {
		return out, nil
	}
	b64 := make([]string, len(out))
	for i, s := range out {
		b64[i] = base64.StdEncoding.EncodeToString([]byte(s))
	}
	return out, b64
}

// parseCmdline splits /proc/[pid]/cmdline into argv (see splitNUL).
func parseCmdline(b []byte) []string {
	out, _ := splitNUL(b, false)
	return out
}

// jsonBuf is a reusable encoder of JSONL records.
type jsonBuf struct {
	buf bytes.Buffer
	enc *json.Encoder
}

// appendJSON appends v as one line of compact JSON (HTML characters not
// escaped, as pkg/evidence writes them) to dst.
func appendJSON(dst []byte, v any) []byte {
	switch r := v.(type) {
	case *ProcessRecord:
		return r.appendJSON(dst)
	case *OpenFilesRecord:
		return r.appendJSON(dst)
	case *ConnectionRecord:
		return r.appendJSON(dst)
	}
	return appendReflect(dst, v)
}

// appendReflect is appendJSON through encoding/json.
func appendReflect(dst []byte, v any) []byte {
	var jb jsonBuf
	jb.buf = *bytes.NewBuffer(dst)
	jb.enc = json.NewEncoder(&jb.buf)
	jb.enc.SetEscapeHTML(false)
	if err := jb.enc.Encode(v); err != nil {
		// Only unencodable types fail, and records have none.
		panic("snapshot: encode record: " + err.Error())
	}
	return jb.buf.Bytes()
}

// The three records of which a busy host has tens of thousands are encoded
// by hand rather than through reflection: the output is byte for byte what
// encoding/json writes with SetEscapeHTML(false) (TestFastJSON checks it).

const hexDigits = "0123456789abcdef"

// appendString appends s as a JSON string, escaped as encoding/json does
// without HTML escaping: invalid UTF-8 becomes \ufffd, U+2028 and U+2029
// are escaped.
func appendString(dst []byte, s string) []byte {
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); {
		if b := s[i]; b < utf8.RuneSelf {
			if b >= 0x20 && b != '"' && b != '\\' {
				i++
				continue
			}
			dst = append(dst, s[start:i]...)
			switch b {
			case '\\', '"':
				dst = append(dst, '\\', b)
			case '\b':
				dst = append(dst, '\\', 'b')
			case '\f':
				dst = append(dst, '\\', 'f')
			case '\n':
				dst = append(dst, '\\', 'n')
			case '\r':
				dst = append(dst, '\\', 'r')
			case '\t':
				dst = append(dst, '\\', 't')
			default:
				dst = append(dst, '\\', 'u', '0', '0', hexDigits[b>>4], hexDigits[b&0xF])
			}
			i++
			start = i
			continue
		}
		c, size := utf8.DecodeRuneInString(s[i:])
		if c == utf8.RuneError && size == 1 {
			dst = append(dst, s[start:i]...)
			dst = append(dst, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if c == '\u2028' || c == '\u2029' {
			dst = append(dst, s[start:i]...)
			dst = append(dst, '\\', 'u', '2', '0', '2', hexDigits[c&0xF])
			i += size
			start = i
			continue
		}
		i += size
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}

func appendKey(dst []byte, key string) []byte {
	dst = append(dst, ',', '"')
	dst = append(dst, key...)
	return append(dst, '"', ':')
}

func appendStrings(dst []byte, ss []string) []byte {
	if ss == nil {
		return append(dst, "null"...)
	}
	dst = append(dst, '[')
	for i, s := range ss {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = appendString(dst, s)
	}
	return append(dst, ']')
}

func appendUint32Ptr(dst []byte, p *uint32) []byte {
	if p == nil {
		return append(dst, "null"...)
	}
	return strconv.AppendUint(dst, uint64(*p), 10)
}

func appendBool(dst []byte, b bool) []byte {
	if b {
		return append(dst, "true"...)
	}
	return append(dst, "false"...)
}

// appendJSON appends the record as one line of JSON.
func (r *ProcessRecord) appendJSON(d []byte) []byte {
	d, _, _ = r.appendJSONMarks(d)
	return d
}

// appendJSONMarks is appendJSON that also returns two offsets into d, for
// a record whose executable is hashed after it is encoded (ExeSHA256 and
// ExeError ""): sha, where the hash goes (the closing quote of
// "exe_sha256":""), and errAt, where an exe_error field goes (just after
// the value of exe_inode).
func (r *ProcessRecord) appendJSONMarks(d []byte) (out []byte, sha, errAt int) {
	d = append(d, `{"pid":`...)
	d = strconv.AppendInt(d, int64(r.PID), 10)
	d = appendKey(d, "ppid")
	d = strconv.AppendInt(d, int64(r.PPID), 10)
	d = appendKey(d, "start_time")
	d = appendString(d, r.StartTime)
	d = appendKey(d, "start_ticks")
	d = strconv.AppendUint(d, r.StartTicks, 10)
	d = appendKey(d, "name")
	d = appendString(d, r.Name)
	if r.NameB64 != "" {
		d = appendKey(d, "name_b64")
		d = appendString(d, r.NameB64)
	}
	d = appendKey(d, "cmdline")
	d = appendStrings(d, r.Cmdline)
	if len(r.CmdlineB64) > 0 {
		d = appendKey(d, "cmdline_b64")
		d = appendStrings(d, r.CmdlineB64)
	}
	d = appendKey(d, "exe")
	d = appendString(d, r.Exe)
	if r.ExeB64 != "" {
		d = appendKey(d, "exe_b64")
		d = appendString(d, r.ExeB64)
	}
	d = appendKey(d, "exe_deleted")
	d = appendBool(d, r.ExeDeleted)
	d = appendKey(d, "exe_sha256")
	d = appendString(d, r.ExeSHA256)
	sha = len(d) - 1
	d = appendKey(d, "exe_size")
	d = strconv.AppendInt(d, r.ExeSize, 10)
	d = appendKey(d, "exe_device")
	d = appendString(d, r.ExeDevice)
	d = appendKey(d, "exe_inode")
	d = strconv.AppendUint(d, r.ExeInode, 10)
	errAt = len(d)
	if r.ExeError != "" {
		d = appendKey(d, "exe_error")
		d = appendString(d, r.ExeError)
	}
	d = appendKey(d, "cwd")
	d = appendString(d, r.Cwd)
	if r.CwdB64 != "" {
		d = appendKey(d, "cwd_b64")
		d = appendString(d, r.CwdB64)
	}
	d = appendKey(d, "root")
	d = appendString(d, r.Root)
	if r.RootB64 != "" {
		d = appendKey(d, "root_b64")
		d = appendString(d, r.RootB64)
	}
	d = appendKey(d, "uid")
	d = appendUint32Ptr(d, r.UID)
	d = appendKey(d, "euid")
	d = appendUint32Ptr(d, r.EUID)
	d = appendKey(d, "gid")
	d = appendUint32Ptr(d, r.GID)
	d = appendKey(d, "egid")
	d = appendUint32Ptr(d, r.EGID)
	d = appendKey(d, "user")
	d = appendString(d, r.User)
	d = appendKey(d, "euser")
	d = appendString(d, r.EUser)
	d = appendKey(d, "group")
	d = appendString(d, r.Group)
	d = appendKey(d, "egroup")
	d = appendString(d, r.EGroup)
	d = appendKey(d, "state")
	d = appendString(d, r.State)
	d = appendKey(d, "pgid")
	d = strconv.AppendInt(d, int64(r.PGID), 10)
	d = appendKey(d, "sid")
	d = strconv.AppendInt(d, int64(r.SID), 10)
	d = appendKey(d, "tty")
	d = strconv.AppendUint(d, uint64(r.TTY), 10)
	d = appendKey(d, "kernel_thread")
	d = appendBool(d, r.KernelThread)
	d = appendKey(d, "threads")
	d = strconv.AppendInt(d, int64(r.Threads), 10)
	d = appendKey(d, "rss_bytes")
	d = strconv.AppendInt(d, r.RSSBytes, 10)
	d = appendKey(d, "fd_count")
	if r.FDCount == nil {
		d = append(d, "null"...)
	} else {
		d = strconv.AppendInt(d, int64(*r.FDCount), 10)
	}
	d = appendKey(d, "cgroup")
	d = appendStrings(d, r.Cgroup)
	n := &r.Namespaces
	d = append(d, `,"namespaces":{"net":`...)
	d = strconv.AppendUint(d, n.Net, 10)
	d = appendKey(d, "pid")
	d = strconv.AppendUint(d, n.PID, 10)
	d = appendKey(d, "mnt")
	d = strconv.AppendUint(d, n.Mnt, 10)
	d = appendKey(d, "uts")
	d = strconv.AppendUint(d, n.UTS, 10)
	d = appendKey(d, "ipc")
	d = strconv.AppendUint(d, n.IPC, 10)
	d = appendKey(d, "user")
	d = strconv.AppendUint(d, n.User, 10)
	d = appendKey(d, "cgroup")
	d = strconv.AppendUint(d, n.Cgroup, 10)
	d = append(d, '}')
	d = appendKey(d, "env_names")
	d = appendStrings(d, r.EnvNames)
	if len(r.EnvNamesB64) > 0 {
		d = appendKey(d, "env_names_b64")
		d = appendStrings(d, r.EnvNamesB64)
	}
	if r.Error != "" {
		d = appendKey(d, "error")
		d = appendString(d, r.Error)
	}
	return append(d, '}', '\n'), sha, errAt
}

// appendJSON appends the record as one line of JSON.
func (r *OpenFilesRecord) appendJSON(d []byte) []byte {
	d = append(d, `{"pid":`...)
	d = strconv.AppendInt(d, int64(r.PID), 10)
	d = appendKey(d, "start_time")
	d = appendString(d, r.StartTime)
	d = appendKey(d, "fds")
	if r.FDs == nil {
		d = append(d, "null"...)
	} else {
		d = append(d, '[')
		for i := range r.FDs {
			f := &r.FDs[i]
			if i > 0 {
				d = append(d, ',')
			}
			d = append(d, `{"fd":`...)
			d = strconv.AppendInt(d, int64(f.FD), 10)
			d = appendKey(d, "target")
			d = appendString(d, f.Target)
			if f.TargetB64 != "" {
				d = appendKey(d, "target_b64")
				d = appendString(d, f.TargetB64)
			}
			d = append(d, '}')
		}
		d = append(d, ']')
	}
	if r.Error != "" {
		d = appendKey(d, "error")
		d = appendString(d, r.Error)
	}
	return append(d, '}', '\n')
}

// appendJSON appends the record as one line of JSON.
func (r *ConnectionRecord) appendJSON(d []byte) []byte {
	d = append(d, `{"netns":`...)
	d = strconv.AppendUint(d, r.NetNS, 10)
	d = appendKey(d, "netns_name")
	d = appendString(d, r.NetNSName)
	d = appendKey(d, "family")
	d = appendString(d, r.Family)
	d = appendKey(d, "type")
	d = appendString(d, r.Type)
	d = appendKey(d, "protocol")
	d = strconv.AppendUint(d, uint64(r.Protocol), 10)
	d = appendKey(d, "local_addr")
	d = appendString(d, r.LocalAddr)
	d = appendKey(d, "local_port")
	d = strconv.AppendUint(d, uint64(r.LocalPort), 10)
	d = appendKey(d, "remote_addr")
	d = appendString(d, r.RemoteAddr)
	d = appendKey(d, "remote_port")
	d = strconv.AppendUint(d, uint64(r.RemotePort), 10)
	d = appendKey(d, "path")
	d = appendString(d, r.Path)
	if r.PathB64 != "" {
		d = appendKey(d, "path_b64")
		d = appendString(d, r.PathB64)
	}
	d = appendKey(d, "peer_inode")
	d = strconv.AppendUint(d, r.PeerInode, 10)
	d = appendKey(d, "interface_index")
	d = strconv.AppendInt(d, int64(r.InterfaceIndex), 10)
	d = appendKey(d, "state")
	d = appendString(d, r.State)
	d = appendKey(d, "uid")
	d = appendUint32Ptr(d, r.UID)
	d = appendKey(d, "inode")
	d = strconv.AppendUint(d, r.Inode, 10)
	d = appendKey(d, "tx_queue")
	d = strconv.AppendUint(d, r.TxQueue, 10)
	d = appendKey(d, "rx_queue")
	d = strconv.AppendUint(d, r.RxQueue, 10)
	d = appendKey(d, "pids")
	if r.PIDs == nil {
		d = append(d, "null"...)
	} else {
		d = append(d, '[')
		for i, p := range r.PIDs {
			if i > 0 {
				d = append(d, ',')
			}
			d = strconv.AppendInt(d, int64(p), 10)
		}
		d = append(d, ']')
	}
	d = appendKey(d, "pid")
	d = strconv.AppendInt(d, int64(r.PID), 10)
	return append(d, '}', '\n')
}
