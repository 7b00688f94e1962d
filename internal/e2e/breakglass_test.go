package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cordon-ir/cordon/internal/stage"
	"github.com/cordon-ir/cordon/pkg/releasetoken"
)

// TestBreakGlassRelease: a host isolated while the controller is up gets a
// release token; the controller dies; on the host's console the token
// releases it, and nothing else does: not while the agent runs (its drift
// repair would undo it), not a token edited after signing, not for another
// host, not against another pinned controller key.
func TestBreakGlassRelease(t *testing.T) {
	w := newWorld(t)
	w.restoreHostRules()
	before := w.rules(w.Host)
	w.mustServe(w.Host, "8080")
	w.startAgent(stage.AgentOptions{Token: w.Token})
	w.waitOnline()
	w.mustCordon("isolate", "host", hostName, "--reason", "break-glass test", "--wait")
	if w.Reachable(w.Outside, hostV4+":8080") {
		t.Fatal("host reachable while isolated")
	}
	tokenFile := filepath.Join(t.TempDir(), "release-token.json")
	out := w.mustCordon("release", "token", "host", hostName, "--reason", "controller maintenance", "--ttl", "30m", "--out", tokenFile)
	if !strings.Contains(out, "cordon-agent release --local --token") {
		t.Errorf("release token output: %s", out)
	}
	if audit := w.mustCordon("audit", "--host", hostName); !strings.Contains(audit, "release-token") {
		t.Errorf("audit does not record the token:\n%s", audit)
	}
	release := func(token string, extra ...string) (string, error) {
		args := append([]string{"release", "--local", "--token", token, "--controller-fingerprint", w.Fingerprint,
			"--name", hostName, "--plugin", "iptables", "--plugin-dir", w.Bin, "--runtime-dir", w.RuntimeDir}, extra...)
		out, err := w.Host.Output(filepath.Join(w.Bin, "cordon-agent"), args...)
		if err != nil {
			out += err.Error() // what the agent said on stderr
		}
		return out, err
	}
	// While the agent runs, its drift repair would undo the release.
	if out, err := release(tokenFile); err == nil || !strings.Contains(out, "a cordon-agent is running") {
		t.Errorf("local release with the agent running: %v\n%s", err, out)
	}
	w.StopAgent()
	w.StopController()

	raw, _ := os.ReadFile(tokenFile)
	var f releasetoken.File
	json.Unmarshal(raw, &f)
	edited := f
	edited.Token = strings.Replace(f.Token, "controller maintenance", "controller maintenancE", 1)
	editedFile := filepath.Join(t.TempDir(), "edited.json")
	b, _ := json.Marshal(edited)
	os.WriteFile(editedFile, b, 0o600)
	for _, tc := range []struct {
		name, token string
		extra       []string
		want        string
	}{
		{"edited token", editedFile, nil, "the signature does not verify"},
		{"another host", tokenFile, []string{"--name", "pay-db-02"}, `the token is for host "pay-db-01"`},
		{"another controller key", tokenFile, []string{"--controller-fingerprint", "SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}, "this agent trusts only the controller key"},
	} {
		if out, err := release(tc.token, tc.extra...); err == nil || !strings.Contains(out, tc.want) {
			t.Errorf("%s: %v\n%s", tc.name, err, out)
		}
		if w.Reachable(w.Outside, hostV4+":8080") {
			t.Fatalf("%s released the host", tc.name)
		}
	}
	out, err := release(tokenFile)
	if err != nil || !strings.Contains(out, "released "+hostName) {
		t.Fatalf("local release: %v\n%s", err, out)
	}
	if after := w.rules(w.Host); after != before {
		t.Errorf("host rules after the local release:\n%s\nwant as before isolation:\n%s", after, before)
	}
	if !w.Reachable(w.Outside, hostV4+":8080") {
		t.Error("host not reachable after the local release")
	}
}
