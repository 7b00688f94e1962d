package pluginproc

import (
	"os/exec"
	"syscall"
)

// dieWithParent has the kernel kill the plugin when the host process dies
// (PR_SET_PDEATHSIG, prctl(2)), so a crashed agent or controller leaves no
// plugin behind.
func dieWithParent(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
