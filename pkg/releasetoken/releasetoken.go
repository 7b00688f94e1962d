// Package releasetoken is the break-glass release of an isolated host when
// its controller is gone: the controller signs a token that names one host
// (and its machine-id) and expires soon, an operator carries it to the
// host's console, and `cordon-agent release --local --token FILE` removes
// Cordon's rules only if the token is signed by the controller key the
// agent pins. Nothing else can release a host without the controller.
//
// A token file is JSON: the token's exact signed text and an armored SSHSIG
// signature of it (namespace cordon-release, PROTOCOL.sshsig), so stock
// OpenSSH can check it too:
//
//	jq -j .token t.json > token.json; jq -r .signature t.json > token.sig
//	ssh-keygen -Y verify -f allowed_signers -I controller -n cordon-release -s token.sig < token.json
package releasetoken

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/cordon-ir/cordon/pkg/sshkey"
)

// Namespace is the SSHSIG namespace of release tokens.
const Namespace = "cordon-release"

// MaxTTL bounds a token's life: a token is a way past isolation, so it
// should outlive its purpose by as little as possible.
const MaxTTL = 24 * time.Hour

// MaxFileSize bounds a token file, in bytes.
const MaxFileSize = 16 << 10

// Token is the controller's signed permission to release one host locally.
type Token struct {
	FormatVersion int    `json:"format_version"` // 1
	ID            string `json:"id"`             // rtk-<hex>, for the audit trail
	// Host is the host's Cordon name; MachineID its machine-id
	// (machine-id(5)) as its agent last reported it. The agent refuses a
	// token for another name or machine, or one without a machine-id.
	Host      string `json:"host"`
	MachineID string `json:"machine_id,omitempty"`
	// IssuedAt and NotAfter are controller clock, UTC.
	IssuedAt time.Time `json:"issued_at"`
	NotAfter time.Time `json:"not_after"`
	// IssuedBy is the operator who asked for it (name and key
	// fingerprint); Reason says why.
	IssuedBy string `json:"issued_by"`
	Reason   string `json:"reason"`
	// ControllerKey is the signing key (authorized_keys format).
	ControllerKey            string `json:"controller_key"`
	ControllerKeyFingerprint string `json:"controller_key_fingerprint"`
}

// File is the content of a token file.
type File struct {
	Token     string `json:"token"`
	Signature string `json:"signature"`
}

// NewID returns a new token id.
func NewID() string {
	b := make([]byte, 8)
	rand.Read(b)
	return "rtk-" + hex.EncodeToString(b)
}

// Sign fills in the version and controller key fields of t, signs it with
// the controller's key and returns the token file's bytes.
func Sign(t Token, signer ssh.Signer) ([]byte, error) {
	t.FormatVersion = 1
	t.ControllerKey = strings.TrimSpace(string(ssh.MarshalAuthorizedKey(signer.PublicKey())))
	t.ControllerKeyFingerprint = ssh.FingerprintSHA256(signer.PublicKey())
	body, err := json.Marshal(t)
	if err != nil {
		return nil, err
	}
	sig, err := sshkey.SignArmored(body, signer, Namespace)
	if err != nil {
		return nil, fmt.Errorf("release token: %w", err)
	}
	return json.MarshalIndent(File{Token: string(body), Signature: string(sig)}, "", "  ")
}

// ErrInvalid marks a token that does not permit the release.
var ErrInvalid = errors.New("release token refused")

// Verify checks a token file for this host: signed (namespace
// cordon-release) by the controller key whose fingerprint the agent pins,
// naming host and machineID, and valid at now
// (a minute of clock skew allowed either way). Every refusal wraps
// ErrInvalid and says why.
func Verify(file []byte, pinnedFingerprint, host, machineID string, now time.Time) (Token, error) {
	var t Token
	fail := func(format string, args ...any) (Token, error) {
		return t, fmt.Errorf("%w: "+format, append([]any{ErrInvalid}, args...)...)
	}
	if len(file) > MaxFileSize {
		return fail("the file is %d bytes, at most %d", len(file), MaxFileSize)
	}
	var f File
	dec := json.NewDecoder(bytes.NewReader(file))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&f); err != nil {
		return fail("not a token file: %v", err)
	}
	dec = json.NewDecoder(strings.NewReader(f.Token))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&t); err != nil {
		return fail("the token is not valid JSON: %v", err)
	}
	if t.FormatVersion != 1 {
		return fail("format version %d, want 1", t.FormatVersion)
	}
	key, _, _, _, err := ssh.ParseAuthorizedKey([]byte(t.ControllerKey))
	if err != nil {
		return fail("controller key: %v", err)
	}
	if fp := ssh.FingerprintSHA256(key); fp != pinnedFingerprint {
		return fail("signed by the key %s, but this agent trusts only the controller key %s", fp, pinnedFingerprint)
	}
	if err := sshkey.VerifyArmored([]byte(f.Token), []byte(f.Signature), key, Namespace); err != nil {
		return fail("the signature does not verify: %v", err)
	}
	if t.Host != host {
		return fail("the token is for host %q; this host is %q", t.Host, host)
	}
	if t.MachineID == "" {
		return fail("the token names no machine-id; it could release any machine with this name")
	}
	if t.MachineID != machineID {
		return fail("the token is for machine-id %s; this machine is %s", t.MachineID, machineID)
	}
	const skew = time.Minute
	if now.Before(t.IssuedAt.Add(-skew)) {
		return fail("issued at %s, in this host's future (is its clock right?)", t.IssuedAt.Format(time.RFC3339))
	}
	if now.After(t.NotAfter.Add(skew)) {
		return fail("expired at %s", t.NotAfter.Format(time.RFC3339))
	}
	if t.NotAfter.Sub(t.IssuedAt) > MaxTTL {
		return fail("valid for %v, longer than %v", t.NotAfter.Sub(t.IssuedAt), MaxTTL)
	}
	return t, nil
}
