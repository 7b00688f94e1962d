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

	"github.com/cordon-ir/cordon/pkg/cloud"
	"github.com/cordon-ir/cordon/pkg/flagfile"
	"github.com/cordon-ir/cordon/pkg/logging"
	"github.com/cordon-ir/cordon/pkg/pluginproc"
	"github.com/cordon-ir/cordon/pkg/policy"
	"github.com/cordon-ir/cordon/pkg/sshkey"
)

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
func applyServeConfig(target *pflag.FlagSet, path string) error {
	if path == "" {
		return nil
	}
	cf, err := flagfile.Read(path)
	if err != nil {
		return usageErr("configuration file: %v", err)
	}
	schema, _ := serveFlags()
	if err := cf.Apply(target, schema); err != nil {
		return usageErr("%v", err)
	}
	return nil
}

// check checks the options without touching anything, and returns the
// advertised endpoints parsed.
func (o *serveOptions) check() ([]policy.Endpoint, error) {
	if _, err := logging.New(io.Discard, o.logFormat, o.logLevel); err != nil {
		return nil, err
	}
	if _, _, err := net.SplitHostPort(o.listen); err != nil {
		return nil, fmt.Errorf("--listen %q: want host:port", o.listen)
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
	res.Settings = map[string]any{}
	for _, k := range flagfile.Keys(fs) {
		f := fs.Lookup(strings.ReplaceAll(k, "_", "-"))
		var v any = f.Value.String()
		if sv, ok := f.Value.(pflag.SliceValue); ok {
			v = sv.GetSlice()
		}
		res.Settings[k] = v
	}
	if _, err := o.check(); err != nil {
		return fail(err)
	}
	hostKey, err := sshkey.Load(filepath.Join(o.dataDir, hostKeyFile))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return fail(fmt.Errorf("%s has no host key: run 'cordon controller init --data-dir %s' first", o.dataDir, o.dataDir))
		}
		return fail(err)
	}
	res.HostKey = sshkey.Fingerprint(hostKey.PublicKey())
	if _, err := os.Stat(filepath.Join(o.dataDir, dbFile)); err != nil {
		return fail(fmt.Errorf("database: %w", err))
	}
	for _, p := range o.clouds {
		if err := pluginproc.Check(filepath.Join(o.pluginDir, cloud.BinaryPrefix+p)); err != nil {
			return fail(fmt.Errorf("--cloud %s: %w", p, err))
		}
	}
	if host, _, _ := net.SplitHostPort(o.metricsListen); o.metricsListen != "" && host == "" {
		res.Notes = append(res.Notes, "metrics_listen "+o.metricsListen+" listens on every address, without authentication: prefer 127.0.0.1 or a management address")
	}
	res.OK = true
	return res
}
