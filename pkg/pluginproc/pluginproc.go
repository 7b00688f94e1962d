// Package pluginproc prepares the process of a Cordon plugin (a go-plugin
// executable: the agent's firewall plugins, the controller's cloud
// plugins): it checks the executable, parses a pinned SHA-256, builds the
// command and starts it (Start), so that every host starts its plugins the
// same way.
package pluginproc

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"strings"

	"github.com/hashicorp/go-plugin"
)

// NotFoundError says that a plugin's executable is missing or is not an
// executable file.
type NotFoundError struct {
	Path string
	Why  string // "does not exist", "is not an executable file"
}

func (e *NotFoundError) Error() string { return e.Path + " " + e.Why }

// Check returns nil when path is an executable file, a *NotFoundError when
// it is missing or not executable, and stat's error otherwise.
func Check(path string) error {
	st, err := os.Stat(path)
	switch {
	case os.IsNotExist(err):
		return &NotFoundError{path, "does not exist"}
	case err != nil:
		return err
	case st.IsDir() || st.Mode()&0o111 == 0:
		return &NotFoundError{path, "is not an executable file"}
	}
	return nil
}

// Pin parses a pinned SHA-256 of the executable, 64 hex digits with or
// without a "sha256:" prefix, into go-plugin's check of the binary it
// starts; nil for "".
func Pin(sha string) (*plugin.SecureConfig, error) {
	if sha == "" {
		return nil, nil
	}
	sum, err := hex.DecodeString(strings.TrimPrefix(sha, "sha256:"))
	if err != nil || len(sum) != sha256.Size {
		return nil, fmt.Errorf("plugin checksum %q: want 64 hex digits", sha)
	}
	return &plugin.SecureConfig{Checksum: sum, Hash: sha256.New()}, nil
}

// Command returns the plugin's command, killed by the kernel when the host
// process dies (it must never outlive it: DESIGN.md §5), with the host's
// environment and the extra "KEY=value" entries of env over it. With
// socketDir, the plugin makes its socket there: go-plugin's default runner
// does not pass the socket directory on (only a custom RunnerFunc does),
// and the plugin makes its socket with os.CreateTemp in $TMPDIR, so TMPDIR
// is set to it too; the socket configuration is returned for the client.
// The command's Env is always set: the client should skip the host's.
func Command(path string, env []string, socketDir string) (*exec.Cmd, *plugin.UnixSocketConfig) {
	cmd := exec.Command(path)
	dieWithParent(cmd)
	all := os.Environ()
	for _, kv := range env {
		all = SetEnv(all, kv)
	}
	var sock *plugin.UnixSocketConfig
	if socketDir != "" {
		sock = &plugin.UnixSocketConfig{TempDir: socketDir}
		all = SetEnv(all, "TMPDIR="+socketDir)
	}
	cmd.Env = all
	return cmd, sock
}

// SetEnv returns env with kv ("KEY=value") replacing any variable KEY.
func SetEnv(env []string, kv string) []string {
	key, _, _ := strings.Cut(kv, "=")
	out := env[:0:0]
	for _, e := range env {
		if !strings.HasPrefix(e, key+"=") {
			out = append(out, e)
		}
	}
	return append(out, kv)
}
