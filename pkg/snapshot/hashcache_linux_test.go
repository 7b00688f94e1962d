package snapshot

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
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
