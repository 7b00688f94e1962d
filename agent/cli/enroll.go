package cli

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"go.yaml.in/yaml/v3"

	"github.com/cordon-ir/cordon/agent"
	"github.com/cordon-ir/cordon/pkg/sshkey"
)

// EnrollResult is what 'cordon-agent enroll -o json' prints.
type EnrollResult struct {
	Name       string `json:"name"`
	Key        string `json:"key"`         // the agent key's fingerprint
	KeyFile    string `json:"key_file"`    // where it is
	KeyCreated bool   `json:"key_created"` // made by this enroll
	Config     string `json:"config"`      // the configuration file written
	Controller string `json:"controller"`
	// Enrolled is true when the controller took the key; false with
	// --offline, where the token is written into the configuration for the
	// agent's first start.
	Enrolled bool `json:"enrolled"`
}

func newEnrollCmd(out, errw io.Writer) *cobra.Command {
	cfg := defaults()
	var configFile, output string
	var offline, force bool
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "enroll --controller HOST:PORT --controller-fingerprint SHA256:… --token TOKEN [--name NAME] [flags]",
		Short: "Install time: make the agent key, enroll it with the controller and write the configuration file",
		Long: `Set this host up as a Cordon agent, once, at install time: make the agent key
(ed25519, unless it exists), enroll it with the controller using a one-time
token from 'cordon enroll create', and write the agent's configuration file
(` + DefaultConfigFile + `) with the controller, its pinned fingerprint, the host's
name and the other flags given. The token is used up here and is not written.
Then start the agent: systemctl start cordon-agent.

With --offline (the controller cannot be reached from here now, e.g. while
building an image) nothing is sent: the token is written into the
configuration and the agent enrolls at its first start.

An existing configuration file is left alone unless --force is given.`,
		Args:          cobra.NoArgs,
		SilenceUsage:  true,
		SilenceErrors: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if output != "text" && output != "json" {
				return usageError{fmt.Errorf("-o %q: want text or json", output)}
			}
			if cfg.EnrollToken == "" {
				return usageError{errors.New("--token is required: a one-time token from 'cordon enroll create'")}
			}
			c, err := cfg.check()
			if err != nil {
				return usageError{err}
			}
			if _, err := os.Stat(configFile); err == nil && !force {
				return fmt.Errorf("%s exists: this host is set up already (check it with 'cordon-agent check-config'; --force writes it again)", configFile)
			}
			res, err := enroll(cmd, c.Config, configFile, offline, timeout)
			if err != nil {
				return err
			}
			if output == "json" {
				enc := json.NewEncoder(out)
				enc.SetIndent("", "  ")
				return enc.Encode(res)
			}
			made := "existing"
			if res.KeyCreated {
				made = "new"
			}
			if res.Enrolled {
				fmt.Fprintf(out, "enrolled %s with the controller %s: %s agent key %s (%s)\n", res.Name, res.Controller, made, res.Key, res.KeyFile)
			} else {
				fmt.Fprintf(out, "not enrolled yet (--offline): the agent enrolls its %s key %s (%s) at its first start\n", made, res.Key, res.KeyFile)
			}
			fmt.Fprintf(out, "wrote %s\nstart the agent: systemctl start cordon-agent\n", res.Config)
			return nil
		},
	}
	cmd.SetOut(out)
	cmd.SetErr(errw)
	f := cmd.Flags()
	addFlags(f, &cfg)
	// The daemon's --enroll-token is --token here.
	f.Lookup("enroll-token").Hidden = true
	f.StringVar(&cfg.EnrollToken, "token", "", "one-time enrollment `token` from 'cordon enroll create'")
	f.StringVar(&configFile, "config", DefaultConfigFile, "configuration `file` to write")
	f.BoolVar(&offline, "offline", false, "do not contact the controller: write the token into the configuration for the agent's first start")
	f.BoolVar(&force, "force", false, "write the configuration file even if it exists")
	f.DurationVar(&timeout, "timeout", 15*time.Second, "how long to try reaching the controller")
	f.StringVarP(&output, "output", "o", "text", "output format: text or json")
	return cmd
}

// enroll makes (or loads) the key, enrolls it unless offline, and writes
// the configuration file: the daemon flags set on cmd's command line, with
// the controller, fingerprint, name and key always.
func enroll(cmd *cobra.Command, cfg Config, configFile string, offline bool, timeout time.Duration) (EnrollResult, error) {
	res := EnrollResult{Name: cfg.Name, KeyFile: cfg.Key, Config: configFile, Controller: cfg.Controller}
	if err := os.MkdirAll(filepath.Dir(cfg.Key), 0o700); err != nil {
		return res, fmt.Errorf("agent key directory: %w", err)
	}
	signer, created, err := sshkey.LoadOrCreate(cfg.Key, "cordon-agent@"+cfg.Name)
	if err != nil {
		return res, fmt.Errorf("agent key %s: %w", cfg.Key, err)
	}
	res.Key, res.KeyCreated = sshkey.Fingerprint(signer.PublicKey()), created
	if !offline {
		err := agent.Enroll(cmd.Context(), agent.EnrollConfig{Controller: cfg.Controller, Fingerprint: cfg.ControllerFingerprint,
			Name: cfg.Name, Signer: signer, Token: cfg.EnrollToken, Timeout: timeout})
		if err != nil {
			return res, fmt.Errorf("enroll %s with %s: %w (the key %s stays; run enroll again, or --offline to enroll at first start)",
				cfg.Name, cfg.Controller, err, cfg.Key)
		}
		res.Enrolled = true
	}
	// What goes into the file: the daemon's settings given here, and the
	// controller, fingerprint, name and key always; the token only when
	// it is still to be used, at the agent's first start.
	keep := map[string]bool{"controller": true, "controller-fingerprint": true, "name": true, "key": true}
	cmd.Flags().Visit(func(f *pflag.Flag) { keep[f.Name] = true })
	keep["enroll-token"] = offline
	fs, _ := agentFlags()
	var b strings.Builder
	fmt.Fprintf(&b, "# %s: settings of cordon-agent, written by 'cordon-agent enroll' on %s.\n", configFile, time.Now().UTC().Format("2006-01-02"))
	b.WriteString("# Every flag of cordon-agent can be set here, its name in snake_case;\n# check changes with 'cordon-agent check-config'.\n")
	var werr error
	fs.VisitAll(func(sf *pflag.Flag) {
		if !keep[sf.Name] || werr != nil {
			return
		}
		val := cmd.Flags().Lookup(sf.Name).Value
		var v any = val.String()
		if sv, ok := val.(pflag.SliceValue); ok {
			v = sv.GetSlice()
		}
		y, err := yaml.Marshal(map[string]any{strings.ReplaceAll(sf.Name, "-", "_"): v})
		if err != nil {
			werr = err
			return
		}
		b.Write(y)
	})
	if werr != nil {
		return res, werr
	}
	if err := writeFileAtomic(configFile, []byte(b.String()), 0o600); err != nil {
		return res, fmt.Errorf("write %s: %w", configFile, err)
	}
	return res, nil
}

// writeFileAtomic writes data to path through a temporary file in the same
// directory, synced and renamed over path, so that path is never half
// written.
func writeFileAtomic(path string, data []byte, mode os.FileMode) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Chmod(mode); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}
