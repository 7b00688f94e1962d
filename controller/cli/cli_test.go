package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func run(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var o, e bytes.Buffer
	code = Run(context.Background(), args, &o, &e)
	return code, o.String(), e.String()
}

func TestUsageErrors(t *testing.T) {
	t.Setenv("CORDON_CONTROLLER", "")
	for name, tc := range map[string]struct {
		args []string
		code int
		want string
	}{
		"reason required":   {[]string{"isolate", "host", "pay-db-01"}, ExitUsage, `"reason" not set`},
		"empty reason":      {[]string{"isolate", "host", "pay-db-01", "--reason", ""}, ExitUsage, "--reason is required"},
		"host name missing": {[]string{"isolate", "host", "--reason", "x"}, ExitUsage, "takes a host name"},
		"two hosts":         {[]string{"release", "host", "a", "b", "--reason", "x"}, ExitUsage, "takes a host name"},
		"unknown flag":      {[]string{"hosts", "--colour"}, ExitUsage, "unknown flag"},
		"unknown command":   {[]string{"nuke"}, ExitUsage, "unknown command"},
		"bad output":        {[]string{"hosts", "-o", "yaml"}, ExitUsage, "want text or json"},
		"no controller":     {[]string{"hosts"}, ExitFailure, "no controller address"},
		"no fingerprint":    {[]string{"hosts", "--controller", "127.0.0.1:1"}, ExitFailure, "no controller fingerprint pinned"},
		"verify no file":    {[]string{"snapshot", "verify", "/nonexistent.tar.gz"}, ExitFailure, "no such file"},
	} {
		t.Run(name, func(t *testing.T) {
			code, _, stderr := run(t, tc.args...)
			if code != tc.code || !strings.Contains(stderr, tc.want) {
				t.Fatalf("exit %d, stderr %q; want exit %d and %q", code, stderr, tc.code, tc.want)
			}
		})
	}
}

func TestControllerInit(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ctl")
	code, out, stderr := run(t, "controller", "init", "--data-dir", dir, "-o", "json")
	if code != 0 {
		t.Fatalf("init: exit %d: %s", code, stderr)
	}
	var res map[string]any
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"fingerprint", "enroll_token", "operator_key"} {
		if s, _ := res[k].(string); s == "" {
			t.Errorf("init -o json lacks %q: %s", k, out)
		}
	}
	st, err := os.Stat(res["operator_key"].(string))
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("operator key: %v mode %v", err, st.Mode())
	}
	if !strings.HasPrefix(res["fingerprint"].(string), "SHA256:") {
		t.Errorf("fingerprint %v", res["fingerprint"])
	}
	// A second init must not overwrite the keys.
	code, _, stderr = run(t, "controller", "init", "--data-dir", dir)
	if code == 0 || !strings.Contains(stderr, "already initialized") {
		t.Errorf("second init: exit %d, %q", code, stderr)
	}
}

func TestCleanWriterStripsEscapes(t *testing.T) {
	var b bytes.Buffer
	cleanWriter{&b}.Write([]byte("ok\x1b[2J\u202ereversed\u0085 é\tnext\n"))
	if got, want := b.String(), "ok?[2J?reversed? é\tnext\n"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
}
