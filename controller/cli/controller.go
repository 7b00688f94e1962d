package cli

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/cordon-ir/cordon/controller/api"
	"github.com/cordon-ir/cordon/controller/evidencestore"
	"github.com/cordon-ir/cordon/controller/server"
	"github.com/cordon-ir/cordon/controller/store"
	"github.com/cordon-ir/cordon/pkg/cloud"
	"github.com/cordon-ir/cordon/pkg/logging"
	"github.com/cordon-ir/cordon/pkg/policy"
	"github.com/cordon-ir/cordon/pkg/sdnotify"
	"github.com/cordon-ir/cordon/pkg/sshkey"
)

// Files in a controller's data directory.
const (
	hostKeyFile     = "host_ed25519"
	operatorKeyFile = "operator_ed25519"
	dbFile          = "cordon.db"
	evidenceDir     = "evidence"
)

func newControllerCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "controller",
		Short: "Set up and run the controller daemon",
	}
	cmd.AddCommand(newControllerInitCmd(g), newControllerServeCmd(g), newControllerCheckConfigCmd(g))
	return cmd
}

type initOptions struct {
	dataDir string
	ttl     time.Duration
}

// InitResult is what 'cordon controller init -o json' prints.
type InitResult struct {
	DataDir     string    `json:"data_dir"`
	Fingerprint string    `json:"fingerprint"`
	OperatorKey string    `json:"operator_key"`
	EnrollToken string    `json:"enroll_token"`
	ExpiresAt   time.Time `json:"enroll_token_expires_at"`
}

func newControllerInitCmd(g *globals) *cobra.Command {
	o := &initOptions{}
	cmd := &cobra.Command{
		Use:   "init --data-dir DIR",
		Short: "Create the controller's host key, an admin operator key and a first enrollment token",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runControllerInit(cmd.Context(), g, o)
		},
	}
	cmd.Flags().StringVar(&o.dataDir, "data-dir", "/var/lib/cordon", "controller data `directory`")
	cmd.Flags().DurationVar(&o.ttl, "token-ttl", server.DefaultTokenTTL, "lifetime of the enrollment token")
	return cmd
}

func runControllerInit(ctx context.Context, g *globals, o *initOptions) error {
	if err := g.checkOutput(); err != nil {
		return err
	}
	dir, err := filepath.Abs(o.dataDir)
	if err != nil {
		return err
	}
	if _, err := os.Stat(filepath.Join(dir, hostKeyFile)); err == nil {
		return fmt.Errorf("%s is already initialized (it has %s); mint more enrollment tokens with 'cordon enroll create'", dir, hostKeyFile)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	// Run as root in a data directory of another user (the packaged
	// cordon's), what init makes is given to that user, who runs the
	// service and must read it.
	owner, chownTo := -1, -1
	if st, err := os.Stat(dir); err == nil && os.Geteuid() == 0 {
		owner = fileOwner(st)
		if owner > 0 {
			chownTo = owner
		}
	}
	defer func() {
		if chownTo > 0 {
			filepath.WalkDir(dir, func(p string, _ fs.DirEntry, err error) error {
				if err == nil {
					os.Lchown(p, chownTo, fileGroup(dir))
				}
				return nil
			})
		}
	}()
	hostKey, err := sshkey.Create(filepath.Join(dir, hostKeyFile), "cordon-controller")
	if err != nil {
		return fmt.Errorf("host key: %w", err)
	}
	opPath := filepath.Join(dir, operatorKeyFile)
	opKey, err := sshkey.Create(opPath, "cordon-admin")
	if err != nil {
		return fmt.Errorf("operator key: %w", err)
	}
	st, err := store.OpenSQLite(ctx, filepath.Join(dir, dbFile))
	if err != nil {
		return err
	}
	defer st.Close()
	if _, err := evidencestore.Open(filepath.Join(dir, evidenceDir)); err != nil {
		return err
	}
	res := InitResult{DataDir: dir, Fingerprint: sshkey.Fingerprint(hostKey.PublicKey()), OperatorKey: opPath}
	now := time.Now().UTC()
	err = st.Update(ctx, func(tx store.Tx) error {
		fp := sshkey.Fingerprint(opKey.PublicKey())
		if err := tx.AddOperator(store.Operator{Fingerprint: fp, Name: "admin", Role: api.RoleAdmin,
			PublicKey: sshkey.AuthorizedKey(opKey.PublicKey()), CreatedAt: now}); err != nil {
			return err
		}
		res.EnrollToken, res.ExpiresAt, err = server.MintToken(tx, "admin", o.ttl, now)
		if err != nil {
			return err
		}
		return tx.AddAudit(store.Audit{At: now, Actor: "admin", ActorKey: fp, Action: "init",
			Detail: "controller initialized; host key " + res.Fingerprint})
	})
	if err != nil {
		return err
	}
	if g.json() {
		return g.printJSON(res)
	}
	fmt.Fprintf(g.io.Out, `Controller initialized in %s
  host key fingerprint: %s
      (agents and operators pin it: --controller-fingerprint)
  admin operator key:   %s
  enrollment token:     %s
      (one-time, for the first agent; expires %s; more with 'cordon enroll create')
Start it:
  systemctl start cordon-controller       (installed from the package)
  cordon controller serve --data-dir %s --listen :7443   (by hand)
`, dir, res.Fingerprint, res.OperatorKey, res.EnrollToken, res.ExpiresAt.Format(time.RFC3339), dir)
	return nil
}

type serveOptions struct {
	dataDir   string
	listen    string
	advertise []string
	clouds    []string
	pluginDir string
	logFormat string
	logLevel  string
	// metricsListen is where to serve Prometheus metrics; "" for nowhere.
	metricsListen string
}

func newControllerServeCmd(g *globals) *cobra.Command {
	o := &serveOptions{}
	var configFile string
	cmd := &cobra.Command{
		Use:   "serve --data-dir DIR --listen ADDR:PORT",
		Short: "Run the controller daemon",
		Args: func(_ *cobra.Command, args []string) error {
			if len(args) > 0 {
				return &ExitError{Code: ExitConfig, Err: fmt.Errorf("serve takes no arguments, got %q", args)}
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, _ []string) error {
			cf, err := applyServeConfig(cmd.Flags(), configFile)
			if err != nil {
				return explainServe(err, nil, cmd.Flags())
			}
			return explainServe(runControllerServe(cmd.Context(), g, o), cf, cmd.Flags())
		},
	}
	cmd.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
		return &ExitError{Code: ExitConfig, Err: fmt.Errorf("%w\nRun '%s --help' for usage.", err, c.CommandPath())}
	})
	cmd.Flags().StringVar(&configFile, "config", "", "YAML configuration `file` (e.g. "+DefaultControllerConfig+"): these flags as keys in snake_case; flags override it")
	addServeFlags(cmd.Flags(), o)
	return cmd
}

func runControllerServe(ctx context.Context, g *globals, o *serveOptions) error {
	adv, err := o.check()
	if err != nil {
		return usageErr("%v", err)
	}
	log, err := logging.New(os.Stderr, o.logFormat, o.logLevel)
	if err != nil {
		return usageErr("%v", err)
	}
	// A data directory or a cloud plugin the controller cannot use is a
	// configuration it refuses (ExitConfig): restarting cannot help.
	hostKey, err := loadHostKey(o.dataDir)
	if err != nil {
		return usageErr("%v", err)
	}
	if err := writableDataDir(o.dataDir); err != nil {
		return usageErr("%v", err)
	}
	st, err := store.OpenSQLite(ctx, filepath.Join(o.dataDir, dbFile))
	if err != nil {
		return err
	}
	defer st.Close()
	ev, err := evidencestore.Open(filepath.Join(o.dataDir, evidenceDir))
	if err != nil {
		return err
	}
	clouds := map[string]cloud.Layer{}
	for _, p := range o.clouds {
		c, err := cloud.Supervise(cloud.LaunchConfig{Dir: o.pluginDir, Name: p, Logger: log.With("component", "cloud")})
		if errors.Is(err, cloud.ErrPluginNotFound) {
			return usageErr("--cloud %s: %v", p, err)
		}
		if err != nil {
			return fmt.Errorf("--cloud %s: %w", p, err)
		}
		defer c.Close()
		info, err := c.Info(ctx)
		if err != nil {
			return fmt.Errorf("--cloud %s: %w", p, err)
		}
		clouds[info.Provider] = c
		log.Info("cloud containment layer ready", "provider", info.Provider, "plugin", info.Name, "version", info.Version)
	}
	srv, err := server.New(server.Config{Store: st, Evidence: ev, HostKey: hostKey, Advertise: adv, Logger: log, Clouds: clouds})
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", o.listen)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", o.listen, err)
	}
	if o.metricsListen != "" {
		stop, err := serveMetrics(ctx, log, srv, o.metricsListen)
		if err != nil {
			ln.Close()
			return err
		}
		defer stop()
	}
	// Ready once listening; the watchdog is fed while the database answers.
	if _, err := sdnotify.Ready("listening on " + ln.Addr().String()); err != nil {
		log.Warn("cannot tell systemd the controller is ready", "err", err)
	}
	wctx, stopWatchdog := context.WithCancel(ctx)
	watchdogDone := make(chan struct{})
	go func() { defer close(watchdogDone); sdnotify.Watchdog(wctx, log, srv.Healthy) }()
	err = srv.Serve(ctx, ln)
	sdnotify.Stopping()
	stopWatchdog()
	<-watchdogDone
	return err
}

func parseEndpoint(s string) (policy.Endpoint, error) {
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		return policy.Endpoint{}, fmt.Errorf("want ip:port (an IP, not a name: nothing is resolved on an isolated host)")
	}
	return policy.Endpoint{Addr: ap.Addr().Unmap(), Port: ap.Port()}, nil
}
