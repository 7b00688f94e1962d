//go:build unix

package cli

import (
	"os"
	"syscall"
)

// fileOwner returns the uid owning a file.
func fileOwner(st os.FileInfo) int {
	if s, ok := st.Sys().(*syscall.Stat_t); ok {
		return int(s.Uid)
	}
	return -1
}

// fileGroup returns the gid owning path, or -1.
func fileGroup(path string) int {
	st, err := os.Stat(path)
	if err != nil {
		return -1
	}
	if s, ok := st.Sys().(*syscall.Stat_t); ok {
		return int(s.Gid)
	}
	return -1
}
