package agent

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	llsys "github.com/landlock-lsm/go-landlock/landlock/syscall"
)

// TestRestrictWrites runs RestrictWrites in a copy of the test binary (the
// restriction cannot be undone) and checks, from inside, that writes outside
// the runtime directory are refused, for the process and for a child it
// starts, while the runtime directory, /dev/null and reading still work.
func TestRestrictWrites(t *testing.T) {
	if dir := os.Getenv("CORDON_SANDBOX_CHILD"); dir != "" {
		sandboxChild(t, dir)
		return
	}
	if abi, err := llsys.LandlockGetABIVersion(); err != nil || abi < 1 {
		t.Skipf("the kernel offers no Landlock (%v)", err)
	}
	base := t.TempDir()
	rt := filepath.Join(base, "run")
	os.Mkdir(rt, 0o700)
	cmd := exec.Command(os.Args[0], "-test.run", "^TestRestrictWrites$", "-test.v")
	cmd.Env = append(os.Environ(), "CORDON_SANDBOX_CHILD="+rt)
	out, err := cmd.CombinedOutput()
	t.Logf("sandboxed child:\n%s", out)
	if err != nil {
		t.Fatalf("sandboxed child failed: %v", err)
	}
	if !strings.Contains(string(out), "--- PASS: TestRestrictWrites") {
		t.Fatal("the sandboxed child did not run")
	}
	for _, f := range []string{"outside.txt", "outside-by-child.txt"} {
		if _, err := os.Stat(filepath.Join(base, f)); err == nil {
			t.Errorf("%s was written despite the sandbox", f)
		}
	}
}

func sandboxChild(t *testing.T, rt string) {
	base := filepath.Dir(rt)
	desc, err := RestrictWrites(rt)
	if err != nil {
		t.Fatal(err)
	}
	t.Log(desc)
	if !strings.HasPrefix(desc, "landlock ABI") {
		t.Fatalf("sandbox not enforced: %s", desc)
	}
	if err := os.WriteFile(filepath.Join(base, "outside.txt"), []byte("x"), 0o600); !os.IsPermission(err) {
		t.Errorf("write outside the runtime directory: got %v, want permission denied", err)
	}
	if err := os.WriteFile(filepath.Join(rt, "inside.txt"), []byte("x"), 0o600); err != nil {
		t.Errorf("write inside the runtime directory: %v", err)
	}
	if err := os.WriteFile("/dev/null", []byte("x"), 0); err != nil {
		t.Errorf("write to /dev/null: %v", err)
	}
	if _, err := os.ReadFile("/etc/os-release"); err != nil {
		t.Errorf("read: %v", err)
	}
	// A child inherits the restriction: what the plugin runs cannot write.
	out, err := exec.Command("/bin/sh", "-c", "echo x > "+filepath.Join(base, "outside-by-child.txt")).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "Permission denied") {
		t.Errorf("child write outside: err %v, output %q; want permission denied", err, out)
	}
}
