package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cordon-ir/cordon/controller/api"
	"github.com/cordon-ir/cordon/internal/stage"
	"github.com/cordon-ir/cordon/pkg/evidence"
	"github.com/cordon-ir/cordon/pkg/sshkey"
)

// TestSnapshotTakeAndCustody: a snapshot without isolation, the
// controller's signed receipt checked by 'cordon snapshot verify', each
// tampering named, and the chain of custody listing every step.
func TestSnapshotTakeAndCustody(t *testing.T) {
	w := newWorld(t)
	w.restoreHostRules()
	before := w.rules(w.Host)
	w.startAgent(stage.AgentOptions{Token: w.Token})
	w.waitOnline()

	out := w.mustCordon("snapshot", "take", "host", hostName, "--reason", "triage: odd beacon", "--wait", "-o", "json")
	var ord api.Order
	if err := json.Unmarshal([]byte(out), &ord); err != nil {
		t.Fatal(err)
	}
	if ord.Kind != "snapshot" || ord.State != "done" || !ord.SnapshotStored || !ord.SnapshotVerified {
		t.Fatalf("snapshot order: %+v", ord)
	}
	if w.rules(w.Host) != before {
		t.Error("a snapshot order changed the host's rules")
	}
	if h, _ := w.HostState(); h.State != "released" {
		t.Errorf("a snapshot order changed the host's state to %q", h.State)
	}

	dir := t.TempDir()
	out = w.mustCordon("snapshot", "download", ord.SnapshotID, "--out", dir)
	bundle := strings.Fields(out[strings.Index(out, "written to ")+len("written to "):])[0]
	receipt := bundle + evidence.ReceiptSuffix
	if _, err := os.Stat(receipt); err != nil {
		t.Fatalf("download wrote no receipt: %v\n%s", err, out)
	}
	// With the receipt and the pinned controller key, the signer is
	// trusted without --agent-key.
	out = w.mustCordon("snapshot", "verify", bundle)
	if !strings.Contains(out, "receipt: signed by the controller "+w.Fingerprint) || strings.Contains(out, "WARNING") {
		t.Errorf("verify with the receipt:\n%s", out)
	}

	// Tamper with the receipt, swap in another bundle's receipt, re-sign
	// the bundle with another key: each is named.
	check := func(name, bundlePath, receiptPath, want string) {
		t.Helper()
		_, errOut, code := w.Cordon("snapshot", "verify", bundlePath, "--receipt", receiptPath)
		if code == 0 || !strings.Contains(errOut, want) {
			t.Errorf("%s: exit %d, stderr %q; want failure mentioning %q", name, code, errOut, want)
		}
	}
	rb, _ := os.ReadFile(receipt)
	bad := filepath.Join(t.TempDir(), "bad.receipt.json")
	os.WriteFile(bad, []byte(strings.Replace(string(rb), `verified_at_receipt\":true`, `verified_at_receipt\":false`, 1)), 0o600)
	check("edited receipt", bundle, bad, "receipt")
	// A receipt by which the controller says the bundle did not verify on
	// arrival: a genuine signature, still a failure.
	unverified := filepath.Join(t.TempDir(), "unverified.receipt.json")
	os.WriteFile(unverified, signedReceipt(t, w, rb, func(r *evidence.Receipt) { r.Verified, r.VerifyError = false, "bad signature" }), 0o600)
	check("receipt saying the bundle did not verify", bundle, unverified, "did not verify: bad signature")
	_, errOut, code := w.Cordon("snapshot", "verify", bundle, "--no-receipt", "--receipt", receipt)
	if code != 2 {
		t.Errorf("--no-receipt with --receipt: exit %d (%s), want 2", code, errOut)
	}

	second := w.mustCordon("snapshot", "take", "host", hostName, "--reason", "second", "--wait", "-o", "json")
	var ord2 api.Order
	json.Unmarshal([]byte(second), &ord2)
	dir2 := t.TempDir()
	w.mustCordon("snapshot", "download", ord2.SnapshotID, "--out", dir2)
	entries, _ := os.ReadDir(dir2)
	var receipt2 string
	for _, e := range entries {
		if strings.HasSuffix(e.Name(), evidence.ReceiptSuffix) {
			receipt2 = filepath.Join(dir2, e.Name())
		}
	}
	check("another bundle's receipt", bundle, receipt2, "it is for bundle sha256")

	forged := filepath.Join(t.TempDir(), "forged.tar.gz")
	forge(t, bundle, forged)
	check("bundle re-signed by another key", forged, receipt, "is not a trusted key")

	// Custody: received from the agent's key, downloaded by the admin.
	var cust []api.CustodyEntry
	if err := json.Unmarshal([]byte(w.mustCordon("snapshot", "custody", ord.SnapshotID, "-o", "json")), &cust); err != nil {
		t.Fatal(err)
	}
	h, _ := w.HostState()
	if len(cust) != 3 || cust[0].Event != "received" || cust[0].ActorKey != h.Fingerprint ||
		!strings.Contains(cust[0].Detail, "verified at receipt") || cust[1].Event != "download-started" ||
		cust[2].Event != "downloaded" || cust[2].Actor != "admin" || cust[0].SHA256 != ord.SnapshotSHA256 {
		t.Errorf("custody = %+v", cust)
	}
}

// signedReceipt re-signs a receipt file's receipt, changed by edit, with
// the controller's real host key, as a controller that recorded a failed
// verification would.
func signedReceipt(t *testing.T, w *world, file []byte, edit func(*evidence.Receipt)) []byte {
	t.Helper()
	var rf evidence.ReceiptFile
	if err := json.Unmarshal(file, &rf); err != nil {
		t.Fatal(err)
	}
	var r evidence.Receipt
	if err := json.Unmarshal([]byte(rf.Receipt), &r); err != nil {
		t.Fatal(err)
	}
	edit(&r)
	key, err := sshkey.Load(filepath.Join(w.DataDir, "host_ed25519"))
	if err != nil {
		t.Fatal(err)
	}
	out, err := evidence.SignReceipt(r, key)
	if err != nil {
		t.Fatal(err)
	}
	return out
}
