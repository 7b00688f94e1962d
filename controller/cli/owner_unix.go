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
