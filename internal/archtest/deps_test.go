// Package archtest keeps the house straight: what may import what
// (DESIGN.md §1).
package archtest

import (
	"os/exec"
	"strings"
	"testing"
)

const mod = "github.com/cordon-ir/cordon/"

// deps lists the module packages that pkgs link, test files excluded.
func deps(t *testing.T, pkgs ...string) []string {
	t.Helper()
	cmd := exec.Command("go", append([]string{"list", "-deps", "-f", "{{.ImportPath}}"}, pkgs...)...)
	cmd.Dir = "../.."
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	var own []string
	for _, p := range strings.Fields(string(out)) {
		if strings.HasPrefix(p, mod) {
			own = append(own, strings.TrimPrefix(p, mod))
		}
	}
	return own
}

func TestLayering(t *testing.T) {
	for _, tc := range []struct {
		pkgs      string
		forbidden []string
	}{
		// The agent runs on card-data hosts: no controller code there,
		// nor the build-time packaging (nfpm).
		{"./agent/...", []string{"controller/", "internal/packaging"}},
		{"./controller/...", []string{"internal/packaging"}},
		// Shared libraries import nothing above them.
		{"./pkg/...", []string{"agent", "controller/", "plugins/", "internal/"}},
		// Plugins speak only the plugin contract.
		{"./plugins/...", []string{"agent", "controller/"}},
		// The controller does not link the agent.
		{"./controller/...", []string{"agent"}},
	} {
		for _, d := range deps(t, tc.pkgs) {
			for _, f := range tc.forbidden {
				if strings.HasPrefix(d, f) {
					t.Errorf("%s links %s%s", tc.pkgs, mod, d)
				}
			}
		}
	}
}
