//go:build !linux

package agent

import "os/exec"

// RestrictWrites does nothing where there is no Landlock.
func RestrictWrites(runtimeDir string) (string, error) {
	return "none: not Linux, so writes are not blocked", nil
}

// dieWithParent does nothing where the kernel cannot tie a child's life to
// its parent's.
func dieWithParent(*exec.Cmd) {}
