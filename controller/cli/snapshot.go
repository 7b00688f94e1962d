package cli

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
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
			tw := g.table("SNAPSHOT\tHOST\tTAKEN (UTC)\tSIZE\tORDER\tSHA256")
			for _, s := range snaps {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", s.ID, s.Host, s.TakenAt.Format("2006-01-02 15:04:05"), humanBytes(s.Size), dash(s.OrderID), s.SHA256)
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

Without --agent-key the signature is checked against the key the manifest
names, and its fingerprint is printed: compare it with 'cordon hosts -o json'.`,
		Args: exactArgs(1, "a bundle path"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runSnapshotVerify(g, args[0], keyFile)
		},
	}
	verify.Flags().StringVar(&keyFile, "agent-key", "", "accept only a signature by this public key `file` (authorized_keys format)")
	cmd.AddCommand(download, verify)
	return cmd
}

func runSnapshotDownload(ctx context.Context, g *globals, id, out string) error {
	c, err := g.dial(ctx)
	if err != nil {
		return err
	}
	defer c.Close()
	dir, name := filepath.Split(out)
	if st, err := os.Stat(out); err == nil && st.IsDir() {
		dir, name = out, ""
	}
	if dir == "" {
		dir = "."
	}
	tmp, err := os.CreateTemp(dir, ".cordon-download-*")
	if err != nil {
		return err
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
		name = snap.FileName
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
	fmt.Fprintf(g.io.Out, "snapshot %s of %s (taken %s) written to %s\n  %s, sha256 %s (matches the controller's record)\n  check it: cordon snapshot verify %s\n",
		snap.ID, snap.Host, snap.TakenAt.Format(time.RFC3339), dst, humanBytes(snap.Size), snap.SHA256, dst)
	return nil
}

// VerifyResult is what 'cordon snapshot verify -o json' prints.
type VerifyResult struct {
	Path       string    `json:"path"`
	OK         bool      `json:"ok"`
	Error      string    `json:"error,omitempty"`
	ErrorPath  string    `json:"error_path,omitempty"`
	SnapshotID string    `json:"snapshot_id,omitempty"`
	Host       string    `json:"host,omitempty"`
	Signer     string    `json:"signer,omitempty"`
	Files      int       `json:"files"`
	TakenAt    time.Time `json:"taken_at,omitzero"`
}

func runSnapshotVerify(g *globals, path, keyFile string) error {
	if err := g.checkOutput(); err != nil {
		return err
	}
	var opts evidence.VerifyOptions
	if keyFile != "" {
		b, err := os.ReadFile(keyFile)
		if err != nil {
			return fmt.Errorf("agent key: %w", err)
		}
		k, err := sshkey.ParseAuthorizedKey(string(b))
		if err != nil {
			return fmt.Errorf("agent key %s: %w", keyFile, err)
		}
		opts.TrustedKeys = []ssh.PublicKey{k}
	}
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	rep, verr := evidence.Verify(f, opts)
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
	}
	if g.json() {
		if err := g.printJSON(res); err != nil {
			return err
		}
	} else if verr == nil {
		m := rep.Manifest
		fmt.Fprintf(g.io.Out, "OK: %s\n  snapshot %s of host %s, taken %s\n  signature: valid, namespace %s, by agent key %s\n  artifacts: %d files, every size and SHA-256 matches the manifest\n",
			path, m.SnapshotID, m.Host.Name, m.StartedAt.Format(time.RFC3339Nano), evidence.Namespace, rep.SignerFingerprint, rep.Files)
		for _, a := range m.Artifacts {
			line := fmt.Sprintf("    %-36s %8s  %d records", a.Path, humanBytes(a.Size), a.Records)
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
