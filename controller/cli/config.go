package cli

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"golang.org/x/crypto/ssh"
	"golang.org/x/sys/unix"

	"github.com/cordon-ir/cordon/pkg/cloud"
	"github.com/cordon-ir/cordon/pkg/flagfile"
	"github.com/cordon-ir/cordon/pkg/logging"
	"github.com/cordon-ir/cordon/pkg/pluginproc"
	"github.com/cordon-ir/cordon/pkg/policy"
	"github.com/cordon-ir/cordon/pkg/sshkey"
)

// packagedDataDir is the controller's StateDirectory= in the packaged unit.
const packagedDataDir = "/var/lib/cordon"

// DefaultControllerConfig is the controller's configuration file in
// packages, read by 'cordon controller check-config' when no --config is
// given.
const DefaultControllerConfig = "/etc/cordon/controller.yaml"

// addServeFlags defines the flags of 'cordon controller serve' on f, bound
// to o: the keys of the controller's configuration file.
func addServeFlags(f *pflag.FlagSet, o *serveOptions) {
	f.StringVar(&o.dataDir, "data-dir", "/var/lib/cordon", "controller data `directory` (made by 'cordon controller init')")
	f.StringVar(&o.listen, "listen", ":7443", "SSH listen address `host:port`")
	f.StringArrayVar(&o.advertise, "advertise", nil, "extra controller endpoint `ip:port` that isolated agents must keep reaching (repeatable)")
	f.StringArrayVar(&o.clouds, "cloud", nil, "cloud `provider` whose containment layer to add for hosts that run there: aws, azure or gcp (repeatable; runs cordon-plugin-PROVIDER with the controller's own credentials from the SDK's standard chain)")
	f.StringVar(&o.pluginDir, "plugin-dir", "/usr/lib/cordon/plugins", "`directory` of the cloud plugins")
	f.StringVar(&o.logFormat, "log-format", logging.FormatAuto, "log format: text, json, journal or auto (journal when stderr is the systemd journal, text otherwise)")
	f.StringVar(&o.logLevel, "log-level", "info", "log level: debug, info, warn or error")
	f.StringVar(&o.metricsListen, "metrics-listen", "", "serve Prometheus metrics over HTTP at `host:port`/metrics, such as 127.0.0.1:9469 (no authentication: bind it to localhost or a management network); empty: no metrics")
}

// serveFlags returns a flag set with serve's flags bound to fresh options
// with their defaults: the schema of the controller's configuration file.
func serveFlags() (*pflag.FlagSet, *serveOptions) {
	o := &serveOptions{}
	fs := pflag.NewFlagSet("serve", pflag.ContinueOnError)
	addServeFlags(fs, o)
	return fs, o
}

// applyServeConfig, when path is set, sets target's flags from the
// controller's configuration file at path, except those set on the
// command line. Keys are serve's flags only: target also holds the
// operator flags every cordon command inherits, which have no place there.
// It returns the file read (nil when path is ""), for explainServe.
func applyServeConfig(target *pflag.FlagSet, path string) (*flagfile.File, error) {
	if path == "" {
		return nil, nil
	}
	cf, err := flagfile.Read(path)
	if err != nil {
		return nil, usageErr("configuration file: %v", err)
	}
	schema, _ := serveFlags()
	if err := cf.Apply(target, schema); err != nil {
		return nil, usageErr("%v", err)
	}
	return cf, nil
}

// explainServe words a refused setting that came from the configuration
// file cf as the file's line and key (flagfile.File.Explain), and makes
// it exit ExitConfig.
func explainServe(err error, cf *flagfile.File, fs *pflag.FlagSet) error {
	var ee *ExitError
	if errors.As(err, &ee) && ee.Code == ExitUsage {
		ee.Err = cf.Explain(ee.Err, fs)
		ee.Code = ExitConfig
	}
	return err
}

// check checks the options without touching anything, and returns the
// advertised endpoints parsed.
func (o *serveOptions) check() ([]policy.Endpoint, error) {
	if _, err := logging.New(io.Discard, o.logFormat, o.logLevel); err != nil {
		flag := "--log-format"
		if strings.HasPrefix(err.Error(), "log level") {
			flag = "--log-level"
		}
		return nil, fmt.Errorf("%s: %w", flag, err)
	}
	if err := checkListen("--listen", o.listen, ":7443"); err != nil {
		return nil, errors.Unwrap(err)
	}
	if err := checkMetricsListen(o.metricsListen); err != nil {
		return nil, errors.Unwrap(err)
	}
	if o.dataDir == "" {
		return nil, errors.New("--data-dir is required")
	}
	for _, p := range o.clouds {
		if p != "aws" && p != "azure" && p != "gcp" {
			return nil, fmt.Errorf("--cloud %q: want aws, azure or gcp", p)
		}
	}
	var adv []policy.Endpoint
	for _, a := range o.advertise {
		ep, err := parseEndpoint(a)
		if err != nil {
			return nil, fmt.Errorf("--advertise %q: %v", a, err)
		}
		adv = append(adv, ep)
	}
	return adv, nil
}

// ControllerConfigCheck is what 'cordon controller check-config -o json'
// prints.
type ControllerConfigCheck struct {
	File string `json:"file"`
	OK   bool   `json:"ok"`
	// Error is why the controller would not start with this file.
	Error string `json:"error,omitempty"`
	// Settings are the values serve would run with, by key.
	Settings map[string]any `json:"settings,omitempty"`
	// HostKey is the controller's host key fingerprint (agents and
	// operators pin it).
	HostKey string   `json:"host_key,omitempty"`
	Notes   []string `json:"notes,omitempty"`
}

func newControllerCheckConfigCmd(g *globals) *cobra.Command {
	var file string
	cmd := &cobra.Command{
		Use:   "check-config [--config FILE] [-o json]",
		Short: "Check the controller's configuration file without starting it",
		Long: `Check a configuration file of 'cordon controller serve' as serve would read it:
every key known, every value valid, the data directory initialized (host key
readable, database there) and each cloud plugin installed. It changes
nothing. Exit status 0 when serve would start, 2 when not.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := g.checkOutput(); err != nil {
				return err
			}
			res := checkControllerConfig(file)
			if g.json() {
				if err := g.printJSON(res); err != nil {
					return err
				}
			} else if res.OK {
				fmt.Fprintf(g.io.Out, "%s: ok\n", res.File)
				fs, _ := serveFlags()
				for _, k := range flagfile.Keys(fs) {
					v := res.Settings[k]
					if l, ok := v.([]string); ok {
						v = strings.Join(l, ", ")
					}
					fmt.Fprintf(g.io.Out, "  %-16s %v\n", k, v)
				}
				fmt.Fprintf(g.io.Out, "host key: %s\n", res.HostKey)
				for _, n := range res.Notes {
					fmt.Fprintf(g.io.Out, "note: %s\n", n)
				}
			} else {
				fmt.Fprintf(g.io.Out, "%s: NOT OK: %s\n", res.File, res.Error)
			}
			if !res.OK {
				return &ExitError{Code: ExitUsage, Err: errors.New("configuration refused")}
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&file, "config", DefaultControllerConfig, "the controller's YAML configuration `file`")
	return cmd
}

// checkControllerConfig checks the file at path as serve would read it,
// without opening the database for writing or starting a plugin.
func checkControllerConfig(path string) ControllerConfigCheck {
	res := ControllerConfigCheck{File: path}
	fail := func(err error) ControllerConfigCheck {
		res.Error = err.Error()
		return res
	}
	fs, o := serveFlags()
	cf, err := flagfile.Read(path)
	if err != nil {
		return fail(fmt.Errorf("configuration file: %w", err))
	}
	if err := cf.Apply(fs, fs); err != nil {
		return fail(err)
	}
	explained := func(err error) ControllerConfigCheck { return fail(cf.Explain(err, fs)) }
	res.Settings = flagfile.Values(fs)
	if _, err := o.check(); err != nil {
		return explained(err)
	}
	hostKey, err := loadHostKey(o.dataDir)
	if err != nil {
		return explained(err)
	}
	res.HostKey = sshkey.Fingerprint(hostKey.PublicKey())
	if err := sameOwner(o.dataDir); err != nil {
		return explained(err)
	}
	if err := writableDataDir(o.dataDir); err != nil {
		return explained(err)
	}
	for _, p := range o.clouds {
		if err := pluginproc.Check(filepath.Join(o.pluginDir, cloud.BinaryPrefix+p)); err != nil {
			return explained(fmt.Errorf("--cloud %s: %w", p, err))
		}
	}
	if o.metricsListen != "" && o.metricsListen == o.listen {
		return explained(fmt.Errorf("--metrics-listen %s: the same address as --listen", o.metricsListen))
	}
	if filepath.Clean(o.dataDir) != packagedDataDir {
		res.Notes = append(res.Notes, "data_dir "+o.dataDir+" is not "+packagedDataDir+", which the packaged unit expects (StateDirectory=, ConditionPathExists=): change the unit too (systemctl edit cordon-controller)")
	}
	if host, _, _ := net.SplitHostPort(o.metricsListen); o.metricsListen != "" && host == "" {
		res.Notes = append(res.Notes, "metrics_listen "+o.metricsListen+" listens on every address, without authentication: prefer 127.0.0.1 or a management address")
	}
	res.OK = true
	return res
}

// loadHostKey loads the controller's host key from the data directory; an
// error says what to do, worded for --data-dir.
func loadHostKey(dataDir string) (ssh.Signer, error) {
	k, err := sshkey.Load(filepath.Join(dataDir, hostKeyFile))
	switch {
	case errors.Is(err, os.ErrNotExist):
		return nil, fmt.Errorf("--data-dir %s has no host key: run 'cordon controller init --data-dir %s' first (as the user the controller runs as: runuser -u cordon -- cordon controller init …)", dataDir, dataDir)
	case errors.Is(err, os.ErrPermission):
		return nil, fmt.Errorf("--data-dir %s: %v: the controller runs as a user that cannot read it (chown -R cordon:cordon %s)", dataDir, err, dataDir)
	case err != nil:
		return nil, fmt.Errorf("--data-dir %s: %w", dataDir, err)
	}
	return k, nil
}

// sameOwner checks that the data directory's host key and database belong
// to the directory's owner, the user the service runs as: files made by
// 'cordon controller init' run as root in a directory of the user cordon
// cannot be read by the service.
func sameOwner(dataDir string) error {
	dir, err := os.Stat(dataDir)
	if err != nil {
		return fmt.Errorf("--data-dir %s: %w", dataDir, err)
	}
	for _, name := range []string{hostKeyFile, dbFile, evidenceDir} {
		st, err := os.Stat(filepath.Join(dataDir, name))
		if err != nil {
			return fmt.Errorf("--data-dir %s: %w", dataDir, err)
		}
		if fileOwner(st) != fileOwner(dir) {
			return fmt.Errorf("--data-dir %s: %s belongs to uid %d, the directory to uid %d, the user the service runs as, which cannot read it (chown -R --reference=%s %s)",
				dataDir, name, fileOwner(st), fileOwner(dir), dataDir, dataDir)
		}
	}
	return nil
}

// writableDataDir checks that the database and the evidence directory can
// be written by this process, as the service's user (access(2) with W_OK,
// which the kernel answers for the real uid: run check-config as that
// user to check for it).
func writableDataDir(dataDir string) error {
	for _, name := range []string{dbFile, evidenceDir} {
		p := filepath.Join(dataDir, name)
		if err := unix.Access(p, unix.W_OK); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("--data-dir %s: %s: %v: the controller runs as a user that cannot write it (chown -R cordon:cordon %s)", dataDir, name, err, dataDir)
		}
	}
	return nil
}
