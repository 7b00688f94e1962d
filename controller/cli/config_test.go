package cli

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

func writeFile(t *testing.T, name, text string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestControllerCheckConfig: the shipped example checks out against an
// initialized data directory; each kind of mistake is refused with exit 2
// and says where.
func TestControllerCheckConfig(t *testing.T) {
	data := t.TempDir()
	if code, _, stderr := run(t, "controller", "init", "--data-dir", data); code != 0 {
		t.Fatalf("init: %d %s", code, stderr)
	}
	example, err := os.ReadFile("../../deploy/controller.yaml")
	if err != nil {
		t.Fatal(err)
	}
	good := writeFile(t, "controller.yaml", strings.Replace(string(example), "data_dir: /var/lib/cordon", "data_dir: "+data, 1))
	code, stdout, stderr := run(t, "controller", "check-config", "--config", good, "-o", "json")
	if code != 0 {
		t.Fatalf("exit %d: %s %s", code, stdout, stderr)
	}
	var res ControllerConfigCheck
	if err := json.Unmarshal([]byte(stdout), &res); err != nil {
		t.Fatal(err)
	}
	if !res.OK || !strings.HasPrefix(res.HostKey, "SHA256:") || res.Settings["listen"] != ":7443" || res.Settings["metrics_listen"] != "127.0.0.1:9469" {
		t.Errorf("check-config -o json = %+v", res)
	}

	plugins := t.TempDir()
	for name, tc := range map[string]struct{ text, want string }{
		"unknown key":     {"data_dir: " + data + "\nlisten_address: :7443\n", ":2: listen_address: unknown key"},
		"operator flag":   {"data_dir: " + data + "\ncontroller: x:7443\n", ":2: controller: unknown key"},
		"bad listen":      {"data_dir: " + data + "\nlisten: 7443\n", `:2: listen: "7443": want host:port`},
		"bad metrics":     {"data_dir: " + data + "\nmetrics_listen: 127.0.0.1:http\n", "is not a port number"},
		"bad cloud":       {"data_dir: " + data + "\ncloud: [aws, oracle]\n", `:2: cloud: "oracle": want aws, azure or gcp`},
		"bad port":        {"data_dir: " + data + "\nlisten: \":99999\"\n", `:2: listen: ":99999": port "99999" is not a port number`},
		"bad advertise":   {"data_dir: " + data + "\nadvertise: [ctl.example:7443]\n", "an IP, not a name"},
		"not initialized": {"data_dir: " + t.TempDir() + "\n", "has no host key: run 'cordon controller init"},
		"no cloud plugin": {"data_dir: " + data + "\ncloud: [aws]\nplugin_dir: " + plugins + "\n", "cordon-plugin-aws does not exist"},
		"bad log format":  {"data_dir: " + data + "\nlog_format: xml\n", `log format "xml"`},
	} {
		t.Run(name, func(t *testing.T) {
			code, stdout, _ := run(t, "controller", "check-config", "--config", writeFile(t, "c.yaml", tc.text))
			if code != ExitUsage || !strings.Contains(stdout, "NOT OK") || !strings.Contains(stdout, tc.want) {
				t.Errorf("exit %d, %q; want %d and %q", code, stdout, ExitUsage, tc.want)
			}
		})
	}
}

// TestServeReadsConfig: serve takes its settings from --config, flags
// override them, and a bad file stops it before it touches anything.
func TestServeReadsConfig(t *testing.T) {
	p := writeFile(t, "c.yaml", "data_dir: /nonexistent/cordon\nlisten: 127.0.0.1:0\n")
	code, _, stderr := run(t, "controller", "serve", "--config", p)
	if code != ExitConfig || !strings.Contains(stderr, p+":1: data_dir: /nonexistent/cordon has no host key") {
		t.Errorf("serve with the file's data_dir: exit %d, %q", code, stderr)
	}
	other := t.TempDir()
	code, _, stderr = run(t, "controller", "serve", "--config", p, "--data-dir", other)
	if code != ExitConfig || !strings.Contains(stderr, "--data-dir "+other+" has no host key") {
		t.Errorf("--data-dir over the file: exit %d, %q", code, stderr)
	}
	code, _, stderr = run(t, "controller", "serve", "--config", p, "now")
	if code != ExitConfig || !strings.Contains(stderr, "serve takes no arguments") {
		t.Errorf("serve with an argument: exit %d, %q", code, stderr)
	}
	data := t.TempDir()
	if code, _, stderr := run(t, "controller", "init", "--data-dir", data); code != 0 {
		t.Fatalf("init: %d %s", code, stderr)
	}
	cloudCfg := writeFile(t, "c.yaml", "data_dir: "+data+"\nlisten: 127.0.0.1:0\ncloud: [aws]\nplugin_dir: "+t.TempDir()+"\n")
	code, _, stderr = run(t, "controller", "serve", "--config", cloudCfg)
	if code != ExitConfig || !strings.Contains(stderr, cloudCfg+":3: cloud: aws: cloud plugin not found") {
		t.Errorf("serve without its cloud plugin: exit %d, %q", code, stderr)
	}
	bad := writeFile(t, "c.yaml", "data_dir: /x\nlisten: :7443\nlisten: :7444\n")
	code, _, stderr = run(t, "controller", "serve", "--config", bad)
	if code != ExitConfig || !strings.Contains(stderr, bad+":3: listen: given twice") {
		t.Errorf("bad file: exit %d, %q", code, stderr)
	}
}

// TestUnitDoesNotRestartOnConfig: the controller unit's
// RestartPreventExitStatus is ExitConfig, never 2 (a Go panic, SIGABRT).
func TestUnitDoesNotRestartOnConfig(t *testing.T) {
	b, err := os.ReadFile("../../deploy/systemd/cordon-controller.service")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), "\nRestartPreventExitStatus="+strconv.Itoa(ExitConfig)+"\n") || strings.Contains(string(b), "RestartPreventExitStatus=2") {
		t.Errorf("the unit does not prevent restarts on exactly %d", ExitConfig)
	}
}

// TestInitAsRootForServiceUser: init run as root in a data directory
// owned by the service's user gives that user what it makes, so the
// service can read it; check-config refuses files of another owner.
func TestInitAsRootForServiceUser(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to own files as another user")
	}
	data := filepath.Join(t.TempDir(), "cordon")
	os.Mkdir(data, 0o700)
	const uid, gid = 54321, 54322
	if err := os.Chown(data, uid, gid); err != nil {
		t.Fatal(err)
	}
	if code, _, stderr := run(t, "controller", "init", "--data-dir", data); code != 0 {
		t.Fatalf("init: %d %s", code, stderr)
	}
	for _, name := range []string{hostKeyFile, operatorKeyFile, dbFile, evidenceDir} {
		st, err := os.Stat(filepath.Join(data, name))
		if err != nil || fileOwner(st) != uid || fileGroup(filepath.Join(data, name)) != gid {
			t.Errorf("%s: owner %v (%v), want %d:%d", name, fileOwner(st), err, uid, gid)
		}
	}
	cfg := writeFile(t, "c.yaml", "data_dir: "+data+"\n")
	if code, stdout, _ := run(t, "controller", "check-config", "--config", cfg); code != 0 {
		t.Errorf("check-config: %d %s", code, stdout)
	}
	os.Chown(filepath.Join(data, dbFile), 0, 0)
	if code, stdout, _ := run(t, "controller", "check-config", "--config", cfg); code != ExitUsage || !strings.Contains(stdout, "cordon.db belongs to uid 0, the directory to uid 54321") {
		t.Errorf("check-config with a root-owned database: %d %s", code, stdout)
	}
}
