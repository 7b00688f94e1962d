package evidence

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"regexp"
	"strings"

	"github.com/hiddeco/sshsig"
	"golang.org/x/crypto/ssh"
)

// Limits Verify applies when VerifyOptions leaves them zero.
const (
	DefaultMaxEntries   = 100_000
	DefaultMaxFileSize  = 2 << 30 // bytes, uncompressed, per file
	DefaultMaxTotalSize = 4 << 30 // bytes, uncompressed, all files
)

// Fixed limits on the two entries Verify holds in memory.
const (
	MaxManifestSize  = 16 << 20 // bytes
	MaxSignatureSize = 64 << 10 // bytes
)

// maxTrailer bounds the zero padding read after the tar's end marker.
const maxTrailer = 1 << 20

// VerifyOptions tunes Verify. The zero value checks everything with the
// default limits and accepts any signer whose key the manifest names.
type VerifyOptions struct {
	// TrustedKeys, when not empty, are the only keys whose signatures are
	// accepted (for example the agent keys in the controller's inventory).
	TrustedKeys []ssh.PublicKey
	// MaxEntries bounds the number of tar entries (DefaultMaxEntries).
	MaxEntries int
	// MaxFileSize bounds one entry's uncompressed size in bytes
	// (DefaultMaxFileSize).
	MaxFileSize int64
	// MaxTotalSize bounds the sum of all entries' uncompressed sizes in
	// bytes (DefaultMaxTotalSize).
	MaxTotalSize int64
}

// Report is what a successful Verify found.
type Report struct {
	// Manifest is the verified manifest.
	Manifest Manifest
	// SignerFingerprint is the signing key's OpenSSH SHA-256 fingerprint
	// ("SHA256:…").
	SignerFingerprint string
	// Files is the number of artifact files whose size and SHA-256 were
	// checked against the manifest (manifest.json and its signature are not
	// counted).
	Files int
}

// VerifyError is the error Verify returns when a bundle does not hold. Path
// is the bundle entry at fault ("" for the bundle as a whole) and Reason
// says what is wrong with it.
type VerifyError struct {
	// Path is the bundle entry at fault, "" for the bundle as a whole.
	Path string
	// Reason says what does not hold.
	Reason string
}

// Error returns "<path>: <reason>", or "bundle: <reason>" when Path is empty.
func (e *VerifyError) Error() string {
	if e.Path == "" {
		return "bundle: " + e.Reason
	}
	return e.Path + ": " + e.Reason
}

func verr(path, format string, args ...any) *VerifyError {
	return &VerifyError{Path: path, Reason: fmt.Sprintf(format, args...)}
}

// fileSum is what Verify learned of one tar entry.
type fileSum struct {
	size  int64
	sha   string
	lines int64
}

var sha256Hex = regexp.MustCompile(`^[0-9a-f]{64}$`)

// Verify reads a bundle from r and checks it offline. The checks run in this
// order and the first that fails is returned as a *VerifyError:
//
//  1. the stream is gzip (CRC and length checked) holding a tar; entries are
//     regular files with safe, unique paths (relative, clean, no ".."),
//     within the limits of opts; nothing but zero padding follows the tar;
//  2. manifest.json exists and decodes strictly (unknown fields or trailing
//     data are errors) with format_version 1 and an ed25519 agent_key;
//  3. manifest.json.sig is an armored SSHSIG (PROTOCOL.sshsig) in namespace
//     "cordon-evidence" by exactly the key in agent_key, valid over the
//     manifest.json bytes; agent_key_fingerprint matches agent_key;
//  4. if opts.TrustedKeys is not empty, the signer is one of them;
//  5. the manifest's artifact list is well formed (safe unique paths,
//     64-hex sha256, sizes and counts not negative);
//  6. each listed artifact, in manifest order, exists with the listed size,
//     SHA-256 and, for .jsonl files, line count;
//  7. no entry exists that the manifest does not list.
//
// Verify streams: it hashes artifacts as it reads them and holds only
// manifest.json and its signature in memory, so memory use is bounded
// whatever the input.
func Verify(r io.Reader, opts VerifyOptions) (*Report, error) {
	if opts.MaxEntries <= 0 {
		opts.MaxEntries = DefaultMaxEntries
	}
	if opts.MaxFileSize <= 0 {
		opts.MaxFileSize = DefaultMaxFileSize
	}
	if opts.MaxTotalSize <= 0 {
		opts.MaxTotalSize = DefaultMaxTotalSize
	}

	// 1. Container.
	zr, err := gzip.NewReader(r)
	if err != nil {
		return nil, verr("", "not a gzip stream: %v", err)
	}
	tr := tar.NewReader(zr)
	files := map[string]fileSum{}
	var order []string
	var manifestBytes, sigBytes []byte
	var total int64
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, streamErr("", err)
		}
		if len(order) >= opts.MaxEntries {
			return nil, verr("", "more than %d entries", opts.MaxEntries)
		}
		name := hdr.Name
		if hdr.Typeflag != tar.TypeReg {
			return nil, verr(name, "not a regular file (tar type %q)", hdr.Typeflag)
		}
		if err := checkPath(name); err != nil {
			return nil, verr(name, "unsafe path: %v", err)
		}
		if _, dup := files[name]; dup {
			return nil, verr(name, "duplicate entry")
		}
		if hdr.Size > opts.MaxFileSize {
			return nil, verr(name, "size %d bytes exceeds the limit of %d", hdr.Size, opts.MaxFileSize)
		}
		if total += hdr.Size; total > opts.MaxTotalSize {
			return nil, verr(name, "bundle exceeds the limit of %d bytes uncompressed", opts.MaxTotalSize)
		}
		var fs fileSum
		switch name {
		case ManifestPath, SignaturePath:
			limit := int64(MaxManifestSize)
			if name == SignaturePath {
				limit = MaxSignatureSize
			}
			if hdr.Size > limit {
				return nil, verr(name, "size %d bytes exceeds the limit of %d", hdr.Size, limit)
			}
			b, err := io.ReadAll(tr)
			if err != nil {
				return nil, streamErr(name, err)
			}
			if name == ManifestPath {
				manifestBytes = b
			} else {
				sigBytes = b
			}
			sum := sha256.Sum256(b)
			fs = fileSum{size: int64(len(b)), sha: hex.EncodeToString(sum[:])}
		default:
			lc := &lineCountHash{h: sha256.New()}
			n, err := io.Copy(lc, tr)
			if err != nil {
				return nil, streamErr(name, err)
			}
			fs = fileSum{size: n, sha: hex.EncodeToString(lc.h.Sum(nil)), lines: lc.lines}
		}
		files[name] = fs
		order = append(order, name)
	}
	// Read what follows the tar's end marker to the end of the gzip
	// stream, so that the gzip CRC and length are checked and nothing is
	// hidden after the archive.
	n, err := io.Copy(zeroChecker{}, io.LimitReader(zr, maxTrailer+1))
	if err != nil {
		if errors.Is(err, errNonZero) {
			return nil, verr("", "data after the end of the tar archive")
		}
		if errors.Is(err, io.ErrUnexpectedEOF) {
			return nil, verr("", "truncated, or followed by data that is not gzip (%v)", err)
		}
		return nil, streamErr("", err)
	}
	if n > maxTrailer {
		return nil, verr("", "more than %d bytes of padding after the tar archive", maxTrailer)
	}

	// 2. Manifest.
	if manifestBytes == nil {
		return nil, verr(ManifestPath, "missing")
	}
	var m Manifest
	dec := json.NewDecoder(bytes.NewReader(manifestBytes))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&m); err != nil {
		return nil, verr(ManifestPath, "invalid JSON: %v", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, verr(ManifestPath, "invalid JSON: data after the manifest object")
	}
	if m.FormatVersion != FormatVersion {
		return nil, verr(ManifestPath, "format_version %d, this verifier reads %d", m.FormatVersion, FormatVersion)
	}
	agentKey, _, _, rest, err := ssh.ParseAuthorizedKey([]byte(m.AgentKey))
	if err != nil {
		return nil, verr(ManifestPath, "agent_key: %v", err)
	}
	if len(bytes.TrimSpace(rest)) != 0 || m.AgentKey != strings.TrimSpace(string(ssh.MarshalAuthorizedKey(agentKey))) {
		return nil, verr(ManifestPath, "agent_key is not one key in authorized_keys form without options or comment")
	}
	if agentKey.Type() != ssh.KeyAlgoED25519 {
		return nil, verr(ManifestPath, "agent_key is %s, format version %d needs %s", agentKey.Type(), FormatVersion, ssh.KeyAlgoED25519)
	}

	// 3. Signature.
	if sigBytes == nil {
		return nil, verr(SignaturePath, "missing")
	}
	sig, err := sshsig.Unarmor(sigBytes)
	if err != nil {
		return nil, verr(SignaturePath, "not an armored SSH signature: %v", err)
	}
	if sig.Namespace != Namespace {
		return nil, verr(SignaturePath, "namespace %q, want %q", sig.Namespace, Namespace)
	}
	signer := ssh.FingerprintSHA256(sig.PublicKey)
	if !bytes.Equal(sig.PublicKey.Marshal(), agentKey.Marshal()) {
		return nil, verr(SignaturePath, "signed by %s, but the manifest's agent_key is %s", signer, ssh.FingerprintSHA256(agentKey))
	}
	if err := sshsig.Verify(bytes.NewReader(manifestBytes), sig, agentKey, sig.HashAlgorithm, Namespace); err != nil {
		return nil, verr(SignaturePath, "signature by %s does not verify over manifest.json: %v", signer, err)
	}
	if m.AgentKeyFingerprint != signer {
		return nil, verr(ManifestPath, "agent_key_fingerprint %q does not match agent_key (%s)", m.AgentKeyFingerprint, signer)
	}

	// 4. Trust.
	if len(opts.TrustedKeys) > 0 {
		trusted := false
		for _, k := range opts.TrustedKeys {
			if k != nil && bytes.Equal(k.Marshal(), agentKey.Marshal()) {
				trusted = true
				break
			}
		}
		if !trusted {
			return nil, verr(SignaturePath, "signer %s is not a trusted key", signer)
		}
	}

	// 5. Artifact list.
	listed := make(map[string]bool, len(m.Artifacts))
	for i, a := range m.Artifacts {
		switch {
		case checkPath(a.Path) != nil:
			return nil, verr(ManifestPath, "artifact %d: unsafe path %q: %v", i, a.Path, checkPath(a.Path))
		case a.Path == ManifestPath || a.Path == SignaturePath:
			return nil, verr(ManifestPath, "artifact %d: lists %s", i, a.Path)
		case listed[a.Path]:
			return nil, verr(ManifestPath, "artifact %d: %s listed twice", i, a.Path)
		case !sha256Hex.MatchString(a.SHA256):
			return nil, verr(ManifestPath, "artifact %d (%s): sha256 %q is not 64 lowercase hex digits", i, a.Path, a.SHA256)
		case a.Size < 0 || a.Records < 0:
			return nil, verr(ManifestPath, "artifact %d (%s): negative size or records", i, a.Path)
		}
		listed[a.Path] = true
	}

	// 6. Artifacts.
	for _, a := range m.Artifacts {
		f, ok := files[a.Path]
		switch {
		case !ok:
			return nil, verr(a.Path, "listed in the manifest but missing from the bundle")
		case f.size != a.Size:
			return nil, verr(a.Path, "size mismatch: manifest says %d bytes, file has %d", a.Size, f.size)
		case f.sha != a.SHA256:
			return nil, verr(a.Path, "sha256 mismatch: manifest says %s, file has %s", a.SHA256, f.sha)
		case strings.HasSuffix(a.Path, ".jsonl") && f.lines != a.Records:
			return nil, verr(a.Path, "record count mismatch: manifest says %d, file has %d lines", a.Records, f.lines)
		}
	}

	// 7. Nothing unlisted.
	for _, name := range order {
		if name != ManifestPath && name != SignaturePath && !listed[name] {
			return nil, verr(name, "not listed in the manifest")
		}
	}
	return &Report{Manifest: m, SignerFingerprint: signer, Files: len(m.Artifacts)}, nil
}

// streamErr describes a failure to read the gzip or tar stream.
func streamErr(path string, err error) *VerifyError {
	switch {
	case errors.Is(err, io.ErrUnexpectedEOF):
		return verr(path, "truncated: the gzip or tar stream ends early (%v)", err)
	case errors.Is(err, gzip.ErrChecksum):
		return verr(path, "corrupt gzip stream: %v", err)
	case errors.Is(err, gzip.ErrHeader):
		return verr(path, "corrupt gzip stream or trailing garbage: %v", err)
	default:
		return verr(path, "unreadable tar.gz: %v", err)
	}
}

// lineCountHash hashes what is written to it and counts '\n' bytes.
type lineCountHash struct {
	h     hash.Hash
	lines int64
}

func (l *lineCountHash) Write(p []byte) (int, error) {
	l.lines += int64(bytes.Count(p, []byte{'\n'}))
	return l.h.Write(p)
}

var errNonZero = errors.New("non-zero byte")

// zeroChecker accepts only zero bytes.
type zeroChecker struct{}

func (zeroChecker) Write(p []byte) (int, error) {
	for _, c := range p {
		if c != 0 {
			return 0, errNonZero
		}
	}
	return len(p), nil
}
