// Package sshkey loads and creates the ed25519 SSH keys Cordon identifies
// agents, operators and the controller by, in OpenSSH's file formats, so
// that stock tools (ssh-keygen -l, ssh-keygen -Y verify) read them too.
package sshkey

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/subtle"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/crypto/ssh"
)

// Create makes a new ed25519 key and writes it to path (OpenSSH private key
// format, mode 0600) and path+".pub" (authorized_keys format, mode 0644). It
// refuses to overwrite an existing file. comment goes into both files.
func Create(path, comment string) (ssh.Signer, error) {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate key: %w", err)
	}
	block, err := ssh.MarshalPrivateKey(priv, comment)
	if err != nil {
		return nil, fmt.Errorf("encode key: %w", err)
	}
	signer, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, err
	}
	if err := writeNew(path, pem.EncodeToMemory(block), 0o600); err != nil {
		return nil, err
	}
	pub := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(signer.PublicKey())))
	if comment != "" {
		pub += " " + comment
	}
	if err := writeNew(path+".pub", []byte(pub+"\n"), 0o644); err != nil {
		return nil, err
	}
	return signer, nil
}

// writeNew writes data to a file that must not exist yet, and syncs it.
func writeNew(path string, data []byte, mode os.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// Load reads a private key file (OpenSSH or PEM format, unencrypted). A key
// file readable by group or others is refused, as OpenSSH does.
func Load(path string) (ssh.Signer, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if st.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("key file %s has mode %04o: it must not be readable by group or others (chmod 600)", path, st.Mode().Perm())
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	s, err := ssh.ParsePrivateKey(b)
	if err != nil {
		var missing *ssh.PassphraseMissingError
		if errors.As(err, &missing) {
			return nil, fmt.Errorf("key file %s is encrypted; use ssh-agent for encrypted keys", path)
		}
		return nil, fmt.Errorf("key file %s: %w", path, err)
	}
	return s, nil
}

// LoadOrCreate loads the key at path, creating it first if the file does not
// exist. created reports whether it did.
func LoadOrCreate(path, comment string) (s ssh.Signer, created bool, err error) {
	s, err = Load(path)
	if err == nil {
		return s, false, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return nil, false, err
	}
	s, err = Create(path, comment)
	return s, err == nil, err
}

// Fingerprint returns the key's SHA256 fingerprint as ssh-keygen -l prints
// it: "SHA256:" and unpadded base64.
func Fingerprint(k ssh.PublicKey) string { return ssh.FingerprintSHA256(k) }

// AuthorizedKey returns k in authorized_keys format without the trailing
// newline ("ssh-ed25519 AAAA…").
func AuthorizedKey(k ssh.PublicKey) string {
	return strings.TrimSpace(string(ssh.MarshalAuthorizedKey(k)))
}

// ParseAuthorizedKey parses one public key in authorized_keys format.
func ParseAuthorizedKey(s string) (ssh.PublicKey, error) {
	k, _, _, _, err := ssh.ParseAuthorizedKey([]byte(s))
	if err != nil {
		return nil, fmt.Errorf("public key: %w", err)
	}
	return k, nil
}

// ValidFingerprint reports whether s looks like a SHA256 key fingerprint.
func ValidFingerprint(s string) bool {
	rest, ok := strings.CutPrefix(s, "SHA256:")
	return ok && len(rest) == 43
}

// ErrHostKeyMismatch is returned (wrapped) by a Pin callback when the server
// presents a host key other than the pinned one.
var ErrHostKeyMismatch = errors.New("controller host key does not match the pinned fingerprint")

// Pin returns a host key callback that accepts only the key whose SHA256
// fingerprint is fp. It runs during key exchange, so a client using it
// sends nothing else (no key, no token) to a server that fails it.
func Pin(fp string) ssh.HostKeyCallback {
	return func(hostname string, remote net.Addr, key ssh.PublicKey) error {
		got := Fingerprint(key)
		if subtle.ConstantTimeCompare([]byte(got), []byte(fp)) != 1 {
			return fmt.Errorf("%w: %s presented %s, pinned %s; refusing to connect (wrong controller address, or someone in the middle)",
				ErrHostKeyMismatch, remote, got, fp)
		}
		return nil
	}
}
