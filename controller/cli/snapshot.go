package cli

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
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

	var keyFile, receiptFile string
	var noReceipt bool
	verify := &cobra.Command{
		Use:   "verify PATH",
		Short: "Check a bundle offline: every artifact's SHA-256 and the agent's signature",
		Long: `Check an evidence bundle offline: the controller's signed receipt for it, the
manifest's SSH signature (namespace cordon-evidence) and the size and SHA-256
of every artifact it lists. Exit status 0 only when all hold; otherwise the
first thing that does not is named.

The signer must be tied to a trusted key, one way or the other:
'cordon snapshot download' writes the receipt next to the bundle
(PATH.receipt.json); it is signed with the controller's host key, checked
against --controller-fingerprint (or CORDON_CONTROLLER_FINGERPRINT), and names
the bundle's SHA-256 and the enrolled agent key that sent it, which then must
have signed the manifest, and says whether the bundle verified on arrival.
Without a receipt, give --agent-key with the host's enrolled key (a .pub
file, or its SHA256:… fingerprint from 'cordon hosts'). A bundle signed by a
key only the bundle itself names fails: anyone can make one.`,
		Args: exactArgs(1, "a bundle path"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runSnapshotVerify(g, args[0], keyFile, receiptFile, noReceipt)
		},
	}
	verify.Flags().StringVar(&receiptFile, "receipt", "", "the controller's receipt `file` (default: PATH"+evidence.ReceiptSuffix+", if it exists)")
	verify.Flags().BoolVar(&noReceipt, "no-receipt", false, "do not check the controller's receipt")
	verify.Flags().StringVar(&keyFile, "agent-key", "", "accept only a signature by this agent key: a public key `file` (authorized_keys format) or its fingerprint SHA256:…")
	take := &cobra.Command{
		Use:   "take",
		Short: "Take a snapshot without isolating",
	}
	o := &orderOptions{}
	takeHost := &cobra.Command{
		Use:   "host NAME --reason TEXT [--incident ID] [--wait]",
		Short: "Capture a host's volatile state as signed evidence, without isolating it: triage before deciding (role responder or forensic)",
		Args:  exactArgs(1, "a host name"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runOrder(cmd.Context(), g, api.OpSnapshotTake, args[0], o)
		},
	}
	f := takeHost.Flags()
	f.StringVar(&o.reason, "reason", "", "why the snapshot is taken (required)")
	f.StringVar(&o.incident, "incident", "", "incident `id` the order belongs to")
	f.BoolVar(&o.wait, "wait", false, "wait until the snapshot is stored at the controller")
	f.DurationVar(&o.timeout, "timeout", 5*time.Minute, "how long --wait waits")
	takeHost.MarkFlagRequired("reason")
	take.AddCommand(takeHost)

	custody := &cobra.Command{
		Use:   "custody ID",
		Short: "Show a snapshot's chain of custody: received from which agent key, downloaded by whom and when (role forensic)",
		Args:  exactArgs(1, "a snapshot id"),
		RunE: func(cmd *cobra.Command, args []string) error {
			var entries []api.CustodyEntry
			if err := g.call(cmd.Context(), api.OpSnapshotCustody, api.SnapshotArgs{ID: args[0]}, &entries); err != nil {
				return err
			}
			if g.json() {
				return g.printJSON(entries)
			}
			tw := g.table("TIME (UTC)\tEVENT\tBY\tKEY\tSHA256\tDETAIL")
			for _, e := range entries {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", e.At.Format("2006-01-02 15:04:05.000"), e.Event, e.Actor, dash(e.ActorKey), short(e.SHA256), e.Detail)
			}
			return tw.Flush()
		},
	}
	cmd.AddCommand(take, download, verify, custody)
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
	if snap.Receipt != "" {
		if err := os.WriteFile(dst+evidence.ReceiptSuffix, []byte(snap.Receipt+"\n"), 0o444); err != nil {
			return fmt.Errorf("write the controller's receipt: %w", err)
		}
	}
	if g.json() {
		return g.printJSON(struct {
			api.Snapshot
			Path string `json:"path"`
		}{snap, dst})
	}
	fmt.Fprintf(g.io.Out, "snapshot %s of %s (taken %s) written to %s\n  %s, sha256 %s (matches the controller's record)\n",
		snap.ID, snap.Host, snap.TakenAt.Format(time.RFC3339), dst, humanBytes(snap.Size), snap.SHA256)
	if snap.Receipt != "" {
		fmt.Fprintf(g.io.Out, "  the controller's signed receipt: %s\n  check both: cordon snapshot verify %s\n", dst+evidence.ReceiptSuffix, dst)
	} else {
		fmt.Fprintf(g.io.Out, "  check it: cordon snapshot verify %s --agent-key %s\n", dst, snap.AgentKey)
	}
	return nil
}

// VerifyResult is what 'cordon snapshot verify -o json' prints.
type VerifyResult struct {
	Path       string `json:"path"`
	OK         bool   `json:"ok"`
	Error      string `json:"error,omitempty"`
	ErrorPath  string `json:"error_path,omitempty"`
	SnapshotID string `json:"snapshot_id,omitempty"`
	// SignerTrusted is true when the signer was checked against --agent-key
	// or the controller's receipt.
	SignerTrusted bool `json:"signer_trusted"`
	// Receipt is the receipt file checked, if any; ReceivedAt and Controller
	// come from it.
	Receipt    string    `json:"receipt,omitempty"`
	ReceivedAt time.Time `json:"received_at,omitzero"`
	Controller string    `json:"controller_key,omitempty"`
	Host       string    `json:"host,omitempty"`
	Signer     string    `json:"signer,omitempty"`
	Files      int       `json:"files"`
	TakenAt    time.Time `json:"taken_at,omitzero"`
}

func runSnapshotVerify(g *globals, path, agentKey, receiptPath string, noReceipt bool) error {
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
	if noReceipt && receiptPath != "" {
		return usageErr("--receipt and --no-receipt contradict each other")
	}
	// The controller's receipt, next to the bundle unless named.
	var rec *evidence.Receipt
	var recErr error
	if !noReceipt {
		explicit := receiptPath != ""
		if !explicit {
			receiptPath = path + evidence.ReceiptSuffix
		}
		b, err := os.ReadFile(receiptPath)
		switch {
		case err != nil && (explicit || !errors.Is(err, os.ErrNotExist)):
			return fmt.Errorf("receipt: %w", err)
		case err != nil:
			receiptPath = ""
		case g.fingerprint == "":
			return usageErr("%s is the controller's receipt for this bundle: give --controller-fingerprint (or CORDON_CONTROLLER_FINGERPRINT) to check it, or --no-receipt", receiptPath)
		default:
			rec, recErr = evidence.OpenReceipt(b, g.fingerprint)
			if recErr == nil && wantFP == "" {
				// The controller vouches for the agent key it received
				// the bundle from.
				k, err := sshkey.ParseAuthorizedKey(rec.AgentKey)
				if err != nil {
					recErr = fmt.Errorf("%w: agent key: %v", evidence.ErrReceipt, err)
				} else {
					opts.TrustedKeys, wantFP = []ssh.PublicKey{k}, rec.AgentKeyFingerprint
				}
			}
		}
	} else {
		receiptPath = ""
	}
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	h := sha256.New()
	tee := io.TeeReader(f, h)
	var rep *evidence.Report
	var verr error
	if recErr != nil {
		verr = &evidence.VerifyError{Path: filepath.Base(receiptPath), Reason: recErr.Error()}
	} else {
		rep, verr = evidence.Verify(tee, opts)
	}
	if verr == nil {
		io.Copy(io.Discard, tee)
		sum := hex.EncodeToString(h.Sum(nil))
		switch {
		case wantFP != "" && rep.SignerFingerprint != wantFP:
			verr = &evidence.VerifyError{Path: evidence.SignaturePath,
				Reason: fmt.Sprintf("signed by %s, not by the trusted agent key %s", rep.SignerFingerprint, wantFP)}
		case rec != nil:
			if err := rec.Check(sum, rep); err != nil {
				verr = &evidence.VerifyError{Path: filepath.Base(receiptPath), Reason: err.Error()}
			}
		case wantFP == "":
			// Hashes and signature hold, but for a key the bundle names
			// itself: anyone can make such a bundle.
			verr = &evidence.VerifyError{Path: evidence.SignaturePath, Reason: fmt.Sprintf(
				"signed by %s, a key the bundle names itself and nothing vouches for: keep the controller's receipt (%s) next to the bundle "+
					"and give --controller-fingerprint, or give --agent-key with the host's enrolled key ('cordon hosts')",
				rep.SignerFingerprint, filepath.Base(path)+evidence.ReceiptSuffix)}
		}
	}
	res := VerifyResult{Path: path, OK: verr == nil, Receipt: receiptPath}
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
		if rec != nil {
			res.ReceivedAt, res.Controller = rec.ReceivedAt, rec.ControllerKeyFingerprint
		}
	}
	if g.json() {
		if err := g.printJSON(res); err != nil {
			return err
		}
	} else if verr == nil {
		m := rep.Manifest
		fmt.Fprintf(g.io.Out, "OK: %s\n  snapshot %s of host %s, taken %s\n", path, m.SnapshotID, m.Host.Name, m.StartedAt.Format(time.RFC3339Nano))
		switch {
		case rec != nil:
			fmt.Fprintf(g.io.Out, "  receipt: signed by the controller %s: received %s from the agent key %s\n",
				rec.ControllerKeyFingerprint, rec.ReceivedAt.Format(time.RFC3339Nano), rec.AgentKeyFingerprint)
			fmt.Fprintf(g.io.Out, "  signature: valid, namespace %s, by that agent key\n", evidence.Namespace)
		default:
			fmt.Fprintf(g.io.Out, "  signature: valid, namespace %s, by the trusted agent key %s\n", evidence.Namespace, rep.SignerFingerprint)
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
