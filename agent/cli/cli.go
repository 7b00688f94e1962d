// Package cli is the cordon-agent command line: flags, the optional YAML
// configuration file, and the daemon's start.
package cli

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/cordon-ir/cordon/agent"
	"github.com/cordon-ir/cordon/pkg/firewall"
	"github.com/cordon-ir/cordon/pkg/flagfile"
	"github.com/cordon-ir/cordon/pkg/logging"
	"github.com/cordon-ir/cordon/pkg/pluginproc"
	"github.com/cordon-ir/cordon/pkg/policy"
	"github.com/cordon-ir/cordon/pkg/sdnotify"
	"github.com/cordon-ir/cordon/pkg/sshkey"
	"github.com/cordon-ir/cordon/pkg/wire"
)

// Config is the agent's configuration: its flags, which a YAML file given
// with --config may also set (package flagfile: each flag's name in
// snake_case as key). Flags given on the command line override the file.
type Config struct {
	Controller            string
	ControllerFingerprint string
	EnrollToken           string
	Key                   string
	Name                  string
	Plugin                string
	PluginDir             string
	PluginSHA256          string
	RuntimeDir            string
	Allow                 []string
	Keepalive             time.Duration
	DriftInterval         time.Duration
	LogFormat             string
	LogLevel              string
}

// DefaultConfigFile is the agent's configuration file in packages, read by
// check-config and written by enroll when no --config is given.
const DefaultConfigFile = "/etc/cordon/agent.yaml"

// DefaultPluginDir is where packages install plugins.
const DefaultPluginDir = "/usr/lib/cordon/plugins"

func defaults() Config {
	name, _ := os.Hostname()
	name, _, _ = strings.Cut(name, ".")
	rt := os.Getenv("RUNTIME_DIRECTORY") // set by systemd's RuntimeDirectory=
	if rt == "" {
		rt = "/run/cordon"
	}
	return Config{
		Key:           "/var/lib/cordon-agent/agent_ed25519",
		Name:          name,
		Plugin:        firewall.Auto,
		RuntimeDir:    rt,
		Keepalive:     10 * time.Second,
		DriftInterval: agent.DefaultDriftInterval,
		LogFormat:     logging.FormatAuto,
		LogLevel:      "info",
	}
}

// Exit statuses of cordon-agent, as cordon's: 1 for an error, 2 for bad
// flags or arguments of a subcommand; the daemon exits ExitConfig for bad
// flags or configuration.
const (
	exitFailure = 1
	exitUsage   = 2
	// ExitConfig is the daemon's exit status for flags or a configuration
	// it refuses: EX_CONFIG of sysexits.h, not 2, which is also the Go
	// runtime's status for a panic, a fatal error and SIGABRT (systemd's
	// watchdog signal). The unit does not restart on it
	// (RestartPreventExitStatus=78): restarting cannot help.
	ExitConfig = 78
)

// usageError is a problem with flags or configuration.
type usageError struct{ error }

// Run runs cordon-agent with args (without the program name) and returns
// the exit status.
func Run(ctx context.Context, args []string, out, errw io.Writer) int {
	cmd := NewCommand(out, errw)
	cmd.SetArgs(args)
	cmd.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	ran, err := cmd.ExecuteContextC(ctx)
	if err == nil {
		return 0
	}
	fmt.Fprintln(errw, "cordon-agent: "+err.Error())
	var ue usageError
	switch {
	case ran == cmd && (errors.As(err, &ue) || strings.HasPrefix(err.Error(), "unknown command")):
		return ExitConfig // the daemon
	case errors.As(err, &ue) || strings.HasPrefix(err.Error(), "unknown command"):
		return exitUsage
	}
	return exitFailure
}

// NewCommand returns the cordon-agent command.
func NewCommand(out, errw io.Writer) *cobra.Command {
	cfg := defaults()
	var configFile string
	cmd := &cobra.Command{
		Use:   "cordon-agent --controller ADDR:PORT --controller-fingerprint SHA256:… [--enroll-token TOKEN] --key FILE --name NAME",
		Short: "Cordon's agent: keeps a connection to the controller and carries out isolate and release orders",
		Long: `cordon-agent runs on each card-data host as a systemd service. It dials the
controller over SSH (no listening port on the host), pins the controller's host
key, and carries out the controller's orders: capture the host's volatile
state as signed evidence, then isolate the host through a firewall plugin; or
release it. It writes nothing to disk while it handles an order.

Every flag can also be set in a YAML file given with --config, with the
flag's name in snake_case as key (controller_fingerprint: SHA256:…); flags on
the command line override the file.`,
		Args:          cobra.NoArgs,
		SilenceUsage:  true,
		SilenceErrors: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cf, err := applyConfigFile(cmd.Flags(), true, configFile)
			if err != nil {
				return err
			}
			return explain(run(cmd.Context(), cfg, errw), cf, cmd.Flags())
		},
	}
	cmd.SetOut(out)
	cmd.SetErr(errw)
	cmd.Flags().StringVar(&configFile, "config", "", "YAML configuration `file` (e.g. "+DefaultConfigFile+"); flags override it")
	addFlags(cmd.Flags(), &cfg)
	var collectorKey string
	collectorCmd := &cobra.Command{
		Use:    "collector --key FILE",
		Short:  "Internal: the snapshot collector process the agent starts",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			signer, err := sshkey.Load(collectorKey)
			if err != nil {
				return err
			}
			return agent.RunCollector(os.Stdin, os.Stdout, signer)
		},
	}
	collectorCmd.Flags().StringVar(&collectorKey, "key", "", "agent key file")
	cmd.AddCommand(collectorCmd, newReleaseCmd(out, errw), newCheckConfigCmd(out, errw), newEnrollCmd(out, errw), newStatusCmd(out, errw))
	cmd.AddCommand(&cobra.Command{
		Use:   "version",
		Short: "Print the version",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, err := fmt.Fprintln(out, "cordon-agent", agent.Version)
			return err
		},
	})
	return cmd
}

// addFlags defines the agent daemon's flags on f, bound to cfg: the flags
// of 'cordon-agent' and the keys of its configuration file.
func addFlags(f *pflag.FlagSet, cfg *Config) {
	f.StringVar(&cfg.Controller, "controller", "", "controller address `host:port`")
	f.StringVar(&cfg.ControllerFingerprint, "controller-fingerprint", "", "pinned controller host key `SHA256:…`")
	f.StringVar(&cfg.EnrollToken, "enroll-token", "", "one-time enrollment `token` for the first connection")
	f.StringVar(&cfg.Key, "key", cfg.Key, "agent private key `file`; created (ed25519) if missing")
	f.StringVar(&cfg.Name, "name", cfg.Name, "this host's name in Cordon")
	f.StringVar(&cfg.Plugin, "plugin", cfg.Plugin, "firewall plugin `name` (runs cordon-plugin-NAME); auto chooses nftables or iptables from what the host's firewall is")
	f.StringVar(&cfg.PluginDir, "plugin-dir", "", "plugin `directory` (default: "+DefaultPluginDir+", or the agent's own directory if the plugin is there)")
	f.StringVar(&cfg.PluginSHA256, "plugin-sha256", "", "pin the plugin executable's SHA-256 (`hex`)")
	f.StringVar(&cfg.RuntimeDir, "runtime-dir", cfg.RuntimeDir, "tmpfs `directory` for the plugin's socket (never the disk)")
	f.StringArrayVar(&cfg.Allow, "allow", nil, "`CIDR` kept reachable during every isolation (repeatable)")
	f.DurationVar(&cfg.Keepalive, "keepalive", cfg.Keepalive, "how often to check the controller answers; one unanswered interval drops and redials the connection")
	f.DurationVar(&cfg.DriftInterval, "drift-interval", cfg.DriftInterval, "while isolated, how often to read Cordon's rules back and put them back if something removed them; 0 turns drift repair off")
	f.StringVar(&cfg.LogFormat, "log-format", cfg.LogFormat, "log format: text, json, journal or auto (journal when stderr is the systemd journal, text otherwise)")
	f.StringVar(&cfg.LogLevel, "log-level", cfg.LogLevel, "log level: debug, info, warn or error")
}

// agentFlags returns a flag set with the agent daemon's flags bound to a
// Config of defaults: the schema of its configuration file.
func agentFlags() (*pflag.FlagSet, *Config) {
	cfg := defaults()
	fs := pflag.NewFlagSet("cordon-agent", pflag.ContinueOnError)
	addFlags(fs, &cfg)
	return fs, &cfg
}

// applyConfigFile, when path is set, sets the flags of target from the
// agent's configuration file at path, except those set on the command
// line. Every key in the file must be one of the agent daemon's flags:
// those of target when it is the daemon's flag set (whole is true), else
// (release takes only some) of a throwaway agentFlags.
// It returns the file read (nil when path is ""), for explain.
func applyConfigFile(target *pflag.FlagSet, whole bool, path string) (*flagfile.File, error) {
	if path == "" {
		return nil, nil
	}
	cf, err := flagfile.Read(path)
	if err != nil {
		return nil, usageError{fmt.Errorf("configuration file: %w", err)}
	}
	schema := target
	if !whole {
		schema, _ = agentFlags()
	}
	if err := cf.Apply(target, schema, "config", "help"); err != nil {
		return nil, usageError{err}
	}
	return cf, nil
}

// explain words a refused setting that came from the configuration file
// cf as the file's line and key (flagfile.File.Explain).
func explain(err error, cf *flagfile.File, fs *pflag.FlagSet) error {
	var ue usageError
	if errors.As(err, &ue) {
		return usageError{cf.Explain(ue.error, fs)}
	}
	return err
}

// pluginDir picks the plugin directory: the configured one, else the
// agent's own directory if the plugin is there, else PREFIX/lib/cordon/plugins
// beside the agent's PREFIX/bin if it is there (an install under /usr/local
// or /opt, or a package unpacked into a root), else DefaultPluginDir.
func pluginDir(cfg Config) string {
	if cfg.PluginDir != "" {
		return cfg.PluginDir
	}
	if exe, err := os.Executable(); err == nil {
		names := []string{cfg.Plugin}
		if cfg.Plugin == firewall.Auto {
			names = []string{"nftables", "iptables"}
		}
		bin := filepath.Dir(exe)
		for _, dir := range []string{bin, filepath.Join(bin, "..", "lib", "cordon", "plugins")} {
			for _, n := range names {
				if _, err := os.Stat(filepath.Join(dir, firewall.BinaryPrefix+n)); err == nil {
					return filepath.Clean(dir)
				}
			}
		}
	}
	return DefaultPluginDir
}

// checked is a Config whose values passed check, parsed.
type checked struct {
	Config
	allow         []netip.Prefix
	driftInterval time.Duration // -1: off
}

// check checks every setting of cfg without touching the host: what run
// does before it makes the key or starts anything, and check-config.
func (cfg Config) check() (checked, error) {
	c := checked{Config: cfg}
	if _, err := logging.New(io.Discard, cfg.LogFormat, cfg.LogLevel); err != nil {
		flag := "--log-format"
		if strings.HasPrefix(err.Error(), "log level") {
			flag = "--log-level"
		}
		return c, fmt.Errorf("%s: %w", flag, err)
	}
	if cfg.DriftInterval != 0 && (cfg.DriftInterval < 50*time.Millisecond || cfg.DriftInterval > time.Minute) {
		return c, fmt.Errorf("--drift-interval %v: want 50ms to 1m, or 0 to turn drift repair off", cfg.DriftInterval)
	}
	c.driftInterval = cfg.DriftInterval
	if c.driftInterval == 0 {
		c.driftInterval = -1 // off
	}
	if cfg.Keepalive < 100*time.Millisecond || cfg.Keepalive > 5*time.Minute {
		return c, fmt.Errorf("--keepalive %v: want 100ms to 5m", cfg.Keepalive)
	}
	if cfg.Controller == "" {
		return c, errors.New("--controller is required (host:port of the controller)")
	}
	if _, port, err := net.SplitHostPort(cfg.Controller); err != nil || port == "" {
		return c, fmt.Errorf("--controller %q: want host:port", cfg.Controller)
	} else if n, err := strconv.ParseUint(port, 10, 16); err != nil || n == 0 {
		return c, fmt.Errorf("--controller %q: port %q is not a port number", cfg.Controller, port)
	}
	if !sshkey.ValidFingerprint(cfg.ControllerFingerprint) {
		return c, fmt.Errorf("--controller-fingerprint %q: want the SHA256:… that 'cordon controller init' printed", cfg.ControllerFingerprint)
	}
	if !wire.ValidHostName(cfg.Name) {
		return c, fmt.Errorf("--name %q: use 1 to 63 letters, digits, '.', '_' or '-'", cfg.Name)
	}
	if cfg.Key == "" {
		return c, errors.New("--key is required (the agent's private key file)")
	}
	if _, err := pluginproc.Pin(cfg.PluginSHA256); err != nil {
		return c, fmt.Errorf("--plugin-sha256: %w (sha256sum of the plugin)", err)
	}
	if cfg.Plugin == firewall.Auto && cfg.PluginSHA256 != "" {
		return c, errors.New("--plugin-sha256 pins one plugin's executable: name it with --plugin (nftables or iptables) instead of auto")
	}
	for _, s := range cfg.Allow {
		p, err := policy.ParsePrefix(s)
		if err != nil {
			return c, fmt.Errorf("--allow: %w", err)
		}
		c.allow = append(c.allow, p)
	}
	return c, nil
}

func run(ctx context.Context, cfg Config, errw io.Writer) error {
	// Check everything before the key is made, so a bad configuration
	// leaves nothing behind.
	c, err := cfg.check()
	if err != nil {
		return usageError{err}
	}
	log, err := logging.New(errw, cfg.LogFormat, cfg.LogLevel)
	if err != nil {
		return usageError{err}
	}
	driftInterval, allow := c.driftInterval, c.allow
	// A configured plugin that is missing or does not match its pin does
	// not stop the agent (check-config refuses it): the agent connects
	// and reports the plugin unusable, so that the controller shows it
	// ('cordon hosts') and orders fail plainly, and snapshots still work.
	dir := pluginDir(cfg)
	pluginProblem := checkConfiguredPlugin(cfg, dir)
	lock, err := lockRuntime(cfg.RuntimeDir)
	var pe *fs.PathError
	if errors.As(err, &pe) {
		// Cannot be made or opened: a path the unit does not let the
		// agent write, say. (Another agent holding it is not this.)
		return usageError{fmt.Errorf("--runtime-dir %s: %w", cfg.RuntimeDir, err)}
	}
	if err != nil {
		return err
	}
	defer lock.Close()
	plugin, reason, err := choosePlugin(cfg, dir, log)
	if err != nil {
		// --plugin auto and no plugin to use in the plugin directory.
		return usageError{fmt.Errorf("--plugin-dir %s: %w", dir, err)}
	}
	log.Info("firewall plugin chosen", "plugin", plugin, "reason", reason, "dir", dir)
	// The key is made here, at start, never while handling an order.
	signer, created, err := sshkey.LoadOrCreate(cfg.Key, "cordon-agent@"+cfg.Name)
	if err != nil {
		return usageError{fmt.Errorf("--key %s: %w", cfg.Key, err)}
	}
	if created {
		log.Info("created agent key", "path", cfg.Key, "key", sshkey.Fingerprint(signer.PublicKey()))
	}
	// The snapshot collector keeps the read access the sandbox would take
	// away (other processes' /proc/PID/fd, exe, ns); it has no network and
	// writes nothing. Then, from here on, Landlock holds the agent, its
	// plugin and every firewall command to writing in the runtime
	// directory only.
	collector, err := agent.StartCollector(cfg.Key)
	if err != nil {
		return err
	}
	defer collector.Close()
	sandbox, err := agent.RestrictWrites(cfg.RuntimeDir)
	if err != nil {
		return err
	}
	log.Info("file system writes restricted", "sandbox", sandbox)
	a, err := agent.New(agent.Config{
		Controller:  cfg.Controller,
		Fingerprint: cfg.ControllerFingerprint,
		EnrollToken: cfg.EnrollToken,
		Signer:      signer,
		Name:        cfg.Name,
		Plugin: firewall.LaunchConfig{
			Dir:       dir,
			Name:      plugin,
			SHA256:    cfg.PluginSHA256,
			SocketDir: cfg.RuntimeDir,
			Stderr:    errw,
		},
		PluginReason:      reason,
		Allow:             allow,
		Logger:            log,
		KeepaliveInterval: cfg.Keepalive,
		DriftInterval:     driftInterval,
		Sandbox:           sandbox,
		Collector:         collector,
	})
	if err != nil {
		return err
	}
	// Ready once configured, keyed, sandboxed and with its plugin chosen:
	// not once connected, since the unit starts before the network
	// (Before=network-pre.target) and the agent dials until it is up.
	status := "plugin " + plugin + ", controller " + cfg.Controller
	if pluginProblem != nil {
		status = "PLUGIN UNUSABLE (" + pluginProblem.Error() + "), controller " + cfg.Controller
		log.Error("firewall plugin unusable: isolate and release orders will fail until it is fixed", "err", pluginProblem)
	}
	if _, err := sdnotify.Ready(status); err != nil {
		log.Warn("cannot tell systemd the agent is ready", "err", err)
	}
	wctx, stopWatchdog := context.WithCancel(ctx)
	watchdogDone := make(chan struct{})
	go func() { defer close(watchdogDone); sdnotify.Watchdog(wctx, log, a.Healthy) }()
	err = a.Run(ctx)
	sdnotify.Stopping()
	stopWatchdog()
	<-watchdogDone
	return err
}

// checkConfiguredPlugin checks a plugin named by --plugin (not auto): its
// executable is in dir and, when pinned, has the pinned SHA-256.
func checkConfiguredPlugin(cfg Config, dir string) error {
	if cfg.Plugin == firewall.Auto {
		return nil
	}
	p := filepath.Join(dir, firewall.BinaryPrefix+cfg.Plugin)
	if err := pluginproc.Check(p); err != nil {
		return fmt.Errorf("--plugin %s: %w", cfg.Plugin, err)
	}
	if cfg.PluginSHA256 == "" {
		return nil
	}
	f, err := os.Open(p)
	if err != nil {
		return fmt.Errorf("--plugin %s: %w", cfg.Plugin, err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return fmt.Errorf("--plugin %s: %w", cfg.Plugin, err)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != strings.ToLower(strings.TrimPrefix(cfg.PluginSHA256, "sha256:")) {
		return fmt.Errorf("--plugin-sha256 %s: %s has SHA-256 %s (a plugin updated or replaced since it was pinned?)", cfg.PluginSHA256, p, got)
	}
	return nil
}

// choosePlugin returns the plugin to run and why: the one configured, or
// for firewall.Auto the one firewall.Choose picks from what the host's
// firewall is, among those installed in dir; but when the other plugin's
// rules are in place (the host was isolated through it before this start)
// and the chosen one's are not, that other one, which can read and release
// them. A plugin is only asked when asking it loads no kernel module
// (safeToAsk).
func choosePlugin(cfg Config, dir string, log *slog.Logger) (plugin, reason string, err error) {
	if cfg.Plugin != firewall.Auto {
		return cfg.Plugin, "configured (--plugin " + cfg.Plugin + ")", nil
	}
	host := firewall.ProbeHost()
	name, reason, err := firewall.Choose(host, installedIn(dir))
	if err != nil {
		return "", "", err
	}
	other := map[string]string{"nftables": "iptables", "iptables": "nftables"}[name]
	if !installedIn(dir)(other) || !safeToAsk(host, other) || (safeToAsk(host, name) && hasRules(cfg, dir, name, log)) {
		return name, reason, nil
	}
	if hasRules(cfg, dir, other, log) {
		return other, reason + "; but Cordon's rules in place are " + other + "'s (the host was isolated through it before): keeping " + other, nil
	}
	return name, reason, nil
}

// installedIn reports whether a plugin's executable is in dir.
func installedIn(dir string) func(string) bool {
	return func(n string) bool {
		st, err := os.Stat(filepath.Join(dir, firewall.BinaryPrefix+n))
		return err == nil && !st.IsDir() && st.Mode()&0o111 != 0
	}
}

// safeToAsk reports whether a plugin can read the rules without making the
// kernel load a module the host does not use: nftables when nf_tables is
// there; iptables when its variant's tables are (iptables-nft with
// nf_tables, iptables-legacy with x_tables tables in use).
func safeToAsk(h firewall.HostFirewall, name string) bool {
	switch name {
	case "nftables":
		return h.NFTables
	case "iptables":
		return (h.Iptables == "nf_tables" && h.NFTables) || (h.Iptables == "legacy" && len(h.LegacyTables) > 0)
	}
	return false
}

// hasRules starts a plugin and asks whether any rule of Cordon's is in
// place through it.
func hasRules(cfg Config, dir, name string, log *slog.Logger) bool {
	fw, err := firewall.Launch(firewall.LaunchConfig{Dir: dir, Name: name, SocketDir: cfg.RuntimeDir, Logger: log.With("component", "plugin")})
	if err != nil {
		return false
	}
	defer fw.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	st, err := fw.Status(ctx)
	return err == nil && (st.Digest != "" || st.Partial != "")
}
