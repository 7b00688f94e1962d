package evidence

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/cordon-ir/cordon/pkg/sshkey"
)

// ReceiptNamespace is the SSHSIG namespace of controller receipts.
const ReceiptNamespace = "cordon-receipt"

// ReceiptSuffix is appended to a bundle's file name for its receipt file.
const ReceiptSuffix = ".receipt.json"

// Receipt is the controller's signed statement that it received a bundle:
// which bundle (by SHA-256), for which snapshot, order and host, when, from
// which enrolled agent key, and whether the bundle verified against that key
// on arrival. It anchors the chain of custody: whoever trusts the
// controller's host key can trust the agent key named here.
type Receipt struct {
	FormatVersion int       `json:"format_version"` // 1
	SnapshotID    string    `json:"snapshot_id"`
	OrderID       string    `json:"order_id,omitempty"`
	Host          string    `json:"host"`
	BundleSHA256  string    `json:"bundle_sha256"` // hex
	BundleSize    int64     `json:"bundle_size"`   // bytes
	ReceivedAt    time.Time `json:"received_at"`   // controller clock, UTC
	// AgentKey is the host's enrolled key (authorized_keys format) that
	// sent the bundle.
	AgentKey            string `json:"agent_key"`
	AgentKeyFingerprint string `json:"agent_key_fingerprint"`
	// Verified reports whether the bundle's manifest signature and hashes
	// held against AgentKey on arrival; VerifyError says why not.
	Verified    bool   `json:"verified_at_receipt"`
	VerifyError string `json:"verify_error,omitempty"`
	// ControllerKey is the controller's host key (authorized_keys format)
	// that signs the receipt.
	ControllerKey            string `json:"controller_key"`
	ControllerKeyFingerprint string `json:"controller_key_fingerprint"`
}

// ReceiptFile is the content of a receipt file: the receipt's exact signed
// JSON text and its armored SSHSIG signature (namespace cordon-receipt), so
// that stock OpenSSH can check it:
//
//	jq -j .receipt r.json > receipt.json; jq -r .signature r.json > receipt.sig
//	ssh-keygen -Y verify -f allowed_signers -I controller -n cordon-receipt -s receipt.sig < receipt.json
type ReceiptFile struct {
	Receipt   string `json:"receipt"`
	Signature string `json:"signature"`
}

// SignReceipt fills in the controller key fields of r, signs it with the
// controller's key and returns the receipt file's bytes.
func SignReceipt(r Receipt, signer ssh.Signer) ([]byte, error) {
	r.FormatVersion = 1
	r.ControllerKey = strings.TrimSpace(string(ssh.MarshalAuthorizedKey(signer.PublicKey())))
	r.ControllerKeyFingerprint = ssh.FingerprintSHA256(signer.PublicKey())
	body, err := json.Marshal(r)
	if err != nil {
		return nil, err
	}
	sig, err := sshkey.SignArmored(body, signer, ReceiptNamespace)
	if err != nil {
		return nil, fmt.Errorf("receipt: %w", err)
	}
	return json.MarshalIndent(ReceiptFile{Receipt: string(body), Signature: string(sig)}, "", "  ")
}

// MaxReceiptSize bounds a receipt file, in bytes.
const MaxReceiptSize = 64 << 10

// ErrReceipt marks a receipt that does not hold.
var ErrReceipt = errors.New("controller receipt does not hold")

// OpenReceipt checks a receipt file: its signature in namespace
// cordon-receipt by the key it names, and that key's fingerprint against
// controllerFP (the pinned controller fingerprint, "SHA256:…"). It returns
// the receipt; errors wrap ErrReceipt.
func OpenReceipt(file []byte, controllerFP string) (*Receipt, error) {
	if len(file) > MaxReceiptSize {
		return nil, fmt.Errorf("%w: %d bytes, at most %d", ErrReceipt, len(file), MaxReceiptSize)
	}
	var rf ReceiptFile
	dec := json.NewDecoder(bytes.NewReader(file))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&rf); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrReceipt, err)
	}
	var r Receipt
	dec = json.NewDecoder(strings.NewReader(rf.Receipt))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&r); err != nil {
		return nil, fmt.Errorf("%w: receipt: %v", ErrReceipt, err)
	}
	if r.FormatVersion != 1 {
		return nil, fmt.Errorf("%w: format version %d", ErrReceipt, r.FormatVersion)
	}
	key, _, _, _, err := ssh.ParseAuthorizedKey([]byte(r.ControllerKey))
	if err != nil {
		return nil, fmt.Errorf("%w: controller key: %v", ErrReceipt, err)
	}
	if fp := ssh.FingerprintSHA256(key); fp != controllerFP {
		return nil, fmt.Errorf("%w: signed by controller key %s, not the pinned %s", ErrReceipt, fp, controllerFP)
	}
	if err := sshkey.VerifyArmored([]byte(rf.Receipt), []byte(rf.Signature), key, ReceiptNamespace); err != nil {
		return nil, fmt.Errorf("%w: signature: %v", ErrReceipt, err)
	}
	return &r, nil
}

// Check compares the receipt with a bundle's verification report and its
// SHA-256 (hex): same bundle, snapshot, order and host, signed by the agent
// key the controller received it from, and verified by the controller on
// arrival.
func (r *Receipt) Check(bundleSHA256 string, rep *Report) error {
	m := rep.Manifest
	switch {
	case r.BundleSHA256 != bundleSHA256:
		return fmt.Errorf("%w: it is for bundle sha256 %s, this bundle is %s", ErrReceipt, r.BundleSHA256, bundleSHA256)
	case r.SnapshotID != m.SnapshotID:
		return fmt.Errorf("%w: it is for snapshot %s, the manifest names %s", ErrReceipt, r.SnapshotID, m.SnapshotID)
	case r.OrderID != m.OrderID:
		return fmt.Errorf("%w: it is for order %q, the manifest names %q", ErrReceipt, r.OrderID, m.OrderID)
	case r.Host != m.Host.Name:
		return fmt.Errorf("%w: it is for host %s, the manifest names %s", ErrReceipt, r.Host, m.Host.Name)
	case r.AgentKeyFingerprint != rep.SignerFingerprint:
		return fmt.Errorf("%w: the controller received it from agent key %s, the manifest is signed by %s", ErrReceipt, r.AgentKeyFingerprint, rep.SignerFingerprint)
	case !r.Verified:
		return fmt.Errorf("%w: the controller found on arrival that the bundle did not verify: %s", ErrReceipt, r.VerifyError)
	}
	return nil
}
