package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/cordon-ir/cordon/pkg/firewall"
	"github.com/cordon-ir/cordon/pkg/releasetoken"
)

// lockName is the file in the runtime directory that a running agent
// holds a lock on (flock(2)), so that a second agent, or a local release
// that the agent's drift repair would undo, refuses to start.
const lockName = "agent.lock"

// lockRuntime takes the agent's lock in dir; it fails when another process
// holds it. The lock goes with the process.
func lockRuntime(dir string) (*os.File, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("runtime directory: %w", err)
	}
	f, err := os.OpenFile(filepath.Join(dir, lockName), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("runtime directory lock: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("a cordon-agent is running with the runtime directory %s", dir)
		}
		return nil, fmt.Errorf("runtime directory lock: %w", err)
	}
	return f, nil
}

// newReleaseCmd is 'cordon-agent release --local --token FILE': the
// break-glass release from the host's console when the controller cannot
// be reached (releasetoken).
func newReleaseCmd(out, errw io.Writer) *cobra.Command {
	cfg := defaults()
	var configFile, tokenFile string
	var local bool
	cmd := &cobra.Command{
		Use:   "release --local --token FILE [--config /etc/cordon/agent.yaml]",
		Short: "Break-glass: remove Cordon's rules from this host with a controller-signed release token",
		Long: `Remove Cordon's rules from this host from its console, when the controller
cannot be reached. It needs a release token that the controller signed for
this host ('cordon release token host NAME', made while the controller was up):
the token must be signed by the controller key this agent pins
(--controller-fingerprint), name this host and its machine-id, and be
unexpired. Stop the agent service first (systemctl stop cordon-agent): its
drift repair would put the rules back. When the controller is reachable
again it isolates the host again unless an operator releases it there
('cordon release host NAME').`,
		Args:          cobra.NoArgs,
		SilenceUsage:  true,
		SilenceErrors: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if _, err := applyConfigFile(cmd.Flags(), false, configFile); err != nil {
				return err
			}
			if !local {
				return usageError{errors.New("--local is required: this releases the host without the controller")}
			}
			if tokenFile == "" {
				return usageError{errors.New("--token is required: the file 'cordon release token host NAME' wrote")}
			}
			return releaseLocal(cmd.Context(), cfg, tokenFile, out, errw)
		},
	}
	f := cmd.Flags()
	f.StringVar(&configFile, "config", "", "YAML configuration `file` of the agent (its controller_fingerprint, name, plugin)")
	f.BoolVar(&local, "local", false, "release here, without the controller (required)")
	f.StringVar(&tokenFile, "token", "", "release token `file` signed by the controller")
	f.StringVar(&cfg.ControllerFingerprint, "controller-fingerprint", "", "pinned controller host key `SHA256:…`")
	f.StringVar(&cfg.Name, "name", cfg.Name, "this host's name in Cordon")
	f.StringVar(&cfg.Plugin, "plugin", cfg.Plugin, "firewall plugin `name`, or auto")
	f.StringVar(&cfg.PluginDir, "plugin-dir", "", "plugin `directory`")
	f.StringVar(&cfg.PluginSHA256, "plugin-sha256", "", "pinned SHA-256 of the plugin executable (`hex`), as in the agent's configuration")
	f.StringVar(&cfg.RuntimeDir, "runtime-dir", cfg.RuntimeDir, "tmpfs `directory` for the plugin's socket")
	return cmd
}

// releaseLocal checks the token, takes the agent's lock, and releases
// through the plugin.
func releaseLocal(ctx context.Context, cfg Config, tokenFile string, out, errw io.Writer) error {
	if cfg.ControllerFingerprint == "" {
		return usageError{errors.New("--controller-fingerprint (or the configuration file) is required: the token must be signed by the pinned controller key")}
	}
	fh, err := os.Open(tokenFile)
	if err != nil {
		return fmt.Errorf("release token: %w", err)
	}
	b, err := io.ReadAll(io.LimitReader(fh, releasetoken.MaxFileSize+1))
	fh.Close()
	if err != nil {
		return fmt.Errorf("release token: %w", err)
	}
	mid, _ := os.ReadFile("/etc/machine-id")
	tok, err := releasetoken.Verify(b, cfg.ControllerFingerprint, cfg.Name, strings.TrimSpace(string(mid)), time.Now())
	if err != nil {
		return err
	}
	lock, err := lockRuntime(cfg.RuntimeDir)
	if err != nil {
		return fmt.Errorf("%w: stop it first (systemctl stop cordon-agent), or its drift repair puts the rules back", err)
	}
	defer lock.Close()
	dir := pluginDir(cfg)
	// With --plugin auto, every installed plugin that can be asked without
	// loading a kernel module: the host may have been isolated through
	// either.
	names, err := pluginsToAsk(cfg, dir)
	if err != nil {
		return errors.New(strings.Replace(err.Error(), "read the rules through", "release through", 1))
	}
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	removed := 0
	for _, name := range names {
		cfgSHA := ""
		if name == cfg.Plugin {
			cfgSHA = cfg.PluginSHA256
		}
		fw, err := firewall.Launch(firewall.LaunchConfig{Dir: dir, Name: name, SHA256: cfgSHA, SocketDir: cfg.RuntimeDir, Stderr: errw})
		if err != nil {
			return fmt.Errorf("start the %s plugin: %w", name, err)
		}
		n, err := fw.Release(ctx, "local-"+tok.ID)
		if err != nil {
			fw.Close()
			return fmt.Errorf("release with the %s plugin: %w", name, err)
		}
		st, err := fw.Status(ctx)
		fw.Close()
		if err != nil {
			return fmt.Errorf("read the rules back after release (%s plugin): %w", name, err)
		}
		if st.Digest != "" || st.Partial != "" {
			return fmt.Errorf("rules of Cordon's left after release (%s plugin): %s", name, st.Partial)
		}
		removed += n
	}
	name := strings.Join(names, " and ")
	n := removed
	_, err = fmt.Fprintf(out, "released %s with token %s (issued by %s: %s): %d of Cordon's rules and chains removed, none left (%s plugin).\n"+
		"When the controller is reachable again it isolates this host again unless an operator runs: cordon release host %s\n",
		tok.Host, tok.ID, tok.IssuedBy, tok.Reason, n, name, tok.Host)
	return err
}
