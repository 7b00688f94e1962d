package e2e

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/hiddeco/sshsig"
	"golang.org/x/crypto/ssh"

	"github.com/cordon-ir/cordon/controller/api"
	"github.com/cordon-ir/cordon/internal/netlab"
	"github.com/cordon-ir/cordon/internal/stage"
)

// TestIsolateEndToEnd is the main job: isolate a host with a service and an
// established connection, check containment both ways over IPv4 and IPv6,
// check the evidence, release, and check the host's rules are exactly as
// before.
func TestIsolateEndToEnd(t *testing.T) {
	w := newWorld(t)
	svc, svcLog := w.mustServe(w.Host, "8080")
	w.mustServe(w.Outside, "9090")

	// Before: everything reaches everything.
	paths := []struct {
		from *netlab.Host
		addr string
	}{
		{w.Outside, hostV4 + ":8080"}, {w.Outside, "[" + hostV6 + "]:8080"},
		{w.Host, outV4 + ":9090"}, {w.Host, "[" + outV6 + "]:9090"},
	}
	for _, p := range paths {
		if !w.Reachable(p.from, p.addr) {
			t.Fatalf("before isolation: %s cannot reach %s", p.from.Name, p.addr)
		}
	}
	// The host has a firewall of its own, which must come back exactly.
	w.restoreHostRules()
	before := w.rules(w.Host)
	if !strings.Contains(before, "-A INPUT -p tcp -m tcp --dport 8080 -j ACCEPT") {
		t.Fatalf("host rules not loaded:\n%s", before)
	}
	// An attacker's session, opened before isolation.
	held := w.mustHold(w.Outside, hostV4+":8080")
	if got := w.send(held, "before"); got != "echo before" {
		t.Fatalf("held connection before isolation: %q", got)
	}

	w.startAgent(stage.AgentOptions{Token: w.Token})
	w.waitOnline()

	out := w.mustCordon("isolate", "host", hostName, "--reason", "card data seen leaving", "--incident", "INC-7",
		"--allow", "198.19.0.0/16", "--wait", "-o", "json")
	var ord api.Order
	if err := json.Unmarshal([]byte(out), &ord); err != nil {
		t.Fatalf("isolate -o json: %v\n%s", err, out)
	}
	if ord.State != "done" || ord.Digest == "" || ord.SnapshotID == "" || !ord.SnapshotStored || !ord.SnapshotVerified {
		t.Fatalf("isolate order not done with stored, verified evidence: %+v", ord)
	}
	// The host tracked the outside's session (its own rules accept
	// established flows): isolation must have cut it from conntrack.
	if ord.FlowsCut == 0 {
		t.Errorf("isolation cut no tracked flow; the held session was tracked")
	}
	t.Logf("order issued -> isolation verified: %v (snapshot %v, apply %v, verify %v)",
		ord.DoneAt.Sub(ord.CreatedAt), ord.SnapshotNS, ord.ApplyNS, ord.VerifyNS)

	// Contained: nothing in or out, either family.
	for _, p := range paths {
		if w.Reachable(p.from, p.addr) {
			t.Errorf("after isolation: %s still reaches %s", p.from.Name, p.addr)
		}
	}
	// The connection opened before isolation carries no more data.
	if got := w.send(held, "after"); got != "timeout after" {
		t.Errorf("held connection after isolation: %q, want timeout", got)
	}
	if strings.Contains(svcLog.String(), ": after") {
		t.Errorf("service received data sent after isolation:\n%s", svcLog)
	}
	// The controller still sees the host, isolated.
	h, _ := w.HostState()
	if !h.Online || h.State != "isolated" || h.Digest != ord.Digest {
		t.Errorf("host after isolation: %+v", h)
	}
	// The agent tried its isolation from the host and said so.
	if audit := w.mustCordon("audit", "--host", hostName); !strings.Contains(audit, "self-test: controller answered in") ||
		!strings.Contains(audit, ":9: dropped by the host's rules") {
		t.Errorf("audit has no passing self-test:\n%s", audit)
	}

	// Evidence: listed, downloaded, verified by cordon and by stock OpenSSH.
	var snaps []api.Snapshot
	if err := json.Unmarshal([]byte(w.mustCordon("snapshots", "--host", hostName, "-o", "json")), &snaps); err != nil {
		t.Fatal(err)
	}
	if len(snaps) != 1 || snaps[0].ID != ord.SnapshotID || snaps[0].SHA256 != ord.SnapshotSHA256 || snaps[0].Size <= 0 ||
		snaps[0].TakenAt.IsZero() || !snaps[0].Verified {
		t.Fatalf("snapshots = %+v, want the order's snapshot", snaps)
	}
	bundle := filepath.Join(t.TempDir(), "bundle.tar.gz")
	w.mustCordon("snapshot", "download", ord.SnapshotID, "--out", bundle)
	h, _ = w.HostState()
	out = w.mustCordon("snapshot", "verify", bundle, "--agent-key", h.Fingerprint)
	if !strings.Contains(out, h.Fingerprint) || strings.Contains(out, "WARNING") {
		t.Errorf("verify with --agent-key does not say the signer is trusted:\n%s", out)
	}
	files := untar(t, bundle)
	var man struct {
		Sandbox string `json:"sandbox"`
		Policy  struct {
			Controllers []struct {
				Addr string `json:"addr"`
				Port int    `json:"port"`
			} `json:"controllers"`
		} `json:"policy"`
	}
	json.Unmarshal(files["manifest.json"], &man)
	if !strings.HasPrefix(man.Sandbox, "landlock ABI") || !strings.Contains(man.Sandbox, "collector process") {
		t.Errorf("manifest does not say the agent was held by Landlock and who collected: %q", man.Sandbox)
	}
	// The evidence records the policy applied right after it was taken.
	if len(man.Policy.Controllers) == 0 || man.Policy.Controllers[0].Port == 0 {
		t.Errorf("manifest does not record the isolation policy: %+v", man.Policy)
	}
	checkSSHKeygenVerify(t, files, w.AgentKey+".pub")

	// The evidence names the serving process and the pre-existing
	// connection with its PID.
	pid := svc.Process.Pid
	var sawProc, sawConn bool
	for _, rec := range jsonl(t, files["artifacts/processes.jsonl"]) {
		if num(rec["pid"]) == pid {
			sawProc = rec["name"] == "netprobe"
			if !sawProc {
				t.Errorf("service process recorded as %v", rec)
			}
		}
	}
	localPort := held.Local[strings.LastIndexByte(held.Local, ':')+1:]
	for _, rec := range jsonl(t, files["artifacts/connections.jsonl"]) {
		if rec["local_addr"] == hostV4 && num(rec["local_port"]) == 8080 && rec["remote_addr"] == outV4 &&
			strconv.Itoa(num(rec["remote_port"])) == localPort {
			sawConn = true
			if num(rec["pid"]) != pid || rec["state"] != "ESTABLISHED" {
				t.Errorf("held connection recorded as %v, want pid %d ESTABLISHED", rec, pid)
			}
		}
	}
	if !sawProc || !sawConn {
		t.Errorf("snapshot misses the service process (%v) or its held connection (%v)", sawProc, sawConn)
	}

	// Tampering with one byte of one artifact is caught and named.
	tampered := filepath.Join(t.TempDir(), "tampered.tar.gz")
	flipByte(t, bundle, tampered, "artifacts/processes.jsonl")
	_, errOut, code := w.Cordon("snapshot", "verify", tampered)
	if code == 0 || !strings.Contains(errOut, "artifacts/processes.jsonl") {
		t.Errorf("verify of a tampered bundle: exit %d, stderr %q; want failure naming artifacts/processes.jsonl", code, errOut)
	}

	// A bundle re-signed with another key, named in its own manifest, is
	// refused against the host's key and flagged without one.
	forged := filepath.Join(t.TempDir(), "forged.tar.gz")
	forge(t, bundle, forged)
	out, errOut, code = w.Cordon("snapshot", "verify", forged, "--agent-key", h.Fingerprint)
	if code == 0 || !strings.Contains(errOut, "manifest.json.sig") {
		t.Errorf("verify of a re-signed bundle with --agent-key: exit %d, stderr %q", code, errOut)
	}
	_, errOut, code = w.Cordon("snapshot", "verify", forged)
	if code == 0 || !strings.Contains(errOut, "nothing vouches for") {
		t.Errorf("verify of a bundle signed by a key only it names: exit %d, stderr %q; want a failure saying so", code, errOut)
	}

	// Release: the controller still exchanges orders with the agent, and
	// the host's rules are byte for byte what they were.
	out = w.mustCordon("release", "host", hostName, "--reason", "contained and imaged", "--wait", "-o", "json")
	if err := json.Unmarshal([]byte(out), &ord); err != nil || ord.State != "done" {
		t.Fatalf("release: %v %+v", err, ord)
	}
	if after := w.rules(w.Host); after != before {
		t.Errorf("rules after release differ from before isolation:\n--- before\n%s\n--- after\n%s", before, after)
	}
	for _, p := range paths {
		if !w.Reachable(p.from, p.addr) {
			t.Errorf("after release: %s cannot reach %s", p.from.Name, p.addr)
		}
	}
	h, _ = w.HostState()
	if h.State != "released" || !h.Online {
		t.Errorf("host after release: %+v", h)
	}
}

// untar reads a bundle into a map of path to content.
func untar(t *testing.T, path string) map[string][]byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(zr)
	out := map[string][]byte{}
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		out[h.Name] = b
	}
}

// flipByte rewrites a bundle with one byte of one file changed.
func flipByte(t *testing.T, src, dst, name string) {
	t.Helper()
	f, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	tw := tar.NewWriter(zw)
	tr := tar.NewReader(zr)
	flipped := false
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(tr)
		if h.Name == name && len(b) > 10 {
			b[len(b)/2] ^= 0x01
			flipped = true
		}
		tw.WriteHeader(h)
		tw.Write(b)
	}
	tw.Close()
	zw.Close()
	if !flipped {
		t.Fatalf("%s not found in bundle", name)
	}
	if err := os.WriteFile(dst, buf.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
}

// checkSSHKeygenVerify checks the manifest signature with stock OpenSSH.
func checkSSHKeygenVerify(t *testing.T, files map[string][]byte, pubFile string) {
	t.Helper()
	pub, err := os.ReadFile(pubFile)
	if err != nil {
		t.Fatal(err)
	}
	fields := strings.Fields(string(pub))
	dir := t.TempDir()
	signers := filepath.Join(dir, "allowed_signers")
	os.WriteFile(signers, []byte(hostName+` namespaces="cordon-evidence" `+fields[0]+" "+fields[1]+"\n"), 0o600)
	sig := filepath.Join(dir, "manifest.json.sig")
	os.WriteFile(sig, files["manifest.json.sig"], 0o600)
	cmd := exec.Command("ssh-keygen", "-Y", "verify", "-f", signers, "-I", hostName, "-n", "cordon-evidence", "-s", sig)
	cmd.Stdin = bytes.NewReader(files["manifest.json"])
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("ssh-keygen -Y verify refused the manifest signature: %v\n%s", err, out)
	}
	t.Logf("ssh-keygen -Y verify: %s", strings.TrimSpace(string(out)))
}

func jsonl(t *testing.T, b []byte) []map[string]any {
	t.Helper()
	var out []map[string]any
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("jsonl: %v: %s", err, sc.Text())
		}
		out = append(out, m)
	}
	return out
}

func num(v any) int {
	f, _ := v.(float64)
	return int(f)
}

// forge rewrites a bundle's manifest (another reason, another agent key)
// and signs it with that key, as an attacker holding the bundle could.
func forge(t *testing.T, src, dst string) {
	t.Helper()
	files := untar(t, src)
	var m map[string]any
	if err := json.Unmarshal(files["manifest.json"], &m); err != nil {
		t.Fatal(err)
	}
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	signer, _ := ssh.NewSignerFromKey(priv)
	m["reason"] = "nothing to see here"
	m["agent_key"] = strings.TrimSpace(string(ssh.MarshalAuthorizedKey(signer.PublicKey())))
	m["agent_key_fingerprint"] = ssh.FingerprintSHA256(signer.PublicKey())
	manifest, _ := json.MarshalIndent(m, "", "  ")
	sig, err := sshsig.Sign(bytes.NewReader(manifest), signer, sshsig.HashSHA512, "cordon-evidence")
	if err != nil {
		t.Fatal(err)
	}
	files["manifest.json"], files["manifest.json.sig"] = manifest, sshsig.Armor(sig)
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	tw := tar.NewWriter(zw)
	names := []string{"manifest.json", "manifest.json.sig"}
	for n := range files {
		if n != "manifest.json" && n != "manifest.json.sig" {
			names = append(names, n)
		}
	}
	for _, n := range names {
		tw.WriteHeader(&tar.Header{Name: n, Mode: 0o444, Size: int64(len(files[n])), Typeflag: tar.TypeReg})
		tw.Write(files[n])
	}
	tw.Close()
	zw.Close()
	if err := os.WriteFile(dst, buf.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
}
