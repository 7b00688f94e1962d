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
	Name       string `json:"name,omitempty"` // "" with --offline and no --name: the host's name at first start
	Key        string `json:"key,omitempty"`  // the agent key's fingerprint; "" with --offline
	KeyFile    string `json:"key_file"`       // where it is (or will be)
	KeyCreated bool   `json:"key_created"`    // made by this enroll
	Config     string `json:"config"`         // the configuration file written
	Controller string `json:"controller"`
	// Enrolled is true when the controller took the key; false with
	// --offline, where the token is written into the configuration for the
	// agent's first start.
	Enrolled bool `json:"enrolled"`
	// TokenUsed is false when the key was enrolled already: the
	// controller did not ask for the token, which stays unused.
	TokenUsed bool `json:"token_used"`
}

func newEnrollCmd(out, errw io.Writer) *cobra.Command {
	cfg := defaults()
	var configFile, output, tokenFile string
	var offline, force bool
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "enroll --controller HOST:PORT --controller-fingerprint SHA256:… --token-file FILE|- [--name NAME] [flags]",
		Short: "Install time: make the agent key, enroll it with the controller and write the configuration file",
		Long: `Set this host up as a Cordon agent, once, at install time: make the agent key
(ed25519, unless it exists), enroll it with the controller using a one-time
token from 'cordon enroll create', and write the agent's configuration file
(` + DefaultConfigFile + `) with the controller, its pinned fingerprint, the host's
name and the other flags given. The token is used up here and is not written.
Then start the agent: systemctl start cordon-agent.

Give the token with --token-file FILE ('-' for standard input) rather than
--token: a command line is visible to every local user.

With --offline (the controller cannot be reached from here now) nothing is
sent and no key is made: the token is written into the configuration and
the agent makes its key and enrolls at its first start. A token is used
once: an image cloned to many hosts needs an enroll on each, at first boot,
each with a token of its own.

An existing configuration file is left alone unless --force is given.`,
		Args:          cobra.NoArgs,
		SilenceUsage:  true,
		SilenceErrors: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if output != "text" && output != "json" {
				return usageError{fmt.Errorf("-o %q: want text or json", output)}
			}
			if tokenFile != "" {
				if cfg.EnrollToken != "" {
					return usageError{errors.New("--token and --token-file: give one")}
				}
				tok, err := readToken(tokenFile, cmd.InOrStdin())
				if err != nil {
					return usageError{err}
				}
				cfg.EnrollToken = tok
			}
			if cfg.EnrollToken == "" {
				return usageError{errors.New("--token-file (or --token) is required: a one-time token from 'cordon enroll create'")}
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
			switch {
			case res.Enrolled && res.TokenUsed:
				fmt.Fprintf(out, "enrolled %s with the controller %s: %s agent key %s (%s)\n", res.Name, res.Controller, made, res.Key, res.KeyFile)
			case res.Enrolled:
				fmt.Fprintf(out, "the agent key %s (%s) is enrolled as %s already; the token was not used\n", res.Key, res.KeyFile, res.Name)
			default:
				fmt.Fprintf(out, "not enrolled yet (--offline): the agent makes its key (%s) and enrolls at its first start\n", res.KeyFile)
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
	f.StringVar(&cfg.EnrollToken, "token", "", "one-time enrollment `token` from 'cordon enroll create' (visible to local users while enroll runs: prefer --token-file)")
	f.StringVar(&tokenFile, "token-file", "", "`file` holding the one-time enrollment token ('-': standard input)")
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
	if offline {
		// The key is made at first start, on the host that runs the
		// agent: not here, where it would be cloned with an image.
		if !cmd.Flags().Changed("name") {
			res.Name = ""
		}
	} else {
		if err := os.MkdirAll(filepath.Dir(cfg.Key), 0o700); err != nil {
			return res, fmt.Errorf("agent key directory: %w", err)
		}
		signer, created, err := sshkey.LoadOrCreate(cfg.Key, "cordon-agent@"+cfg.Name)
		if err != nil {
			return res, fmt.Errorf("agent key %s: %w", cfg.Key, err)
		}
		res.Key, res.KeyCreated = sshkey.Fingerprint(signer.PublicKey()), created
		used, err := agent.Enroll(cmd.Context(), agent.EnrollConfig{Controller: cfg.Controller, Fingerprint: cfg.ControllerFingerprint,
			Name: cfg.Name, Signer: signer, Token: cfg.EnrollToken, Timeout: timeout})
		if err != nil {
			return res, fmt.Errorf("enroll %s with %s: %w; %s", cfg.Name, cfg.Controller, err, enrollHint(err, cfg))
		}
		res.Enrolled, res.TokenUsed = true, used
	}
	// What goes into the file: the daemon's settings given here, and the
	// controller, fingerprint, name and key always; the token only when
	// it is still to be used, at the agent's first start.
	keep := map[string]bool{"controller": true, "controller-fingerprint": true, "name": res.Name != "", "key": true}
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

// enrollHint says what to do about a refused enrollment.
func enrollHint(err error, cfg Config) string {
	msg := err.Error()
	switch {
	case errors.Is(err, sshkey.ErrHostKeyMismatch):
		return "check --controller-fingerprint against what 'cordon controller init' printed ('cordon controller check-config' on the controller shows it)"
	case strings.Contains(msg, "token is unknown, used or expired"):
		return "mint a new token on the controller: cordon enroll create"
	case strings.Contains(msg, "already enrolled with another key"):
		return "the name belongs to another agent key: enroll under another --name"
	case strings.Contains(msg, "the key is not enrolled") || strings.Contains(msg, "unable to authenticate"):
		return "this key may be enrolled under another name than " + cfg.Name + " (the controller's log says which): give that --name"
	case strings.Contains(msg, "cannot connect") || strings.Contains(msg, "handshake"):
		return "check --controller and that this host reaches its port; --offline writes the token for the agent's first start instead"
	}
	return "the key " + cfg.Key + " stays; run enroll again"
}

// readToken reads an enrollment token from path, or from stdin for "-":
// the first line, trimmed.
func readToken(path string, stdin io.Reader) (string, error) {
	r := stdin
	if path != "-" {
		f, err := os.Open(path)
		if err != nil {
			return "", fmt.Errorf("--token-file: %w", err)
		}
		defer f.Close()
		r = f
	}
	b, err := io.ReadAll(io.LimitReader(r, 4096))
	if err != nil {
		return "", fmt.Errorf("--token-file: %w", err)
	}
	tok, _, _ := strings.Cut(string(b), "\n")
	if tok = strings.TrimSpace(tok); tok == "" {
		return "", fmt.Errorf("--token-file %s: no token in it", path)
	}
	return tok, nil
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
