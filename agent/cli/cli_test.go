package cli

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestExampleConfigLoads(t *testing.T) {
	cfg := defaults()
	if err := LoadFile("../../deploy/agent.yaml", &cfg); err != nil {
		t.Fatalf("deploy/agent.yaml: %v", err)
	}
	if cfg.Controller != "cordon.ir.example.net:7443" || cfg.Plugin != "auto" || cfg.DriftInterval != 250*time.Millisecond || cfg.Key != "/var/lib/cordon-agent/agent_ed25519" {
		t.Errorf("example config read as %+v", cfg)
	}
}

func TestUnknownKeyNamesLine(t *testing.T) {
	p := filepath.Join(t.TempDir(), "agent.yaml")
	os.WriteFile(p, []byte("controller: c:7443\nplugins: iptables\n"), 0o600)
	cfg := defaults()
	err := LoadFile(p, &cfg)
	if err == nil || !strings.Contains(err.Error(), "line 2: unknown key plugins") {
		t.Fatalf("unknown key: got %v, want an error naming line 2 and the key", err)
	}
	os.WriteFile(p, []byte("controller: c:7443\nallow: 10.0.0.0/8\nkeepalive: 10\n"), 0o600)
	err = LoadFile(p, &cfg)
	if err == nil || !strings.Contains(err.Error(), `line 2: "10.0.0.0/8" is not a list`) {
		t.Fatalf("wrong type: got %v", err)
	}
}

func TestBadConfigExitsTwoAndMakesNoKey(t *testing.T) {
	dir := t.TempDir()
	key := filepath.Join(dir, "agent_ed25519")
	for name, args := range map[string][]string{
		"unknown flag":    {"--colour"},
		"no controller":   {"--key", key},
		"bad fingerprint": {"--key", key, "--controller", "c:7443", "--controller-fingerprint", "SHA256:REPLACE"},
		"bad allow":       {"--key", key, "--controller", "c:7443", "--controller-fingerprint", "SHA256:" + strings.Repeat("A", 43), "--name", "h", "--allow", "0.0.0.0/0"},
		"bad name":        {"--key", key, "--controller", "c:7443", "--controller-fingerprint", "SHA256:" + strings.Repeat("A", 43), "--name", "a/b"},
	} {
		t.Run(name, func(t *testing.T) {
			var out, errw strings.Builder
			if code := Run(context.Background(), args, &out, &errw); code != 2 {
				t.Errorf("exit %d, want 2; stderr %q", code, errw.String())
			}
			if _, err := os.Stat(key); err == nil {
				t.Fatal("a bad configuration created the agent key")
			}
		})
	}
}

func TestFlagsOverrideFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "agent.yaml")
	os.WriteFile(p, []byte("controller: from-file:7443\nname: file-name\nallow: [10.0.0.0/8]\n"), 0o600)
	cmd := NewCommand(os.Stdout, os.Stderr)
	if err := cmd.ParseFlags([]string{"--config", p, "--name", "flag-name"}); err != nil {
		t.Fatal(err)
	}
	fileCfg := defaults()
	if err := LoadFile(p, &fileCfg); err != nil {
		t.Fatal(err)
	}
	flagCfg := defaults()
	flagCfg.Name = "flag-name"
	applyFlags(cmd.Flags(), &fileCfg, &flagCfg)
	if fileCfg.Name != "flag-name" || fileCfg.Controller != "from-file:7443" || len(fileCfg.Allow) != 1 {
		t.Errorf("merged config = %+v", fileCfg)
	}
}
