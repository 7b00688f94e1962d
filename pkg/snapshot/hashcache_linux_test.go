package snapshot

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestHashCacheFollowsContent: a hash remembered from an earlier snapshot
// is used only while the file is unchanged; an executable rewritten in
// place (same inode) is read and hashed again.
func TestHashCacheFollowsContent(t *testing.T) {
	src, err := exec.LookPath("sleep")
	if err != nil {
		t.Skip("no sleep(1)")
	}
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	exe := filepath.Join(t.TempDir(), "cordon-hash-probe")
	if err := os.WriteFile(exe, b, 0o755); err != nil {
		t.Fatal(err)
	}
	hashOf := func() string {
		t.Helper()
		cmd := exec.Command(exe, "60")
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		defer func() { cmd.Process.Kill(); cmd.Wait() }()
		time.Sleep(50 * time.Millisecond)
		WarmHashes(context.Background())
		signer := newSigner(t)
		bnd, err := Take(context.Background(), Request{SnapshotID: "s", OrderID: "o", HostName: "h", AgentVersion: "t", Signer: signer})
		if err != nil {
			t.Fatal(err)
		}
		_, files := bundleFiles(t, bnd, signer)
		for _, rec := range decodeJSONL[ProcessRecord](t, files["artifacts/processes.jsonl"]) {
			if rec.PID == int32(cmd.Process.Pid) {
				return rec.ExeSHA256
			}
		}
		t.Fatal("probe process not in the snapshot")
		return ""
	}
	want := func(content []byte) string { s := sha256.Sum256(content); return hex.EncodeToString(s[:]) }

	if got := hashOf(); got != want(b) {
		t.Fatalf("first hash %s, want %s", got, want(b))
	}
	// Rewrite in place: same inode, one more byte, new mtime and ctime.
	f, err := os.OpenFile(exe, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.Write([]byte{0})
	f.Close()
	changed := append(append([]byte(nil), b...), 0)
	if got := hashOf(); got != want(changed) {
		t.Fatalf("after an in-place change the hash is %s, want %s (a stale hash was reused)", got, want(changed))
	}
}

// TestExeJobsFixedWhileHashing: once hashing starts, the list of
// executables to hash is fixed. A reader the scan gave up on may come back
// from its read while the files are hashed and find another executable;
// it must not add to the list, nor to a job's processes, which hashing
// reads without a lock (run with -race to see the race this prevents).
func TestExeJobsFixedWhileHashing(t *testing.T) {
	var stx unix.Statx_t
	if err := statxAt(unix.AT_FDCWD, "/proc/self/exe", &stx); err != nil {
		t.Fatal(err)
	}
	key := fileKeyOfStatx(&stx)
	jobs := newExeJobs()
	if i := jobs.add(key, os.Getpid()); i != 0 {
		t.Fatalf("first job = %d", i)
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for n := uint64(1); ; n++ {
			select {
			case <-stop:
				return
			default:
			}
			jobs.add(key, os.Getpid())
			jobs.add(fileKey{dev: key.dev, ino: key.ino + n}, os.Getpid())
		}
	})
	jobs.run(context.Background(), 2)
	close(stop)
	wg.Wait()
	if i := jobs.add(fileKey{dev: key.dev, ino: key.ino - 1}, os.Getpid()); i != -1 {
		t.Errorf("a job was added (%d) after hashing started", i)
	}
	if j := jobs.list[0]; j.sum == "" || j.err != "" {
		t.Errorf("the test binary: sum %q, error %q", j.sum, j.err)
	}
}
