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
	"reflect"
	"strings"
	"time"

	"github.com/hiddeco/sshsig"
	"golang.org/x/crypto/ssh"
)

// Bundle is a finished, signed evidence bundle, held in memory.
type Bundle struct {
	// Data is the whole .tar.gz.
	Data []byte
	// SHA256 is the lowercase hex SHA-256 of Data: the bundle's
	// content address.
	SHA256 string
	// Manifest is the manifest stored (and signed) in the bundle.
	Manifest Manifest
	// FileName is FileName(Manifest.Host.Name, Manifest.StartedAt,
	// Manifest.SnapshotID).
	FileName string
}

// Builder assembles a bundle in memory. Add artifacts with AddJSONL and
// AddRaw, then call Finish once. The records and bytes handed to the Add
// methods are referenced, not copied: they must not change until Finish
// returns (Finish detects a change and fails). A Builder is not safe for
// concurrent use.
type Builder struct {
	m        Manifest
	entries  []*entry
	paths    map[string]bool
	finished bool
}

type entry struct {
	art     Artifact
	records reflect.Value // JSONL artifacts
	raw     []byte        // raw artifacts
	jsonl   bool
}

// NewBuilder starts a bundle for m. m.Artifacts is ignored (the Add methods
// fill it); AgentKey, AgentKeyFingerprint, FormatVersion and FinishedAt are
// set by Finish. m.StartedAt must be set: it is also every tar entry's mtime.
func NewBuilder(m Manifest) *Builder {
	m.Artifacts = nil
	return &Builder{m: m, paths: map[string]bool{}}
}

// AddJSONL adds artifacts/<name>.jsonl holding one JSON object per line, one
// line per element of records, which must be a slice or array (nil means no
// records). name is 1 to 128 of [a-z0-9_.-], starting with a letter or
// digit. source says where the data came from; errs are collection errors
// to record with the artifact. The records are encoded now to learn size and
// hash, and encoded again by Finish straight into the compressed tar, so no
// uncompressed copy is ever held.
func (b *Builder) AddJSONL(name, source string, records any, errs []string) error {
	if b.finished {
		return errors.New("evidence: builder already finished")
	}
	if !jsonlName.MatchString(name) {
		return fmt.Errorf("evidence: artifact name %q: want 1-128 of [a-z0-9_.-]", name)
	}
	rv := reflect.ValueOf(records)
	if records != nil && rv.Kind() != reflect.Slice && rv.Kind() != reflect.Array {
		return fmt.Errorf("evidence: artifact %s: records must be a slice, not %T", name, records)
	}
	p := ArtifactsDir + name + ".jsonl"
	if b.paths[p] {
		return fmt.Errorf("evidence: artifact %s added twice", p)
	}
	cw := newCountHash()
	n, err := encodeJSONL(cw, rv)
	if err != nil {
		return fmt.Errorf("evidence: artifact %s: %w", p, err)
	}
	b.add(&entry{
		art:     artifact(name, p, source, cw, n, errs),
		records: rv,
		jsonl:   true,
	})
	return nil
}

// AddRaw adds the raw bytes read from a file on the host, e.g. path
// "/proc/net/tcp", as raw/proc/net/tcp; the artifact's name is the original
// absolute path. path must be clean, without "..". source and errs are as
// for AddJSONL.
func (b *Builder) AddRaw(path, source string, data []byte, errs []string) error {
	if b.finished {
		return errors.New("evidence: builder already finished")
	}
	rel := strings.TrimPrefix(path, "/")
	if err := checkPath(rel); err != nil {
		return fmt.Errorf("evidence: raw path %q: %w", path, err)
	}
	p := RawDir + rel
	if b.paths[p] {
		return fmt.Errorf("evidence: artifact %s added twice", p)
	}
	cw := newCountHash()
	cw.Write(data)
	b.add(&entry{art: artifact("/"+rel, p, source, cw, 0, errs), raw: data})
	return nil
}

func (b *Builder) add(e *entry) {
	b.paths[e.art.Path] = true
	b.entries = append(b.entries, e)
}

func artifact(name, p, source string, cw *countHash, records int64, errs []string) Artifact {
	return Artifact{
		Name:    name,
		Path:    p,
		SHA256:  cw.sum(),
		Size:    cw.n,
		Records: records,
		Source:  source,
		Errors:  append([]string{}, errs...),
	}
}

// Finish completes the manifest (agent key and fingerprint from signer,
// FinishedAt, FormatVersion), signs it with signer (SSHSIG, SHA-512,
// namespace Namespace) and writes the bundle: manifest.json,
// manifest.json.sig, then the artifacts in the order they were added. The
// signer must hold an ed25519 key, as format version 1 requires. After
// Finish, the Builder accepts nothing more.
func (b *Builder) Finish(signer ssh.Signer, finishedAt time.Time) (*Bundle, error) {
	if b.finished {
		return nil, errors.New("evidence: builder already finished")
	}
	b.finished = true
	if signer == nil {
		return nil, errors.New("evidence: no signer")
	}
	pub := signer.PublicKey()
	if pub.Type() != ssh.KeyAlgoED25519 {
		return nil, fmt.Errorf("evidence: signer key is %s, format version %d needs %s", pub.Type(), FormatVersion, ssh.KeyAlgoED25519)
	}
	m := b.m
	key := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(pub)))
	if m.AgentKey != "" && m.AgentKey != key {
		return nil, errors.New("evidence: manifest agent_key is not the signer's key")
	}
	if m.StartedAt.IsZero() {
		return nil, errors.New("evidence: manifest started_at is not set")
	}
	m.FormatVersion = FormatVersion
	m.AgentKey = key
	m.AgentKeyFingerprint = ssh.FingerprintSHA256(pub)
	m.StartedAt = m.StartedAt.UTC()
	m.FinishedAt = finishedAt.UTC()
	m.Artifacts = make([]Artifact, 0, len(b.entries))
	for _, e := range b.entries {
		m.Artifacts = append(m.Artifacts, e.art)
	}

	var mb bytes.Buffer
	enc := json.NewEncoder(&mb)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	if err := enc.Encode(&m); err != nil {
		return nil, fmt.Errorf("evidence: encode manifest: %w", err)
	}
	sig, err := sshsig.Sign(bytes.NewReader(mb.Bytes()), signer, sshsig.HashSHA512, Namespace)
	if err != nil {
		return nil, fmt.Errorf("evidence: sign manifest: %w", err)
	}
	armored := sshsig.Armor(sig)

	var out bytes.Buffer
	zw := gzip.NewWriter(&out)
	tw := tar.NewWriter(zw)
	mtime := m.StartedAt.Truncate(time.Second)
	header := func(name string, size int64) error {
		return tw.WriteHeader(&tar.Header{
			Typeflag: tar.TypeReg,
			Name:     name,
			Size:     size,
			Mode:     0o444,
			ModTime:  mtime,
		})
	}
	for _, f := range []struct {
		name string
		data []byte
	}{{ManifestPath, mb.Bytes()}, {SignaturePath, armored}} {
		if err := header(f.name, int64(len(f.data))); err != nil {
			return nil, fmt.Errorf("evidence: write %s: %w", f.name, err)
		}
		if _, err := tw.Write(f.data); err != nil {
			return nil, fmt.Errorf("evidence: write %s: %w", f.name, err)
		}
	}
	for _, e := range b.entries {
		if err := header(e.art.Path, e.art.Size); err != nil {
			return nil, fmt.Errorf("evidence: write %s: %w", e.art.Path, err)
		}
		cw := newCountHash()
		w := io.MultiWriter(tw, cw)
		if e.jsonl {
			if _, err := encodeJSONL(w, e.records); err != nil {
				return nil, fmt.Errorf("evidence: write %s: %w", e.art.Path, err)
			}
		} else if _, err := w.Write(e.raw); err != nil {
			return nil, fmt.Errorf("evidence: write %s: %w", e.art.Path, err)
		}
		if cw.n != e.art.Size || cw.sum() != e.art.SHA256 {
			return nil, fmt.Errorf("evidence: write %s: data changed after it was added", e.art.Path)
		}
	}
	if err := tw.Close(); err != nil {
		return nil, fmt.Errorf("evidence: close tar: %w", err)
	}
	if err := zw.Close(); err != nil {
		return nil, fmt.Errorf("evidence: close gzip: %w", err)
	}
	sum := sha256.Sum256(out.Bytes())
	return &Bundle{
		Data:     out.Bytes(),
		SHA256:   hex.EncodeToString(sum[:]),
		Manifest: m,
		FileName: FileName(m.Host.Name, m.StartedAt, m.SnapshotID),
	}, nil
}

// encodeJSONL writes each element of rv (a slice, an array or the zero
// Value) as one line of compact JSON and returns how many it wrote.
func encodeJSONL(w io.Writer, rv reflect.Value) (int64, error) {
	if !rv.IsValid() {
		return 0, nil
	}
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	n := rv.Len()
	for i := range n {
		if err := enc.Encode(rv.Index(i).Interface()); err != nil {
			return int64(i), fmt.Errorf("record %d: %w", i, err)
		}
	}
	return int64(n), nil
}

// countHash counts and SHA-256-hashes what is written to it.
type countHash struct {
	h hash.Hash
	n int64
}

func newCountHash() *countHash { return &countHash{h: sha256.New()} }

func (c *countHash) Write(p []byte) (int, error) {
	c.h.Write(p)
	c.n += int64(len(p))
	return len(p), nil
}

func (c *countHash) sum() string { return hex.EncodeToString(c.h.Sum(nil)) }
