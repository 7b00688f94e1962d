// Package evidencestore keeps evidence bundles on the controller's disk,
// content-addressed by SHA-256 and read-only (DESIGN.md §4).
//
// A bundle lives at <root>/sha256/<first two hex digits>/<hex>.tar.gz with
// mode 0444. It is written to a temporary file in the same file system,
// synced, checked against the expected size and hash, and only then renamed
// into place, so a crash, a short upload or a full disk never leaves a
// partial bundle under a valid name.
package evidencestore

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"syscall"
)

// ErrMismatch is returned by Put when the data does not have the announced
// size or SHA-256.
var ErrMismatch = errors.New("evidence does not match its announced size or sha256")

// Dir is a content-addressed evidence directory.
type Dir struct{ root string }

// Open returns the evidence directory at root, creating it (mode 0700) if
// needed.
func Open(root string) (*Dir, error) {
	for _, d := range []string{root, filepath.Join(root, "sha256"), filepath.Join(root, "tmp")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("evidence store: %w", err)
		}
	}
	return &Dir{root: root}, nil
}

// ErrLowSpace is returned by CheckSpace when storing a bundle would eat into
// the space kept free for the controller's database.
var ErrLowSpace = errors.New("controller storage is low")

// CheckSpace reports whether a bundle of size bytes fits while leaving a
// reserve free on the file system (256 MiB, or a tenth of a small file
// system): the database usually shares it, and a full database stops every
// isolation, not just this upload. The source is statfs(2).
func (d *Dir) CheckSpace(size int64) error {
	var st syscall.Statfs_t
	if err := syscall.Statfs(d.root, &st); err != nil {
		return fmt.Errorf("evidence store: statfs: %w", err)
	}
	free := int64(st.Bavail) * int64(st.Bsize)
	reserve := min(256<<20, int64(st.Blocks)*int64(st.Bsize)/10)
	if free-size < reserve {
		return fmt.Errorf("%w: %d bytes free, the bundle needs %d and %d stay free for the database", ErrLowSpace, free, size, reserve)
	}
	return nil
}

// Path returns where the bundle with this hex SHA-256 is (or would be) kept.
func (d *Dir) Path(sum string) string {
	return filepath.Join(d.root, "sha256", sum[:2], sum+".tar.gz")
}

// Put reads exactly size bytes from r and stores them under sum (hex
// SHA-256). It returns ErrMismatch (wrapped) if r holds fewer or more bytes
// or their hash differs; an I/O error such as a full disk is returned as is.
// Either way nothing is left behind. Storing a bundle that is already there
// succeeds without writing it again.
func (d *Dir) Put(r io.Reader, sum string, size int64) (err error) {
	if len(sum) != 64 {
		return fmt.Errorf("evidence store: bad sha256 %q", sum)
	}
	tmp, err := os.CreateTemp(filepath.Join(d.root, "tmp"), "upload-*")
	if err != nil {
		return fmt.Errorf("evidence store: %w", err)
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(tmp, h), io.LimitReader(r, size+1))
	if err != nil {
		return fmt.Errorf("evidence store: receive: %w", err)
	}
	if n != size {
		return fmt.Errorf("%w: got %d bytes, announced %d", ErrMismatch, n, size)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != sum {
		return fmt.Errorf("%w: got sha256 %s, announced %s", ErrMismatch, got, sum)
	}
	if err := tmp.Chmod(0o444); err != nil {
		return fmt.Errorf("evidence store: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		return fmt.Errorf("evidence store: sync: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("evidence store: %w", err)
	}
	dst := d.Path(sum)
	if err := os.MkdirAll(filepath.Dir(dst), 0o700); err != nil {
		return fmt.Errorf("evidence store: %w", err)
	}
	if _, statErr := os.Stat(dst); statErr == nil {
		os.Remove(tmp.Name())
		return nil
	}
	if err := os.Rename(tmp.Name(), dst); err != nil {
		return fmt.Errorf("evidence store: %w", err)
	}
	return syncDir(filepath.Dir(dst))
}

// Open opens the bundle with this hex SHA-256 for reading.
func (d *Dir) Open(sum string) (*os.File, error) {
	if len(sum) != 64 {
		return nil, fmt.Errorf("evidence store: bad sha256 %q", sum)
	}
	return os.Open(d.Path(sum))
}

func syncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		return fmt.Errorf("evidence store: sync %s: %w", dir, err)
	}
	return nil
}
