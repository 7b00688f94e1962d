//go:build !linux

package pluginproc

import "os/exec"

// dieWithParent has no portable equivalent outside Linux; the host kills
// its plugins on exit (go-plugin's CleanupClients).
func dieWithParent(*exec.Cmd) {}
