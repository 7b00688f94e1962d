package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestExampleConfigLoads(t *testing.T) {
	cfg := defaults()
	if err := LoadFile("../../deploy/agent.yaml", &cfg); err != nil {
		t.Fatalf("deploy/agent.yaml: %v", err)
	}
	if cfg.Controller != "cordon.ir.example.net:7443" || cfg.Plugin != "iptables" || cfg.Key != "/var/lib/cordon-agent/agent_ed25519" {
		t.Errorf("example config read as %+v", cfg)
	}
}

func TestUnknownKeyNamesLine(t *testing.T) {
	p := filepath.Join(t.TempDir(), "agent.yaml")
	os.WriteFile(p, []byte("controller: c:7443\nplugins: iptables\n"), 0o600)
	cfg := defaults()
	err := LoadFile(p, &cfg)
	if err == nil || !strings.Contains(err.Error(), "line 2") || !strings.Contains(err.Error(), "plugins") {
		t.Fatalf("unknown key: got %v, want an error naming line 2 and the key", err)
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
