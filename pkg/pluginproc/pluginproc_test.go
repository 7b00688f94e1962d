package pluginproc

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-plugin"
)

func TestCheck(t *testing.T) {
	dir := t.TempDir()
	exe, plain := filepath.Join(dir, "exe"), filepath.Join(dir, "plain")
	os.WriteFile(exe, []byte("#!/bin/sh\n"), 0o755)
	os.WriteFile(plain, []byte("x"), 0o644)
	if err := Check(exe); err != nil {
		t.Errorf("Check(executable) = %v", err)
	}
	for path, why := range map[string]string{filepath.Join(dir, "none"): "does not exist", plain: "is not an executable file", dir: "is not an executable file"} {
		var nf *NotFoundError
		if err := Check(path); !errors.As(err, &nf) || nf.Why != why {
			t.Errorf("Check(%s) = %v, want %q", path, err, why)
		}
	}
}

func TestPin(t *testing.T) {
	hex64 := "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	for _, s := range []string{hex64, "sha256:" + hex64} {
		if c, err := Pin(s); err != nil || c == nil || len(c.Checksum) != 32 {
			t.Errorf("Pin(%q) = %+v, %v", s, c, err)
		}
	}
	if c, err := Pin(""); c != nil || err != nil {
		t.Errorf("Pin(\"\") = %+v, %v; want no pin", c, err)
	}
	for _, s := range []string{"00", "xyz", hex64 + "00"} {
		if _, err := Pin(s); err == nil {
			t.Errorf("Pin(%q) accepted", s)
		}
	}
}

func TestCommand(t *testing.T) {
	t.Setenv("TMPDIR", "/elsewhere")
	t.Setenv("CORDON_PLUGINPROC_TEST", "host")
	cmd, sock := Command("/bin/true", []string{"CORDON_PLUGINPROC_TEST=extra", "TMPDIR=/ignored"}, "/run/cordon")
	if sock == nil || sock.TempDir != "/run/cordon" {
		t.Errorf("socket config = %+v", sock)
	}
	for _, want := range []string{"CORDON_PLUGINPROC_TEST=extra", "TMPDIR=/run/cordon"} {
		if !slices.Contains(cmd.Env, want) {
			t.Errorf("env lacks %s", want)
		}
	}
	for _, bad := range []string{"CORDON_PLUGINPROC_TEST=host", "TMPDIR=/elsewhere", "TMPDIR=/ignored"} {
		if slices.Contains(cmd.Env, bad) {
			t.Errorf("env still has %s", bad)
		}
	}
	if _, sock := Command("/bin/true", nil, ""); sock != nil {
		t.Error("a socket config without a socket directory")
	}
}

func TestStartNotAPlugin(t *testing.T) {
	dir := t.TempDir()
	exe := filepath.Join(dir, "talk")
	// More than the 1 KiB kept, then the line that must survive.
	script := "#!/bin/sh\nhead -c 3000 /dev/zero | tr '\\0' x >&2\necho >&2\necho last words >&2\nexit 3\n"
	if err := os.WriteFile(exe, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	pc, _, err := Start(Spec{Path: exe, Name: "talk", Handshake: plugin.HandshakeConfig{ProtocolVersion: 1, MagicCookieKey: "K", MagicCookieValue: "V"},
		PluginName: "p", Plugin: plugin.NetRPCUnsupportedPlugin{}, Log: io.Discard, StartTimeout: 5 * time.Second})
	var se *StartError
	if pc != nil || !errors.As(err, &se) {
		t.Fatalf("Start = %v, %v; want a *StartError", pc, err)
	}
	if !strings.HasSuffix(se.Stderr, "last words") || len(se.Stderr) > 1024 {
		t.Errorf("stderr tail %d bytes, ends %q", len(se.Stderr), se.Stderr[max(0, len(se.Stderr)-20):])
	}
	if msg := err.Error(); !strings.Contains(msg, exe+" did not start") || strings.Contains(msg, "This usually means") {
		t.Errorf("message %q", msg)
	}
	if _, _, err := Start(Spec{Path: filepath.Join(dir, "none")}); !errors.As(err, new(*NotFoundError)) {
		t.Errorf("missing executable: %v", err)
	}
}
