//go:build !linux

package agent

// RestrictWrites does nothing where there is no Landlock.
func RestrictWrites(runtimeDir string) (string, error) {
	return "none: not Linux, so writes are not blocked", nil
}
