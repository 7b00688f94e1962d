package snapshot

import (
	"bytes"
	"testing"
)

// oddStrings are strings encoding/json has to escape or repair.
var oddStrings = []string{
	"", "plain", "with space", "new\nline", "tab\tcr\rbs\bff\f", "\x00\x01\x1f\x7f", `quote " backslash \`,
	"<html> & </html>", "\xff\xfe invalid \x80", "\u2028 and \u2029", "é ✓ 𝄞", "\xe2\x82", "trailing \xc3",
}

// TestFastJSON: the hand-written encoders write exactly what encoding/json
// writes, for records full of strings that need escaping.
func TestFastJSON(t *testing.T) {
	u, n := uint32(4294967295), int32(7)
	for i, s := range oddStrings {
		p := ProcessRecord{
			PID: int32(i), PPID: -1, StartTime: s, StartTicks: 1 << 60, Name: s, NameB64: s,
			Cmdline: []string{s, "", s}, CmdlineB64: oddStrings, Exe: s, ExeB64: s, ExeDeleted: i%2 == 0,
			ExeSHA256: s, ExeSize: -5, ExeDevice: s, ExeInode: 1 << 63, ExeError: s, Cwd: s, CwdB64: s, Root: s, RootB64: s,
			UID: &u, GID: &u, User: s, EUser: s, Group: s, EGroup: s, State: s, PGID: 3, SID: -4, TTY: 34816,
			KernelThread: i%3 == 0, Threads: 9, RSSBytes: 1 << 40, FDCount: &n, Cgroup: []string{s},
			Namespaces: Namespaces{1, 2, 3, 4, 5, 6, 7}, EnvNames: []string{s}, EnvNamesB64: []string{s}, Error: s,
		}
		empty := ProcessRecord{}
		f := OpenFilesRecord{PID: 1, StartTime: s, FDs: []OpenFile{{0, s, s}, {FD: 3, Target: "socket:[1]"}}, Error: s}
		c := ConnectionRecord{NetNS: 1, NetNSName: s, Family: s, Type: s, Protocol: 65535, LocalAddr: s, LocalPort: 1,
			RemoteAddr: s, RemotePort: 65535, Path: s, PathB64: s, PeerInode: 9, InterfaceIndex: -1, State: s, UID: &u,
			Inode: 1 << 40, TxQueue: 1, RxQueue: 2, PIDs: []int32{1, 2}, PID: 1}
		for _, v := range []any{&p, &empty, &f, &OpenFilesRecord{}, &OpenFilesRecord{FDs: []OpenFile{}}, &c, &ConnectionRecord{}, &ConnectionRecord{PIDs: []int32{}}} {
			fast, slow := appendJSON(nil, v), appendReflect(nil, v)
			if !bytes.Equal(fast, slow) {
				t.Errorf("string %q, %T:\nfast %s\nslow %s", s, v, fast, slow)
			}
		}
	}
}
