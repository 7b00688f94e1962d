package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/cordon-ir/cordon/pkg/firewall"
)

// LocalStatus is what 'cordon-agent status --local -o json' prints.
type LocalStatus struct {
	// RulesInPlace is true when any of Cordon's rules are in the kernel:
	// the host is isolated, or partly (a remnant).
	RulesInPlace bool           `json:"rules_in_place"`
	Plugins      []PluginStatus `json:"plugins"`
}

// PluginStatus is one plugin's reading of the rules.
type PluginStatus struct {
	Plugin   string `json:"plugin"`
	Isolated bool   `json:"isolated"`
	Digest   string `json:"digest,omitempty"`
	Partial  string `json:"partial,omitempty"` // remnants found, if any
	Error    string `json:"error,omitempty"`
}

// newStatusCmd is 'cordon-agent status --local': whether Cordon's rules
// are in place on this host, read through the plugins (the removal
// script asks it before the package goes).
func newStatusCmd(out, errw io.Writer) *cobra.Command {
	cfg := defaults()
	var configFile, output string
	var local bool
	cmd := &cobra.Command{
		Use:   "status --local [--config /etc/cordon/agent.yaml] [-o json]",
		Short: "Say whether Cordon's rules are in place on this host, read through the firewall plugins",
		Long: `Read Cordon's rules from this host's kernel through each firewall plugin that
can read them without making the kernel load a module (with --plugin auto,
both installed ones that can), and say whether the host is isolated. It
changes nothing and needs neither the agent nor the controller.`,
		Args:          cobra.NoArgs,
		SilenceUsage:  true,
		SilenceErrors: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if _, err := applyConfigFile(cmd.Flags(), false, configFile); err != nil {
				return err
			}
			if !local {
				return usageError{errors.New("--local is required: this reads this host's rules, not the controller's view")}
			}
			if output != "text" && output != "json" {
				return usageError{fmt.Errorf("-o %q: want text or json", output)}
			}
			st, err := localStatus(cmd.Context(), cfg)
			if err != nil {
				return err
			}
			if output == "json" {
				enc := json.NewEncoder(out)
				enc.SetIndent("", "  ")
				return enc.Encode(st)
			}
			for _, p := range st.Plugins {
				switch {
				case p.Error != "":
					fmt.Fprintf(out, "%s plugin: cannot read the rules: %s\n", p.Plugin, p.Error)
				case p.Isolated:
					fmt.Fprintf(out, "%s plugin: ISOLATED: Cordon's rules are in place (%s)\n", p.Plugin, p.Digest)
				case p.Partial != "":
					fmt.Fprintf(out, "%s plugin: remnants of Cordon's rules: %s\n", p.Plugin, p.Partial)
				default:
					fmt.Fprintf(out, "%s plugin: none of Cordon's rules\n", p.Plugin)
				}
			}
			return nil
		},
	}
	cmd.SetOut(out)
	cmd.SetErr(errw)
	f := cmd.Flags()
	f.StringVar(&configFile, "config", "", "YAML configuration `file` of the agent (its plugin, plugin_dir, plugin_sha256)")
	f.BoolVar(&local, "local", false, "read this host's rules (required)")
	f.StringVar(&cfg.Plugin, "plugin", cfg.Plugin, "firewall plugin `name`, or auto")
	f.StringVar(&cfg.PluginDir, "plugin-dir", "", "plugin `directory`")
	f.StringVar(&cfg.PluginSHA256, "plugin-sha256", "", "pinned SHA-256 of the plugin executable (`hex`)")
	f.StringVarP(&output, "output", "o", "text", "output format: text or json")
	return cmd
}

// localStatus asks each plugin that may hold Cordon's rules (pluginsToAsk)
// for their status.
func localStatus(ctx context.Context, cfg Config) (LocalStatus, error) {
	dir := pluginDir(cfg)
	names, err := pluginsToAsk(cfg, dir)
	if err != nil {
		return LocalStatus{}, err
	}
	sock, err := os.MkdirTemp("", "cordon-status-")
	if err != nil {
		return LocalStatus{}, err
	}
	defer os.RemoveAll(sock)
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	var st LocalStatus
	for _, name := range names {
		ps := PluginStatus{Plugin: name}
		sha := ""
		if name == cfg.Plugin {
			sha = cfg.PluginSHA256
		}
		fw, err := firewall.Launch(firewall.LaunchConfig{Dir: dir, Name: name, SHA256: sha, SocketDir: sock, Stderr: io.Discard})
		if err != nil {
			ps.Error = err.Error()
			st.Plugins = append(st.Plugins, ps)
			continue
		}
		s, err := fw.Status(ctx)
		fw.Close()
		if err != nil {
			ps.Error = err.Error()
		} else {
			ps.Isolated, ps.Digest, ps.Partial = s.Isolated, s.Digest, s.Partial
			st.RulesInPlace = st.RulesInPlace || s.Digest != "" || s.Partial != ""
		}
		st.Plugins = append(st.Plugins, ps)
	}
	return st, nil
}

// pluginsToAsk returns the plugins that may hold Cordon's rules: the one
// configured, or with --plugin auto every installed one that can read
// them without making the kernel load a module (safeToAsk). An error when
// there is none.
func pluginsToAsk(cfg Config, dir string) ([]string, error) {
	if cfg.Plugin != firewall.Auto {
		return []string{cfg.Plugin}, nil
	}
	host := firewall.ProbeHost()
	var names []string
	for _, n := range []string{"nftables", "iptables"} {
		if installedIn(dir)(n) && safeToAsk(host, n) {
			names = append(names, n)
		}
	}
	if len(names) == 0 {
		return nil, errors.New("no firewall plugin to read the rules through: none installed in " + dir + " can read this host's rules")
	}
	return names, nil
}
