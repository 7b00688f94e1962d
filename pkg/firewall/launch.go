package firewall

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"regexp"
	"time"

	"github.com/cordon-ir/cordon/pkg/pluginproc"
	"github.com/cordon-ir/cordon/pkg/policy"
	"github.com/hashicorp/go-plugin"
)

// BinaryPrefix is the file-name prefix of every plugin executable.
const BinaryPrefix = "cordon-plugin-"

// ErrPluginNotFound is returned by Launch when the plugin executable does not
// exist in the plugin directory.
var ErrPluginNotFound = errors.New("firewall plugin not found")

// ErrChecksumMismatch is returned by Launch when the plugin executable's
// SHA-256 differs from the pinned one.
var ErrChecksumMismatch = plugin.ErrChecksumsDoNotMatch

// LaunchConfig says which plugin to start and how.
type LaunchConfig struct {
	// Dir is the plugin directory; the executable is Dir/cordon-plugin-<Name>.
	Dir string
	// Name is the plugin's short name, such as "iptables".
	Name string
	// SHA256, when set, pins the executable's SHA-256 (hex, 64 digits);
	// go-plugin refuses to start a binary that does not match.
	SHA256 string
	// SocketDir is where go-plugin creates the plugin's Unix socket. Put it
	// on a tmpfs (such as /run/cordon) so running a plugin writes nothing to
	// the host's disks. Empty means os.TempDir().
	SocketDir string
	// StartTimeout bounds how long the plugin may take to start; 0 means 10 s.
	StartTimeout time.Duration
	// Stderr receives the plugin's log output; nil means os.Stderr.
	Stderr io.Writer
	// Logger, if set, takes the plugin's log output instead of Stderr,
	// each line a record with its fields (pluginproc.Spec.Logger).
	Logger *slog.Logger
}

var nameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,31}$`)

// Path returns the executable path the config names.
func (c LaunchConfig) Path() string { return filepath.Join(c.Dir, BinaryPrefix+c.Name) }

// Client is a running plugin process and the Firewall it serves. Its methods
// turn a dead or unanswering plugin into ErrPluginCrashed. Close it when
// done; it never leaves the process behind.
type Client struct {
	pc   *plugin.Client
	fw   Firewall
	path string
}

// Launch starts the plugin cfg names and connects to it. Errors:
// ErrPluginNotFound when the executable is missing, ErrChecksumMismatch when
// the pin does not match, and a *pluginproc.StartError when the process
// does not complete the go-plugin handshake in time.
func Launch(cfg LaunchConfig) (*Client, error) {
	if !nameRE.MatchString(cfg.Name) {
		return nil, fmt.Errorf("plugin name %q: want lowercase letters, digits, '-' or '_'", cfg.Name)
	}
	path := cfg.Path()
	pc, raw, err := pluginproc.Start(pluginproc.Spec{
		Path: path, Name: cfg.Name,
		Handshake: Handshake, PluginName: PluginName, Plugin: &GRPCPlugin{},
		SHA256: cfg.SHA256, SocketDir: cfg.SocketDir,
		StartTimeout: cfg.StartTimeout, Log: cfg.Stderr, Logger: cfg.Logger,
	})
	var nf *pluginproc.NotFoundError
	if errors.As(err, &nf) {
		return nil, fmt.Errorf("%w: %s", ErrPluginNotFound, nf)
	} else if err != nil {
		return nil, err
	}
	fw, ok := raw.(Firewall)
	if !ok {
		pc.Kill()
		return nil, fmt.Errorf("plugin %s does not serve the Firewall interface", path)
	}
	return &Client{pc: pc, fw: fw, path: path}, nil
}

// Exited reports whether the plugin process has ended.
func (c *Client) Exited() bool { return c.pc.Exited() }

// Close stops the plugin process, gracefully if it answers and by SIGKILL
// otherwise.
func (c *Client) Close() { c.pc.Kill() }

// crashed rewrites err as ErrPluginCrashed when the process has died, whatever
// the gRPC layer said.
func (c *Client) crashed(err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, ErrPluginCrashed) {
		return err
	}
	if c.pc.Exited() {
		return fmt.Errorf("%w: %s exited: %v", ErrPluginCrashed, c.path, err)
	}
	return err
}

// Info implements Firewall.
func (c *Client) Info(ctx context.Context) (Info, error) {
	i, err := c.fw.Info(ctx)
	return i, c.crashed(err)
}

// Isolate implements Firewall.
func (c *Client) Isolate(ctx context.Context, p policy.Policy, orderID string) (Applied, error) {
	a, err := c.fw.Isolate(ctx, p, orderID)
	return a, c.crashed(err)
}

// Release implements Firewall.
func (c *Client) Release(ctx context.Context, orderID string) (int, error) {
	n, err := c.fw.Release(ctx, orderID)
	return n, c.crashed(err)
}

// Status implements Firewall.
func (c *Client) Status(ctx context.Context) (Status, error) {
	s, err := c.fw.Status(ctx)
	return s, c.crashed(err)
}
