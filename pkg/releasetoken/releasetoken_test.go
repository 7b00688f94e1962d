package releasetoken

import (
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

func newSigner(t *testing.T) ssh.Signer {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	s, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestSignVerify(t *testing.T) {
	ctl, other := newSigner(t), newSigner(t)
	fp := ssh.FingerprintSHA256(ctl.PublicKey())
	now := time.Date(2026, 11, 29, 10, 0, 0, 0, time.UTC)
	base := Token{ID: NewID(), Host: "pay-db-01", MachineID: "3d12ab", IssuedAt: now, NotAfter: now.Add(time.Hour),
		IssuedBy: "alice (SHA256:x)", Reason: "controller lost in the fire"}
	sign := func(t *testing.T, tok Token, s ssh.Signer) []byte {
		b, err := Sign(tok, s)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	good := sign(t, base, ctl)
	got, err := Verify(good, fp, "pay-db-01", "3d12ab", now.Add(10*time.Minute))
	if err != nil || got.ID != base.ID || got.ControllerKeyFingerprint != fp {
		t.Fatalf("Verify(good) = %+v, %v", got, err)
	}
	tamper := func(edit func(*File)) []byte {
		var f File
		json.Unmarshal(good, &f)
		edit(&f)
		b, _ := json.Marshal(f)
		return b
	}
	long := base
	long.NotAfter = now.Add(MaxTTL + time.Hour)
	noMachine := base
	noMachine.MachineID = ""
	cases := []struct {
		name      string
		file      []byte
		host, mid string
		at        time.Time
		want      string
	}{
		{"another controller's key", sign(t, base, other), "pay-db-01", "3d12ab", now, "this agent trusts only the controller key"},
		{"text changed after signing", tamper(func(f *File) { f.Token = strings.Replace(f.Token, "pay-db-01", "pay-db-02", 1) }), "pay-db-02", "3d12ab", now, "does not verify"},
		{"another host", good, "pay-db-02", "3d12ab", now, `the token is for host "pay-db-01"`},
		{"another machine", good, "pay-db-01", "ffff", now, "the token is for machine-id 3d12ab"},
		{"expired", good, "pay-db-01", "3d12ab", now.Add(2 * time.Hour), "expired at"},
		{"from the future", good, "pay-db-01", "3d12ab", now.Add(-time.Hour), "in this host's future"},
		{"too long", sign(t, long, ctl), "pay-db-01", "3d12ab", now, "longer than"},
		{"garbage", []byte("{"), "pay-db-01", "3d12ab", now, "not a token file"},
		{"unknown field", []byte(`{"token":"","signature":"","x":1}`), "pay-db-01", "3d12ab", now, "unknown field"},
		{"signature missing", tamper(func(f *File) { f.Signature = "" }), "pay-db-01", "3d12ab", now, "signature"},
	}
	for _, tc := range cases {
		_, err := Verify(tc.file, fp, tc.host, tc.mid, tc.at)
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: Verify = %v, want ErrInvalid with %q", tc.name, err, tc.want)
		}
	}
	// A token that names no machine would release any machine with the
	// name.
	if _, err := Verify(sign(t, noMachine, ctl), fp, "pay-db-01", "anything", now); !errors.Is(err, ErrInvalid) {
		t.Errorf("token without machine-id: %v", err)
	}

	// Stock OpenSSH agrees.
	if _, err := exec.LookPath("ssh-keygen"); err != nil {
		t.Skip("ssh-keygen not installed")
	}
	dir := t.TempDir()
	var f File
	json.Unmarshal(good, &f)
	os.WriteFile(filepath.Join(dir, "token.json"), []byte(f.Token), 0o600)
	os.WriteFile(filepath.Join(dir, "token.sig"), []byte(f.Signature), 0o600)
	os.WriteFile(filepath.Join(dir, "allowed"), []byte("controller namespaces=\"cordon-release\" "+string(ssh.MarshalAuthorizedKey(ctl.PublicKey()))), 0o600)
	cmd := exec.Command("ssh-keygen", "-Y", "verify", "-f", "allowed", "-I", "controller", "-n", Namespace, "-s", "token.sig")
	cmd.Dir = dir
	cmd.Stdin, _ = os.Open(filepath.Join(dir, "token.json"))
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("ssh-keygen -Y verify: %v\n%s", err, out)
	}
}
