package agent

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"

	"github.com/landlock-lsm/go-landlock/landlock"
	llsys "github.com/landlock-lsm/go-landlock/landlock/syscall"
)

// XtablesLock is the lock file iptables-legacy takes (iptables(8), --wait).
const XtablesLock = "/run/xtables.lock"

// RestrictWrites confines the agent process, and every process it starts
// from then on (its plugin and the iptables or nft commands the plugin
// runs), so that it cannot write to the host's file systems: Landlock
// (landlock(7)) allows reading and executing everywhere, writing only under
// runtimeDir (a tmpfs, where the plugin's socket lives), to the xtables
// lock and to /dev/null. It cannot be undone for the life of the process.
//
// Call it once the agent key exists. It returns a sentence for the evidence
// manifest saying what is enforced; on a kernel without Landlock it enforces
// nothing and says so, and err is nil. An error means Landlock is there but
// the restriction could not be applied.
func RestrictWrites(runtimeDir string) (string, error) {
	abi, err := llsys.LandlockGetABIVersion()
	if err != nil || abi < 1 {
		return "none: the kernel does not offer Landlock, so writes are not blocked", nil
	}
	// iptables-legacy creates the lock file when it is missing; make it
	// now, so that it can be opened under the rules below.
	if f, err := os.OpenFile(XtablesLock, os.O_CREATE|os.O_RDONLY, 0o600); err == nil {
		f.Close()
	}
	writable := []string{runtimeDir, XtablesLock, "/dev/null"}
	err = landlock.V5.BestEffort().RestrictPaths(
		landlock.RODirs("/"),
		landlock.RWDirs(runtimeDir),
		landlock.RWFiles(XtablesLock, "/dev/null").IgnoreIfMissing(),
	)
	if err != nil {
		return "", fmt.Errorf("landlock: %w", err)
	}
	// BestEffort enforces what both the kernel and landlock.V5 know.
	enforced := min(abi, 5)
	return fmt.Sprintf("landlock ABI %d (kernel %d): writes to files allowed only to %s; file metadata (chmod, chown, utimes, xattrs) is not covered by Landlock",
		enforced, abi, strings.Join(writable, ", ")), nil
}

// dieWithParent has the kernel kill cmd when the agent dies
// (PR_SET_PDEATHSIG, prctl(2)).
func dieWithParent(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
