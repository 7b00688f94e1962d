package evidencestore

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"
)

func sum(b []byte) string { s := sha256.Sum256(b); return hex.EncodeToString(s[:]) }

func TestPutStoresReadOnlyByHash(t *testing.T) {
	d, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	data := []byte("bundle bytes")
	if err := d.Put(bytes.NewReader(data), sum(data), int64(len(data))); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(d.Path(sum(data)))
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o444 {
		t.Errorf("mode = %v, want 0444", st.Mode().Perm())
	}
	f, err := d.Open(sum(data))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	got, _ := io.ReadAll(f)
	if !bytes.Equal(got, data) {
		t.Errorf("read back %q", got)
	}
	// Storing it again is fine.
	if err := d.Put(bytes.NewReader(data), sum(data), int64(len(data))); err != nil {
		t.Fatalf("second put: %v", err)
	}
}

func TestPutRejectsMismatchAndLeavesNothing(t *testing.T) {
	root := t.TempDir()
	d, err := Open(root)
	if err != nil {
		t.Fatal(err)
	}
	data := []byte("bundle bytes")
	for name, tc := range map[string]struct {
		r    io.Reader
		size int64
	}{
		"short":    {bytes.NewReader(data[:5]), int64(len(data))},
		"long":     {bytes.NewReader(append(data, 'x')), int64(len(data))},
		"tampered": {bytes.NewReader(bytes.ToUpper(data)), int64(len(data))},
	} {
		t.Run(name, func(t *testing.T) {
			err := d.Put(tc.r, sum(data), tc.size)
			if !errors.Is(err, ErrMismatch) {
				t.Fatalf("got %v, want ErrMismatch", err)
			}
			if _, err := os.Stat(d.Path(sum(data))); !os.IsNotExist(err) {
				t.Fatalf("bundle stored despite mismatch: %v", err)
			}
			left, _ := os.ReadDir(filepath.Join(root, "tmp"))
			if len(left) != 0 {
				t.Fatalf("temporary files left: %v", left)
			}
		})
	}
}
