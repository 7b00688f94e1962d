package cli

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/crypto/ssh"

	"github.com/cordon-ir/cordon/controller/api"
	"github.com/cordon-ir/cordon/pkg/evidence"
	"github.com/cordon-ir/cordon/pkg/sshkey"
)

func newSnapshotsCmd(g *globals) *cobra.Command {
	var host string
	cmd := &cobra.Command{
		Use:   "snapshots [--host NAME]",
		Short: "List stored evidence snapshots, newest first (role forensic)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var snaps []api.Snapshot
			if err := g.call(cmd.Context(), api.OpSnapshots, api.SnapshotsArgs{Host: host}, &snaps); err != nil {
				return err
			}
			if g.json() {
				return g.printJSON(snaps)
			}
			if len(snaps) == 0 {
				_, err := fmt.Fprintln(g.io.Out, "no snapshots"+forHost(host))
				return err
			}
			tw := g.table("SNAPSHOT\tHOST\tTAKEN (UTC)\tSIZE\tORDER\tVERIFIED AT RECEIPT\tSHA256")
			for _, s := range snaps {
				verified := "yes"
				if !s.Verified {
					verified = "NO: " + clip(s.VerifyError, 40)
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", s.ID, s.Host, s.TakenAt.Format("2006-01-02 15:04:05"), humanBytes(s.Size), dash(s.OrderID), verified, s.SHA256)
			}
			return tw.Flush()
		},
	}
	cmd.Flags().StringVar(&host, "host", "", "only snapshots of this host")
	return cmd
}

func newSnapshotCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "snapshot",
		Short: "Download and verify evidence snapshots",
	}
	var out string
	download := &cobra.Command{
		Use:   "download ID --out PATH",
		Short: "Download a snapshot's evidence bundle (role forensic); recorded in its chain of custody",
		Args:  exactArgs(1, "a snapshot id"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runSnapshotDownload(cmd.Context(), g, args[0], out)
		},
	}
	download.Flags().StringVar(&out, "out", "", "file to write, or a directory to write the bundle's own file name into")
	download.MarkFlagRequired("out")

	var keyFile string
	verify := &cobra.Command{
		Use:   "verify PATH",
		Short: "Check a bundle offline: every artifact's SHA-256 and the agent's signature",
		Long: `Check an evidence bundle offline: the manifest's SSH signature (namespace
cordon-evidence) and the size and SHA-256 of every artifact it lists. Exit
status 0 only when all hold; otherwise the first thing that does not is named.

Give --agent-key with the host's enrolled key (a .pub file, or its SHA256:…
fingerprint from 'cordon hosts' or 'cordon snapshots -o json'): without it,
the signature is only checked against the key the manifest itself names,
which anyone can replace, and a warning says so.`,
		Args: exactArgs(1, "a bundle path"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runSnapshotVerify(g, args[0], keyFile)
		},
	}
	verify.Flags().StringVar(&keyFile, "agent-key", "", "accept only a signature by this agent key: a public key `file` (authorized_keys format) or its fingerprint SHA256:…")
	cmd.AddCommand(download, verify)
	return cmd
}

func runSnapshotDownload(ctx context.Context, g *globals, id, out string) error {
	if err := g.checkOutput(); err != nil {
		return err
	}
	dir, name := filepath.Split(out)
	if st, err := os.Stat(out); err == nil && st.IsDir() {
		dir, name = out, ""
	} else if err == nil {
		return fmt.Errorf("%s exists; not overwriting evidence", out)
	}
	if dir == "" {
		dir = "."
	}
	if st, err := os.Stat(dir); err != nil || !st.IsDir() {
		return fmt.Errorf("--out %s: directory %s does not exist", out, dir)
	}
	c, err := g.dial(ctx)
	if err != nil {
		return err
	}
	defer c.Close()
	tmp, err := os.CreateTemp(dir, ".cordon-download-*")
	if err != nil {
		return fmt.Errorf("--out %s: %w", out, err)
	}
	defer os.Remove(tmp.Name())
	snap, err := c.Download(ctx, id, tmp)
	if err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if name == "" {
		// The controller names the file; take no directory from it.
		name = filepath.Base(snap.FileName)
		if name == "." || name == "/" || strings.HasPrefix(name, ".") {
			name = "cordon-" + snap.ID + ".tar.gz"
		}
	}
	dst := filepath.Join(dir, name)
	if _, err := os.Stat(dst); err == nil {
		return fmt.Errorf("%s exists; not overwriting evidence", dst)
	}
	if err := os.Chmod(tmp.Name(), 0o444); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), dst); err != nil {
		return err
	}
	if g.json() {
		return g.printJSON(struct {
			api.Snapshot
			Path string `json:"path"`
		}{snap, dst})
	}
	fmt.Fprintf(g.io.Out, "snapshot %s of %s (taken %s) written to %s\n  %s, sha256 %s (matches the controller's record)\n  check it: cordon snapshot verify %s --agent-key %s\n",
		snap.ID, snap.Host, snap.TakenAt.Format(time.RFC3339), dst, humanBytes(snap.Size), snap.SHA256, dst, snap.AgentKey)
	return nil
}

// VerifyResult is what 'cordon snapshot verify -o json' prints.
type VerifyResult struct {
	Path       string `json:"path"`
	OK         bool   `json:"ok"`
	Error      string `json:"error,omitempty"`
	ErrorPath  string `json:"error_path,omitempty"`
	SnapshotID string `json:"snapshot_id,omitempty"`
	// SignerTrusted is true when the signer was checked against --agent-key.
	SignerTrusted bool      `json:"signer_trusted"`
	Host          string    `json:"host,omitempty"`
	Signer        string    `json:"signer,omitempty"`
	Files         int       `json:"files"`
	TakenAt       time.Time `json:"taken_at,omitzero"`
}

func runSnapshotVerify(g *globals, path, agentKey string) error {
	if err := g.checkOutput(); err != nil {
		return err
	}
	var opts evidence.VerifyOptions
	wantFP := ""
	switch {
	case agentKey == "":
	case sshkey.ValidFingerprint(agentKey):
		wantFP = agentKey
	default:
		k, err := readPublicKey(agentKey)
		if err != nil {
			return usageErr("--agent-key: %v", err)
		}
		opts.TrustedKeys = []ssh.PublicKey{k}
		wantFP = sshkey.Fingerprint(k)
	}
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	rep, verr := evidence.Verify(f, opts)
	if verr == nil && wantFP != "" && rep.SignerFingerprint != wantFP {
		verr = &evidence.VerifyError{Path: evidence.SignaturePath,
			Reason: fmt.Sprintf("signed by %s, not by the trusted agent key %s", rep.SignerFingerprint, wantFP)}
	}
	res := VerifyResult{Path: path, OK: verr == nil}
	if verr != nil {
		res.Error = verr.Error()
		var ve *evidence.VerifyError
		if errors.As(verr, &ve) {
			res.ErrorPath = ve.Path
		}
	} else {
		res.SnapshotID, res.Host, res.Signer, res.Files, res.TakenAt = rep.Manifest.SnapshotID, rep.Manifest.Host.Name,
			rep.SignerFingerprint, rep.Files, rep.Manifest.StartedAt
		res.SignerTrusted = wantFP != ""
	}
	if g.json() {
		if err := g.printJSON(res); err != nil {
			return err
		}
	} else if verr == nil {
		m := rep.Manifest
		fmt.Fprintf(g.io.Out, "OK: %s\n  snapshot %s of host %s, taken %s\n", path, m.SnapshotID, m.Host.Name, m.StartedAt.Format(time.RFC3339Nano))
		if res.SignerTrusted {
			fmt.Fprintf(g.io.Out, "  signature: valid, namespace %s, by the trusted agent key %s\n", evidence.Namespace, rep.SignerFingerprint)
		} else {
			fmt.Fprintf(g.io.Out, "  signature: valid, namespace %s, by the key the manifest names, %s\n"+
				"  WARNING: that key was not checked against a trusted one; anyone can sign with a key of their own.\n"+
				"           Pass --agent-key with the host's enrolled key (its fingerprint is in 'cordon hosts' and\n"+
				"           'cordon snapshots -o json', field agent_key).\n", evidence.Namespace, rep.SignerFingerprint)
		}
		fmt.Fprintf(g.io.Out, "  artifacts: %d files, every size and SHA-256 matches the manifest\n", rep.Files)
		for _, a := range m.Artifacts {
			line := fmt.Sprintf("    %-36s %8s", a.Path, humanBytes(a.Size))
			if strings.HasPrefix(a.Path, evidence.ArtifactsDir) {
				line += fmt.Sprintf("  %d records", a.Records)
			}
			if len(a.Errors) > 0 {
				line += fmt.Sprintf("  (%d collection errors recorded)", len(a.Errors))
			}
			fmt.Fprintln(g.io.Out, line)
		}
	}
	if verr != nil {
		return &ExitError{Code: ExitFailure, Err: fmt.Errorf("verification FAILED for %s: %w", path, verr)}
	}
	return nil
}

// readPublicKey reads one public key in authorized_keys format, and says so
// plainly when given a private key instead.
func readPublicKey(path string) (ssh.PublicKey, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	if strings.Contains(string(b), "PRIVATE KEY") {
		return nil, fmt.Errorf("%s is a private key; give the public key (the .pub file)", path)
	}
	k, err := sshkey.ParseAuthorizedKey(string(b))
	if err != nil {
		return nil, fmt.Errorf("%s: not a public key in authorized_keys format (ssh-ed25519 AAAA…): %v", path, err)
	}
	return k, nil
}
