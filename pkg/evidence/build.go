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
	"reflect"
	"strings"
	"sync"
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

// ErrArtifactClosed is returned by an ArtifactWriter's methods once it is
// closed, by Close or by Cut from another goroutine.
var ErrArtifactClosed = errors.New("evidence: artifact already closed")

// compressionLevel is the gzip level of every member. Level 1 (BestSpeed)
// compresses JSONL about 4 times faster than the default level, for a
// bundle about 30% larger: the snapshot is taken while the host is still
// connected, so time counts more than bytes.
const compressionLevel = gzip.BestSpeed

// Builder assembles a bundle in memory, streaming: each artifact is
// compressed as it is written, and no uncompressed copy of it is kept.
// Start artifacts with CreateJSONL and CreateRaw (or add them whole with
// AddJSONL and AddRaw), close them, then call Finish once.
//
// The Builder and its ArtifactWriters are safe for concurrent use: several
// goroutines may each fill their own artifact at the same time, and Cut may
// close any artifact from any goroutine.
//
// The bundle is a tar in a gzip file made of several gzip members (RFC 1952
// §2.2, as gzip(1) and pigz write when files are concatenated): the first
// holds manifest.json and its signature, then each artifact has one member
// for its tar header and one for its content, and a last member holds the
// tar's end marker. Decompressed, it is one ordinary tar stream.
type Builder struct {
	mu       sync.Mutex
	m        Manifest
	entries  []*ArtifactWriter
	paths    map[string]bool
	finished bool
}

// NewBuilder starts a bundle for m. m.Artifacts is ignored (the artifacts
// added fill it); AgentKey, AgentKeyFingerprint, FormatVersion and
// FinishedAt are set by Finish. m.StartedAt must be set: it is also every
// tar entry's mtime.
func NewBuilder(m Manifest) *Builder {
	m.Artifacts = nil
	return &Builder{m: m, paths: map[string]bool{}}
}

// UpdateManifest lets fn change the manifest before Finish, for what is
// known only at the end of a collection (a clock offset, say). Changes fn
// makes to Artifacts are ignored.
func (b *Builder) UpdateManifest(fn func(m *Manifest)) {
	b.mu.Lock()
	defer b.mu.Unlock()
	fn(&b.m)
	b.m.Artifacts = nil
}

// ArtifactWriter streams one artifact into a Builder: bytes written are
// hashed, counted and compressed at once. For a JSONL artifact each record
// is one line; Records in the manifest is the number of '\n' written.
// Close it when done; an artifact still open makes Finish fail.
//
// Its methods are safe for concurrent use; a write is atomic with respect
// to Cut, so a JSONL artifact never ends in half a record written by
// Encode or WriteLines.
type ArtifactWriter struct {
	b     *Builder
	art   Artifact
	jsonl bool

	mu     sync.Mutex
	closed bool
	zw     *gzip.Writer
	out    bytes.Buffer // compressed content and tar padding
	h      hash.Hash
	n      int64
	lines  int64
	errs   []string
	line   bytes.Buffer // scratch for Encode
	enc    *json.Encoder
	member []byte // out's bytes once closed
}

// CreateJSONL starts artifacts/<name>.jsonl, to hold one JSON object per
// line. name is 1 to 128 of [a-z0-9_.-], starting with a letter or digit.
// source says where the data came from (it goes into the manifest).
func (b *Builder) CreateJSONL(name, source string) (*ArtifactWriter, error) {
	if !jsonlName.MatchString(name) {
		return nil, fmt.Errorf("evidence: artifact name %q: want 1-128 of [a-z0-9_.-]", name)
	}
	return b.create(name, ArtifactsDir+name+".jsonl", source, true)
}

// CreateRaw starts the raw bytes read from a file on the host, e.g. path
// "/proc/net/tcp", as raw/proc/net/tcp; the artifact's name is the original
// absolute path. path must be clean, without "..". Records is 0 for raw
// artifacts.
func (b *Builder) CreateRaw(path, source string) (*ArtifactWriter, error) {
	rel := strings.TrimPrefix(path, "/")
	if err := checkPath(rel); err != nil {
		return nil, fmt.Errorf("evidence: raw path %q: %w", path, err)
	}
	return b.create("/"+rel, RawDir+rel, source, false)
}

func (b *Builder) create(name, p, source string, jsonl bool) (*ArtifactWriter, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.finished {
		return nil, errors.New("evidence: builder already finished")
	}
	if b.paths[p] {
		return nil, fmt.Errorf("evidence: artifact %s added twice", p)
	}
	w := &ArtifactWriter{
		b:     b,
		art:   Artifact{Name: name, Path: p, Source: source},
		jsonl: jsonl,
		h:     sha256.New(),
		zw:    getGzip(),
	}
	w.zw.Reset(&w.out)
	b.paths[p] = true
	b.entries = append(b.entries, w)
	return w, nil
}

// remove drops w from the builder (AddJSONL's failure path).
func (b *Builder) remove(w *ArtifactWriter) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for i, e := range b.entries {
		if e == w {
			b.entries = append(b.entries[:i], b.entries[i+1:]...)
			delete(b.paths, w.art.Path)
			return
		}
	}
}

// Write adds p to the artifact. For a JSONL artifact p must hold whole
// lines, each one JSON object ending in '\n'.
func (w *ArtifactWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return 0, ErrArtifactClosed
	}
	return w.write(p)
}

func (w *ArtifactWriter) write(p []byte) (int, error) {
	if _, err := w.zw.Write(p); err != nil {
		return 0, err
	}
	w.h.Write(p)
	w.n += int64(len(p))
	if w.jsonl {
		w.lines += int64(bytes.Count(p, []byte{'\n'}))
	}
	return len(p), nil
}

// WriteLines is Write for a JSONL artifact, named for what p must hold:
// whole lines of JSON objects. It exists so callers that encode records
// themselves say so.
func (w *ArtifactWriter) WriteLines(p []byte) error {
	_, err := w.Write(p)
	return err
}

// Encode adds v, encoded with encoding/json (HTML characters not escaped),
// as one line of a JSONL artifact.
func (w *ArtifactWriter) Encode(v any) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return ErrArtifactClosed
	}
	if !w.jsonl {
		return fmt.Errorf("evidence: %s is not a JSONL artifact", w.art.Path)
	}
	if w.enc == nil {
		w.enc = json.NewEncoder(&w.line)
		w.enc.SetEscapeHTML(false)
	}
	w.line.Reset()
	if err := w.enc.Encode(v); err != nil {
		return err
	}
	_, err := w.write(w.line.Bytes())
	return err
}

// AddError records a collection error with the artifact: it may be
// incomplete. Errors added after Close are ignored.
func (w *ArtifactWriter) AddError(msg string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.closed {
		w.errs = append(w.errs, msg)
	}
}

// Close completes the artifact. Closing twice returns ErrArtifactClosed.
func (w *ArtifactWriter) Close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return ErrArtifactClosed
	}
	return w.close()
}

// Cut closes w if it is still open, recording reason as its last error,
// and reports whether it did. The goroutine filling w, if any, gets
// ErrArtifactClosed from its next write.
func (w *ArtifactWriter) Cut(reason string) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return false
	}
	w.errs = append(w.errs, reason)
	w.close()
	return true
}

func (w *ArtifactWriter) close() error {
	w.closed = true
	var err error
	if pad := (blockSize - w.n%blockSize) % blockSize; pad > 0 {
		_, err = w.zw.Write(make([]byte, pad))
	}
	if cerr := w.zw.Close(); err == nil {
		err = cerr
	}
	putGzip(w.zw)
	w.zw, w.enc = nil, nil
	w.line = bytes.Buffer{}
	w.member = w.out.Bytes()
	w.art.SHA256 = hex.EncodeToString(w.h.Sum(nil))
	w.art.Size = w.n
	w.art.Records = w.lines
	w.art.Errors = append([]string{}, w.errs...)
	if err != nil {
		return fmt.Errorf("evidence: compress %s: %w", w.art.Path, err)
	}
	return nil
}

// blockSize is tar's block size: entries are padded to a multiple of it.
const blockSize = 512

// AddJSONL adds artifacts/<name>.jsonl holding one JSON object per line,
// one line per element of records, which must be a slice or array (nil
// means no records). name is as for CreateJSONL. source says where the data
// came from; errs are collection errors to record with the artifact. The
// records are encoded and compressed now: changing them afterwards changes
// nothing in the bundle.
func (b *Builder) AddJSONL(name, source string, records any, errs []string) error {
	rv := reflect.ValueOf(records)
	if records != nil && rv.Kind() != reflect.Slice && rv.Kind() != reflect.Array {
		return fmt.Errorf("evidence: artifact %s: records must be a slice, not %T", name, records)
	}
	w, err := b.CreateJSONL(name, source)
	if err != nil {
		return err
	}
	if records != nil {
		for i := range rv.Len() {
			if err := w.Encode(rv.Index(i).Interface()); err != nil {
				w.Cut("")
				b.remove(w)
				return fmt.Errorf("evidence: artifact %s: record %d: %w", w.art.Path, i, err)
			}
		}
	}
	for _, e := range errs {
		w.AddError(e)
	}
	return w.Close()
}

// AddRaw adds the raw bytes read from a file on the host, e.g. path
// "/proc/net/tcp", as raw/proc/net/tcp; the artifact's name is the original
// absolute path. path must be clean, without "..". source and errs are as
// for AddJSONL. data is compressed now.
func (b *Builder) AddRaw(path, source string, data []byte, errs []string) error {
	w, err := b.CreateRaw(path, source)
	if err != nil {
		return err
	}
	if _, err := w.Write(data); err != nil {
		w.Cut("")
		b.remove(w)
		return err
	}
	for _, e := range errs {
		w.AddError(e)
	}
	return w.Close()
}

// Finish completes the manifest (agent key and fingerprint from signer,
// FinishedAt, FormatVersion), signs it with signer (SSHSIG, SHA-512,
// namespace Namespace) and writes the bundle: manifest.json,
// manifest.json.sig, then the artifacts in the order they were created.
// Every artifact must be closed. The signer must hold an ed25519 key, as
// format version 1 requires. After Finish, the Builder accepts nothing
// more.
func (b *Builder) Finish(signer ssh.Signer, finishedAt time.Time) (*Bundle, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
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
	for _, w := range b.entries {
		w.mu.Lock()
		closed := w.closed
		w.mu.Unlock()
		if !closed {
			return nil, fmt.Errorf("evidence: artifact %s is still open", w.art.Path)
		}
		m.Artifacts = append(m.Artifacts, w.art)
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

	mtime := m.StartedAt.Truncate(time.Second)
	var head bytes.Buffer
	for _, f := range []struct {
		name string
		data []byte
	}{{ManifestPath, mb.Bytes()}, {SignaturePath, armored}} {
		if err := tarHeader(&head, f.name, int64(len(f.data)), mtime); err != nil {
			return nil, fmt.Errorf("evidence: write %s: %w", f.name, err)
		}
		head.Write(f.data)
		head.Write(make([]byte, (blockSize-len(f.data)%blockSize)%blockSize))
	}
	members := [][]byte{gzipMember(head.Bytes())}
	for _, w := range b.entries {
		head.Reset()
		if err := tarHeader(&head, w.art.Path, w.art.Size, mtime); err != nil {
			return nil, fmt.Errorf("evidence: write %s: %w", w.art.Path, err)
		}
		members = append(members, gzipMember(head.Bytes()), w.member)
	}
	// The tar's end: two zero blocks.
	members = append(members, gzipMember(make([]byte, 2*blockSize)))
	total := 0
	for _, mb := range members {
		total += len(mb)
	}
	data := make([]byte, 0, total)
	for _, mb := range members {
		data = append(data, mb...)
	}
	for _, w := range b.entries {
		w.member = nil
	}
	sum := sha256.Sum256(data)
	return &Bundle{
		Data:     data,
		SHA256:   hex.EncodeToString(sum[:]),
		Manifest: m,
		FileName: FileName(m.Host.Name, m.StartedAt, m.SnapshotID),
	}, nil
}

// tarHeader writes the deterministic tar header of a regular file: mode
// 0444, uid and gid 0, no owner names, mtime as given.
func tarHeader(buf *bytes.Buffer, name string, size int64, mtime time.Time) error {
	tw := tar.NewWriter(buf)
	// The header is written at once; the Writer is dropped without Close,
	// which would want the content and write the end marker.
	return tw.WriteHeader(&tar.Header{
		Typeflag: tar.TypeReg,
		Name:     name,
		Size:     size,
		Mode:     0o444,
		ModTime:  mtime,
	})
}

// gzipMember compresses p as one gzip member.
func gzipMember(p []byte) []byte {
	var out bytes.Buffer
	zw := getGzip()
	zw.Reset(&out)
	zw.Write(p)
	zw.Close()
	putGzip(zw)
	return out.Bytes()
}

// gzipPool recycles compressors: each holds a few hundred KiB of state.
var gzipPool sync.Pool

func getGzip() *gzip.Writer {
	if zw, ok := gzipPool.Get().(*gzip.Writer); ok {
		return zw
	}
	zw, _ := gzip.NewWriterLevel(nil, compressionLevel)
	return zw
}

func putGzip(zw *gzip.Writer) { gzipPool.Put(zw) }
