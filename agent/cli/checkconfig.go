package cli

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/cordon-ir/cordon/pkg/firewall"
	"github.com/cordon-ir/cordon/pkg/flagfile"
	"github.com/cordon-ir/cordon/pkg/sshkey"
)

// packagedStateDir is the agent's StateDirectory= in the packaged unit.
const packagedStateDir = "/var/lib/cordon-agent"

// ConfigCheck is what 'cordon-agent check-config -o json' prints.
type ConfigCheck struct {
	File string `json:"file"`
	OK   bool   `json:"ok"`
	// Error is why the agent would not start with this file ("" if OK).
	Error string `json:"error,omitempty"`
	// Settings are the values the agent would run with, by key (the
	// file's, else the defaults); a set enroll_token shows as "(set)".
	Settings map[string]any `json:"settings,omitempty"`
	// Key is the agent key's fingerprint, when the key exists.
	Key string `json:"key,omitempty"`
	// Plugin is the firewall plugin the agent would run, and why.
	Plugin       string `json:"plugin,omitempty"`
	PluginReason string `json:"plugin_reason,omitempty"`
	// Notes are things to know that do not stop the agent.
	Notes []string `json:"notes,omitempty"`
}

func newCheckConfigCmd(out, errw io.Writer) *cobra.Command {
	var file, output string
	cmd := &cobra.Command{
		Use:   "check-config [--config FILE] [-o json]",
		Short: "Check the agent's configuration file without starting the agent",
		Long: `Check a configuration file of cordon-agent as the agent would read it at
start: every key known, every value valid, the agent key readable (or to be
made at first start), the firewall plugin installed (and matching its pinned
SHA-256). With plugin: auto it says which plugin this host would get, and why.
It changes nothing. Exit status 0 when the agent would start, 2 when not.`,
		Args:          cobra.NoArgs,
		SilenceUsage:  true,
		SilenceErrors: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if output != "text" && output != "json" {
				return usageError{fmt.Errorf("-o %q: want text or json", output)}
			}
			res := checkConfigFile(file)
			if output == "json" {
				enc := json.NewEncoder(out)
				enc.SetIndent("", "  ")
				if err := enc.Encode(res); err != nil {
					return err
				}
			} else {
				printConfigCheck(out, res)
			}
			if !res.OK {
				if output == "json" {
					return usageError{errors.New("configuration refused")}
				}
				return usageError{errors.New(res.Error)}
			}
			return nil
		},
	}
	cmd.SetOut(out)
	cmd.SetErr(errw)
	cmd.Flags().StringVar(&file, "config", DefaultConfigFile, "the agent's YAML configuration `file`")
	cmd.Flags().StringVarP(&output, "output", "o", "text", "output format: text or json")
	return cmd
}

// checkConfigFile checks the configuration file at path as run would,
// without making the key, taking the runtime lock or starting a plugin.
func checkConfigFile(path string) ConfigCheck {
	res := ConfigCheck{File: path}
	fail := func(err error) ConfigCheck {
		res.Error = err.Error()
		return res
	}
	fs, cfg := agentFlags()
	cf, err := applyConfigFile(fs, true, path)
	if err != nil {
		return fail(err)
	}
	res.Settings = settings(fs)
	c, err := cfg.check()
	if err != nil {
		return fail(cf.Explain(err, fs))
	}
	switch signer, err := sshkey.Load(c.Key); {
	case err == nil:
		res.Key = sshkey.Fingerprint(signer.PublicKey())
		if c.EnrollToken != "" {
			res.Notes = append(res.Notes, "enroll_token is set but the key exists: the token is used only to enroll a new key; remove it once the host shows in 'cordon hosts'")
		}
	case errors.Is(err, os.ErrNotExist):
		if _, err := os.Stat(filepath.Dir(c.Key)); err != nil {
			res.Notes = append(res.Notes, "the key's directory "+filepath.Dir(c.Key)+" does not exist: the agent makes it at first start")
		}
		if c.EnrollToken == "" {
			res.Notes = append(res.Notes, "key "+c.Key+" does not exist and no enroll_token is set: the controller will refuse the new key; run 'cordon-agent enroll'")
		} else {
			res.Notes = append(res.Notes, "key "+c.Key+" does not exist yet: the agent makes it at first start and enrolls it with enroll_token")
		}
	default:
		return fail(cf.Explain(fmt.Errorf("--key %s: %w", c.Key, err), fs))
	}
	if !strings.HasPrefix(c.Key, packagedStateDir+"/") {
		res.Notes = append(res.Notes, "key "+c.Key+" is outside "+packagedStateDir+", the only directory the packaged unit lets the agent write (StateDirectory=): change the unit too (systemctl edit cordon-agent)")
	}
	dir := pluginDir(c.Config)
	if c.Plugin != firewall.Auto {
		if err := checkConfiguredPlugin(c.Config, dir); err != nil {
			return fail(cf.Explain(err, fs))
		}
		res.Plugin, res.PluginReason = c.Plugin, "configured"
	} else {
		name, reason, err := firewall.Choose(firewall.ProbeHost(), installedIn(dir))
		if err != nil {
			return fail(cf.Explain(fmt.Errorf("--plugin-dir %s: %w", dir, err), fs))
		}
		res.Plugin, res.PluginReason = name, reason
	}
	res.OK = true
	return res
}

// settings returns each key's value in fs, for people to read, the
// enrollment token hidden.
func settings(fs *pflag.FlagSet) map[string]any {
	m := flagfile.Values(fs, "config", "help")
	if m["enroll_token"] != "" {
		m["enroll_token"] = "(set)"
	}
	return m
}

func printConfigCheck(w io.Writer, r ConfigCheck) {
	if !r.OK {
		fmt.Fprintf(w, "%s: NOT OK: %s\n", r.File, r.Error)
		return
	}
	fmt.Fprintf(w, "%s: ok\n", r.File)
	fs, _ := agentFlags()
	for _, k := range flagfile.Keys(fs, "config", "help") {
		v := r.Settings[k]
		if l, ok := v.([]string); ok {
			v = strings.Join(l, ", ")
		}
		fmt.Fprintf(w, "  %-24s %v\n", k, v)
	}
	if r.Key != "" {
		fmt.Fprintf(w, "agent key: %s\n", r.Key)
	}
	fmt.Fprintf(w, "firewall plugin: %s (%s)\n", r.Plugin, r.PluginReason)
	for _, n := range r.Notes {
		fmt.Fprintf(w, "note: %s\n", n)
	}
}
