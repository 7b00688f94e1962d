package packaging

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
)

// NewRoot makes a throw-away root at dir for dpkg --root: an empty dpkg
// database and, so that systemd-analyze verify --root finds the units
// Cordon's units name (sysinit.target, network-pre.target, …), a copy of
// this machine's systemd unit directory.
func NewRoot(dir string) error {
	for _, d := range []string{"var/lib/dpkg/info", "var/lib/dpkg/updates", "usr/lib/systemd/system", "etc"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return err
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "var/lib/dpkg/status"), nil, 0o644); err != nil {
		return err
	}
	for _, src := range []string{"/usr/lib/systemd/system", "/lib/systemd/system"} {
		if _, err := os.Stat(src); err == nil {
			out, err := exec.Command("cp", "-rn", src+"/.", filepath.Join(dir, "usr/lib/systemd/system")).CombinedOutput()
			if err != nil {
				return fmt.Errorf("copy %s: %w: %s", src, err, out)
			}
			return nil
		}
	}
	return errors.New("no systemd unit directory on this machine (install systemd)")
}

// Dpkg runs dpkg on the root at dir, with the packages' maintainer scripts
// run outside it (--force-script-chrootless, so the root needs no shell)
// and DPKG_ROOT set for them: they change only the root.
func Dpkg(dir string, args ...string) (string, error) {
	cmd := exec.Command("dpkg", append([]string{"--root=" + dir, "--force-script-chrootless", "--log=/dev/null"}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("dpkg %v: %w\n%s", args, err, out)
	}
	return string(out), nil
}
