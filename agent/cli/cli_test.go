package cli

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestExampleConfigLoads(t *testing.T) {
	fs, cfg := agentFlags()
	if _, err := applyConfigFile(fs, true, "../../deploy/agent.yaml"); err != nil {
		t.Fatalf("deploy/agent.yaml: %v", err)
	}
	if cfg.Controller != "cordon.ir.example.net:7443" || cfg.Plugin != "auto" || cfg.DriftInterval != 250*time.Millisecond || cfg.Key != "/var/lib/cordon-agent/agent_ed25519" {
		t.Errorf("example config read as %+v", cfg)
	}
}

func writeConfig(t *testing.T, text string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "agent.yaml")
	if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestConfigErrorsNameLineAndKey(t *testing.T) {
	for name, tc := range map[string]struct{ text, want string }{
		"unknown key":    {"controller: c:7443\nplugins: iptables\n", ":2: plugins: unknown key (did you mean plugin?)"},
		"dashes":         {"controller: c:7443\n\ndrift-interval: 1s\n", ":3: drift-interval: unknown key (did you mean drift_interval?)"},
		"bad duration":   {"controller: c:7443\nkeepalive: 10\n", `:2: keepalive: "10": time: missing unit in duration`},
		"list for one":   {"name: [a, b]\n", ":1: name: takes one value, not a list"},
		"twice":          {"name: a\nkey: k\nname: b\n", ":3: name: given twice (first on line 1)"},
		"the config key": {"config: /etc/other.yaml\n", ":1: config: unknown key"},
		"not a mapping":  {"- controller\n", ":1: want a mapping"},
		"bad yaml":       {"controller: c:7443\n  name: x\n", ":2: "},
	} {
		t.Run(name, func(t *testing.T) {
			p := writeConfig(t, tc.text)
			fs, cfg := agentFlags()
			before := *cfg
			_, err := applyConfigFile(fs, true, p)
			if err == nil || !strings.Contains(err.Error(), p+tc.want) {
				t.Fatalf("got %v, want %q", err, p+tc.want)
			}
			if cfg.Controller != before.Controller || cfg.Name != before.Name {
				t.Errorf("a refused file changed settings: %+v", cfg)
			}
		})
	}
}

func TestBadConfigExitsConfigAndMakesNoKey(t *testing.T) {
	dir := t.TempDir()
	key := filepath.Join(dir, "agent_ed25519")
	for name, args := range map[string][]string{
		"unknown flag":    {"--colour"},
		"no controller":   {"--key", key},
		"bad fingerprint": {"--key", key, "--controller", "c:7443", "--controller-fingerprint", "SHA256:REPLACE"},
		"bad allow":       {"--key", key, "--controller", "c:7443", "--controller-fingerprint", "SHA256:" + strings.Repeat("A", 43), "--name", "h", "--allow", "0.0.0.0/0"},
		"bad name":        {"--key", key, "--controller", "c:7443", "--controller-fingerprint", "SHA256:" + strings.Repeat("A", 43), "--name", "a/b"},
		"bad file":        {"--key", key, "--config", writeConfig(t, "controller: c:7443\nallow: [10.0.0.0/8, nonsense]\n")},
		"an argument":     {"--key", key, "run"},
		"bad port":        {"--key", key, "--controller", "c:99999"},
		"runtime dir":     {"--key", key, "--controller", "c:7443", "--controller-fingerprint", "SHA256:" + strings.Repeat("A", 43), "--name", "h", "--runtime-dir", "/proc/cordon-no"},
		"no plugin":       {"--key", key, "--controller", "c:7443", "--controller-fingerprint", "SHA256:" + strings.Repeat("A", 43), "--name", "h", "--runtime-dir", filepath.Join(dir, "run"), "--plugin-dir", dir},
	} {
		t.Run(name, func(t *testing.T) {
			var out, errw strings.Builder
			if code := Run(context.Background(), args, &out, &errw); code != ExitConfig {
				t.Errorf("exit %d, want %d; stderr %q", code, ExitConfig, errw.String())
			}
			if _, err := os.Stat(key); err == nil {
				t.Fatal("a bad configuration created the agent key")
			}
		})
	}
}

// TestDaemonNamesFileLine: a value the daemon refuses, from the file, is
// reported at its line; the same value from the command line as a flag.
func TestDaemonNamesFileLine(t *testing.T) {
	p := writeConfig(t, "name: pay-db-01\ncontroller: no-port\n")
	var out, errw strings.Builder
	if code := Run(context.Background(), []string{"--config", p}, &out, &errw); code != ExitConfig || !strings.Contains(errw.String(), p+`:2: controller: "no-port": want host:port`) {
		t.Errorf("exit %d, %q", code, errw.String())
	}
	errw.Reset()
	if code := Run(context.Background(), []string{"--config", p, "--controller", "also-no-port"}, &out, &errw); code != ExitConfig || !strings.Contains(errw.String(), `--controller "also-no-port": want host:port`) {
		t.Errorf("exit %d, %q", code, errw.String())
	}
}

func TestFlagsOverrideFile(t *testing.T) {
	p := writeConfig(t, "controller: from-file:7443\nname: file-name\nallow: [10.0.0.0/8, 10.1.0.0/16]\nlog_level: debug\n")
	fs, cfg := agentFlags()
	if err := fs.Parse([]string{"--name", "flag-name", "--allow", "192.0.2.0/24"}); err != nil {
		t.Fatal(err)
	}
	if _, err := applyConfigFile(fs, true, p); err != nil {
		t.Fatal(err)
	}
	if cfg.Name != "flag-name" || cfg.Controller != "from-file:7443" || cfg.LogLevel != "debug" ||
		len(cfg.Allow) != 1 || cfg.Allow[0] != "192.0.2.0/24" {
		t.Errorf("merged config = %+v", cfg)
	}
	// Without the flag, the file's list replaces the default.
	fs, cfg = agentFlags()
	if _, err := applyConfigFile(fs, true, p); err != nil {
		t.Fatal(err)
	}
	if strings.Join(cfg.Allow, ",") != "10.0.0.0/8,10.1.0.0/16" {
		t.Errorf("allow from the file = %v", cfg.Allow)
	}
}

// TestReleaseReadsAgentConfig: release takes only some of the daemon's
// flags, yet reads the daemon's whole file, and still refuses unknown keys.
func TestReleaseReadsAgentConfig(t *testing.T) {
	pin := strings.Repeat("ab", 32)
	p := writeConfig(t, "controller: c:7443\ncontroller_fingerprint: SHA256:abc\nname: pay-db-01\ndrift_interval: 1s\nplugin: nftables\nplugin_sha256: "+pin+"\n")
	cmd := newReleaseCmd(os.Stdout, os.Stderr)
	if _, err := applyConfigFile(cmd.Flags(), false, p); err != nil {
		t.Fatal(err)
	}
	for flag, want := range map[string]string{"controller-fingerprint": "SHA256:abc", "plugin": "nftables", "plugin-sha256": pin, "name": "pay-db-01"} {
		if f := cmd.Flags().Lookup(flag); f == nil || f.Value.String() != want {
			t.Errorf("release did not read %s from the file (%v): the break-glass release must run the pinned plugin", flag, f)
		}
	}
	bad := writeConfig(t, "nmae: pay-db-01\n")
	if _, err := applyConfigFile(cmd.Flags(), false, bad); err == nil || !strings.Contains(err.Error(), ":1: nmae: unknown key") {
		t.Errorf("release accepted an unknown key: %v", err)
	}
}

func TestCheckConfig(t *testing.T) {
	dir := t.TempDir()
	plugins := filepath.Join(dir, "plugins")
	os.Mkdir(plugins, 0o755)
	os.WriteFile(filepath.Join(plugins, "cordon-plugin-iptables"), []byte("#!/bin/sh\n"), 0o755)
	fp := "SHA256:" + strings.Repeat("A", 43)
	good := writeConfig(t, "controller: c.example:7443\ncontroller_fingerprint: "+fp+"\nname: pay-db-01\nenroll_token: cdn-secret\n"+
		"key: "+filepath.Join(dir, "agent_ed25519")+"\nplugin: iptables\nplugin_dir: "+plugins+"\nallow: [10.20.0.0/24]\n")

	var out, errw strings.Builder
	if code := Run(context.Background(), []string{"check-config", "--config", good, "-o", "json"}, &out, &errw); code != 0 {
		t.Fatalf("exit %d: %s %s", code, out.String(), errw.String())
	}
	var res ConfigCheck
	if err := json.Unmarshal([]byte(out.String()), &res); err != nil {
		t.Fatal(err)
	}
	if !res.OK || res.Plugin != "iptables" || res.Settings["name"] != "pay-db-01" || res.Settings["enroll_token"] != "(set)" ||
		len(res.Notes) != 2 || !strings.Contains(res.Notes[0], "makes it at first start") || !strings.Contains(res.Notes[1], "outside /var/lib/cordon-agent") {
		t.Errorf("check-config -o json = %+v", res)
	}
	if strings.Contains(out.String(), "cdn-secret") {
		t.Error("check-config printed the enrollment token")
	}
	if _, err := os.Stat(filepath.Join(dir, "agent_ed25519")); err == nil {
		t.Error("check-config made the key")
	}

	for name, tc := range map[string]struct{ text, want string }{
		"no plugin":   {"controller: c:7443\ncontroller_fingerprint: " + fp + "\nname: h\nkey: " + filepath.Join(dir, "k") + "\nplugin: nftables\nplugin_dir: " + plugins + "\n", "cordon-plugin-nftables does not exist"},
		"wrong pin":   {"controller: c:7443\ncontroller_fingerprint: " + fp + "\nname: h\nkey: " + filepath.Join(dir, "k") + "\nplugin: iptables\nplugin_dir: " + plugins + "\nplugin_sha256: " + strings.Repeat("0", 64) + "\n", ":7: plugin_sha256: " + strings.Repeat("0", 64) + ": " + plugins + "/cordon-plugin-iptables has SHA-256 "},
		"bad value":   {"controller: c:7443\ncontroller_fingerprint: SHA256:nope\n", `:2: controller_fingerprint: "SHA256:nope": want the SHA256:`},
		"bad allow":   {"controller: c:7443\ncontroller_fingerprint: " + fp + "\nname: h\nallow: [10.0.0.0/8, 10.1.2.3/8]\n", `:4: allow: allowlist entry "10.1.2.3/8" has host bits set`},
		"bad level":   {"controller: c:7443\nlog_level: verbose\n", `:2: log_level: log level "verbose"`},
		"unknown key": {"controler: c:7443\n", ":1: controler: unknown key"},
	} {
		t.Run(name, func(t *testing.T) {
			var out, errw strings.Builder
			code := Run(context.Background(), []string{"check-config", "--config", writeConfig(t, tc.text)}, &out, &errw)
			if code != 2 || !strings.Contains(out.String(), "NOT OK") || !strings.Contains(out.String(), tc.want) {
				t.Errorf("exit %d, output %q; want 2 and %q", code, out.String(), tc.want)
			}
		})
	}
}

// TestUnitDoesNotRestartOnConfig: the unit's RestartPreventExitStatus is
// the daemon's ExitConfig, never 2, which Go's runtime uses for a panic
// and for SIGABRT (the watchdog): those must be restarted.
func TestUnitDoesNotRestartOnConfig(t *testing.T) {
	b, err := os.ReadFile("../../deploy/systemd/cordon-agent.service")
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "RestartPreventExitStatus="); ok {
			got = append(got, strings.Fields(v)...)
		}
	}
	if strings.Join(got, " ") != strconv.Itoa(ExitConfig) {
		t.Errorf("RestartPreventExitStatus %q, want %d only", got, ExitConfig)
	}
}

// TestEnrollOffline: --offline writes the token for the first start, makes
// no key (an image must not carry one) and, without --name, no name.
func TestEnrollOffline(t *testing.T) {
	dir := t.TempDir()
	cfgPath, key := filepath.Join(dir, "etc", "agent.yaml"), filepath.Join(dir, "state", "agent_ed25519")
	tok := filepath.Join(dir, "token")
	os.WriteFile(tok, []byte("cdn-offline-token\n"), 0o600)
	fp := "SHA256:" + strings.Repeat("A", 43)
	args := []string{"enroll", "--offline", "--controller", "ctl.example:7443", "--controller-fingerprint", fp,
		"--token-file", tok, "--config", cfgPath, "--key", key, "--allow", "10.20.0.0/24"}
	var out, errw strings.Builder
	if code := Run(context.Background(), args, &out, &errw); code != 0 {
		t.Fatalf("exit %d: %s", code, errw.String())
	}
	if _, err := os.Stat(key); err == nil {
		t.Error("--offline made the key")
	}
	st, err := os.Stat(cfgPath)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("configuration: %v %v", st, err)
	}
	fs, cfg := agentFlags()
	if _, err := applyConfigFile(fs, true, cfgPath); err != nil {
		t.Fatal(err)
	}
	def := defaults()
	if cfg.EnrollToken != "cdn-offline-token" || cfg.Controller != "ctl.example:7443" || cfg.Key != key ||
		strings.Join(cfg.Allow, ",") != "10.20.0.0/24" || cfg.Name != def.Name {
		t.Errorf("written configuration read back as %+v", cfg)
	}
	if b, _ := os.ReadFile(cfgPath); strings.Contains(string(b), "\nname:") {
		t.Errorf("--offline without --name wrote a name:\n%s", b)
	}
	// Once written, not again.
	if code := Run(context.Background(), args, &out, &errw); code != 1 || !strings.Contains(errw.String(), "exists") {
		t.Errorf("second enroll: exit %d, %q", code, errw.String())
	}
	// Token on standard input; both forms at once refused.
	for _, tc := range []struct {
		args []string
		code int
	}{
		{[]string{"enroll", "--offline", "--controller", "c:1", "--controller-fingerprint", fp, "--token-file", "-", "--config", filepath.Join(dir, "b.yaml")}, 0},
		{[]string{"enroll", "--offline", "--controller", "c:1", "--controller-fingerprint", fp, "--token", "x", "--token-file", tok, "--config", filepath.Join(dir, "c.yaml")}, 2},
		{[]string{"enroll", "--offline", "--controller", "c:1", "--controller-fingerprint", fp, "--config", filepath.Join(dir, "d.yaml")}, 2},
	} {
		cmd := NewCommand(&out, &errw)
		cmd.SetArgs(tc.args)
		cmd.SetIn(strings.NewReader("cdn-from-stdin\n"))
		err := cmd.Execute()
		if (err == nil) != (tc.code == 0) {
			t.Errorf("%v: %v", tc.args, err)
		}
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "b.yaml")); !strings.Contains(string(b), "enroll_token: cdn-from-stdin") {
		t.Errorf("token from stdin not written:\n%s", b)
	}
}
