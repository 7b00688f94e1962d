package cloud

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/hashicorp/go-plugin"

	"github.com/cordon-ir/cordon/pkg/pluginproc"
	"github.com/cordon-ir/cordon/pkg/policy"
)

// BinaryPrefix is the file-name prefix of every plugin executable, cloud
// and firewall alike.
const BinaryPrefix = "cordon-plugin-"

// ErrPluginNotFound is returned by Launch when the plugin executable does not
// exist in the plugin directory.
var ErrPluginNotFound = errors.New("cloud plugin not found")

// ErrChecksumMismatch is returned by Launch when the plugin executable's
// SHA-256 differs from the pinned one.
var ErrChecksumMismatch = plugin.ErrChecksumsDoNotMatch

// ErrHandshake is returned by Launch when the executable ran but did not
// come up as a cloud plugin: it exited, timed out, or answered with another
// protocol version or plugin set. A firewall plugin does this, since its
// handshake cookie differs.
var ErrHandshake = errors.New("cloud plugin handshake failed")

// LaunchConfig says which plugin to start and how.
type LaunchConfig struct {
	// Dir is the plugin directory; the executable is Dir/cordon-plugin-<Name>.
	Dir string
	// Name is the plugin's short name, such as "aws".
	Name string
	// SHA256, when set, pins the executable's SHA-256 (hex, 64 digits,
	// optionally after "sha256:"); go-plugin refuses to start a binary that
	// does not match.
	SHA256 string
	// SocketDir is where go-plugin creates the plugin's Unix socket. Empty
	// means os.TempDir().
	SocketDir string
	// StartTimeout bounds how long the plugin may take to start; 0 means 10 s.
	StartTimeout time.Duration
	// Stderr receives the plugin's log output; nil means os.Stderr.
	Stderr io.Writer
	// Logger, if set, takes the plugin's log output instead of Stderr,
	// each line a record with its fields (pluginproc.Spec.Logger).
	Logger *slog.Logger
	// Env is extra environment for the plugin, "KEY=value" each, on top of
	// the controller's own (which the SDK's credential chain reads too):
	// AWS_PROFILE, say, or an endpoint override for tests. An entry
	// replaces a variable of the same name; SocketDir, when set, wins over
	// TMPDIR here. Values are never logged.
	Env []string
}

var nameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,31}$`)

// Path returns the executable path the config names.
func (c LaunchConfig) Path() string { return filepath.Join(c.Dir, BinaryPrefix+c.Name) }

// Client is a running plugin process and the Layer it serves. Its methods
// turn a dead or unanswering plugin into ErrPluginCrashed. Close it when
// done; it never leaves the process behind.
type Client struct {
	pc    *plugin.Client
	layer Layer
	path  string
}

var _ Layer = (*Client)(nil)

// Launch starts the plugin cfg names and connects to it. Errors:
// ErrPluginNotFound when the executable is missing, ErrChecksumMismatch when
// the pin does not match, ErrHandshake when the process does not come up
// as a cloud plugin in time (the error then ends with the last lines the
// process wrote to stderr).
func Launch(cfg LaunchConfig) (*Client, error) {
	if !nameRE.MatchString(cfg.Name) {
		return nil, fmt.Errorf("plugin name %q: want lowercase letters, digits, '-' or '_'", cfg.Name)
	}
	for _, kv := range cfg.Env {
		if k, _, ok := strings.Cut(kv, "="); !ok || k == "" {
			// Not the entry itself: it may hold a secret.
			return nil, fmt.Errorf("plugin environment: an entry is not KEY=value")
		}
	}
	path := cfg.Path()
	pc, raw, err := pluginproc.Start(pluginproc.Spec{
		Path: path, Name: cfg.Name,
		Handshake: Handshake, PluginName: PluginName, Plugin: &GRPCPlugin{},
		SHA256: cfg.SHA256, Env: cfg.Env, SocketDir: cfg.SocketDir,
		StartTimeout: cfg.StartTimeout, Log: cfg.Stderr, Logger: cfg.Logger,
	})
	var nf *pluginproc.NotFoundError
	var se *pluginproc.StartError
	switch {
	case errors.As(err, &nf):
		return nil, fmt.Errorf("%w: %s", ErrPluginNotFound, nf)
	case errors.As(err, &se):
		return nil, fmt.Errorf("%w: %v (a firewall plugin, or a cloud plugin of another protocol version, refuses the cloud handshake)", ErrHandshake, se)
	case err != nil:
		return nil, err
	}
	layer, ok := raw.(Layer)
	if !ok {
		pc.Kill()
		return nil, fmt.Errorf("%w: %s does not serve the cloud Layer interface", ErrHandshake, path)
	}
	return &Client{pc: pc, layer: layer, path: path}, nil
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

// Info implements Layer.
func (c *Client) Info(ctx context.Context) (Info, error) {
	i, err := c.layer.Info(ctx)
	return i, c.crashed(err)
}

// Lookup implements Layer.
func (c *Client) Lookup(ctx context.Context, inst Instance) (Instance, error) {
	i, err := c.layer.Lookup(ctx, inst)
	return i, c.crashed(err)
}

// Isolate implements Layer.
func (c *Client) Isolate(ctx context.Context, inst Instance, p policy.Policy, o Options, orderID string) (Applied, error) {
	a, err := c.layer.Isolate(ctx, inst, p, o, orderID)
	return a, c.crashed(err)
}

// Release implements Layer.
func (c *Client) Release(ctx context.Context, inst Instance, orderID string) (Applied, error) {
	a, err := c.layer.Release(ctx, inst, orderID)
	return a, c.crashed(err)
}

// Status implements Layer.
func (c *Client) Status(ctx context.Context, inst Instance) (Status, error) {
	s, err := c.layer.Status(ctx, inst)
	return s, c.crashed(err)
}
