package evidence

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
)

func receiptKey(t *testing.T) ssh.Signer {
	t.Helper()
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	s, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func sampleReceipt() Receipt {
	return Receipt{SnapshotID: "snp-1", OrderID: "ord-1", Host: "pay-db-01", BundleSHA256: strings.Repeat("ab", 32),
		BundleSize: 1234, ReceivedAt: time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC), AgentKey: "ssh-ed25519 AAAA",
		AgentKeyFingerprint: "SHA256:agent", Verified: true}
}

func TestReceiptRoundTrip(t *testing.T) {
	ctl := receiptKey(t)
	file, err := SignReceipt(sampleReceipt(), ctl)
	if err != nil {
		t.Fatal(err)
	}
	r, err := OpenReceipt(file, ssh.FingerprintSHA256(ctl.PublicKey()))
	if err != nil {
		t.Fatal(err)
	}
	if r.SnapshotID != "snp-1" || r.BundleSize != 1234 || !r.Verified || r.ControllerKeyFingerprint != ssh.FingerprintSHA256(ctl.PublicKey()) {
		t.Errorf("round trip: %+v", r)
	}
}

func TestReceiptRefusals(t *testing.T) {
	ctl, other := receiptKey(t), receiptKey(t)
	file, _ := SignReceipt(sampleReceipt(), ctl)
	fp := ssh.FingerprintSHA256(ctl.PublicKey())
	var rf ReceiptFile
	json.Unmarshal(file, &rf)
	edit := func(f func(*ReceiptFile)) []byte {
		c := rf
		f(&c)
		b, _ := json.Marshal(c)
		return b
	}
	forgedByOther, _ := SignReceipt(sampleReceipt(), other)
	for name, tc := range map[string]struct {
		file []byte
		fp   string
	}{
		"other controller": {forgedByOther, fp},
		"wrong pin":        {file, ssh.FingerprintSHA256(other.PublicKey())},
		"edited receipt": {edit(func(c *ReceiptFile) {
			c.Receipt = strings.Replace(c.Receipt, `"bundle_size":1234`, `"bundle_size":1235`, 1)
		}), fp},
		"no signature":  {edit(func(c *ReceiptFile) { c.Signature = "" }), fp},
		"unknown field": {[]byte(`{"receipt":"{}","signature":"","x":1}`), fp},
		"not json":      {[]byte("nope"), fp},
		"too large":     {bytes.Repeat([]byte(" "), MaxReceiptSize+1), fp},
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := OpenReceipt(tc.file, tc.fp); !errors.Is(err, ErrReceipt) {
				t.Fatalf("got %v, want ErrReceipt", err)
			}
		})
	}
}

// TestReceiptStockOpenSSH checks a receipt with ssh-keygen as its doc
// comment says.
func TestReceiptStockOpenSSH(t *testing.T) {
	if _, err := exec.LookPath("ssh-keygen"); err != nil {
		t.Skip("ssh-keygen not installed")
	}
	ctl := receiptKey(t)
	file, _ := SignReceipt(sampleReceipt(), ctl)
	var rf ReceiptFile
	json.Unmarshal(file, &rf)
	dir := t.TempDir()
	allowed := `controller namespaces="` + ReceiptNamespace + `" ` + strings.TrimSpace(string(ssh.MarshalAuthorizedKey(ctl.PublicKey())))
	os.WriteFile(filepath.Join(dir, "allowed"), []byte(allowed+"\n"), 0o600)
	os.WriteFile(filepath.Join(dir, "receipt.sig"), []byte(rf.Signature), 0o600)
	cmd := exec.Command("ssh-keygen", "-Y", "verify", "-f", filepath.Join(dir, "allowed"), "-I", "controller", "-n", ReceiptNamespace,
		"-s", filepath.Join(dir, "receipt.sig"))
	cmd.Stdin = strings.NewReader(rf.Receipt)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("ssh-keygen refused the receipt: %v\n%s", err, out)
	}
}
