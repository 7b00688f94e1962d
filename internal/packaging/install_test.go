package packaging

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// need skips the test without root or a tool, or fails it where the tests
// must run (CORDON_REQUIRE_NETNS=1, which make test sets as root).
func need(t *testing.T, tools ...string) {
	t.Helper()
	why := ""
	if os.Geteuid() != 0 {
		why = "installing into a root needs root"
	}
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil && why == "" {
			why = tool + " is not installed (scripts/deps.sh installs it)"
		}
	}
	if why == "" {
		return
	}
	if os.Getenv("CORDON_REQUIRE_NETNS") == "1" {
		t.Fatal(why)
	}
	t.Skip(why)
}

// build builds the packages of this machine's architecture once per run.
func build(t *testing.T) []Built {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "cordon-packaging-test-")
		if err != nil {
			buildErr = err
			return
		}
		buildDir = dir
		o := Options{Root: "../..", Out: filepath.Join(dir, "dist"), Version: "0.1.0~test", Arch: NativeArch()}
		if buildErr = BuildBinaries(o, filepath.Join(dir, "bin")); buildErr != nil {
			return
		}
		built, buildErr = Package(o, filepath.Join(dir, "bin"))
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return built
}

func find(t *testing.T, bs []Built, pkg, format string) string {
	t.Helper()
	for _, b := range bs {
		if b.Package == pkg && b.Format == format {
			return b.Path
		}
	}
	t.Fatalf("no %s %s built", pkg, format)
	return ""
}

var (
	buildOnce sync.Once
	buildDir  string
	built     []Built
	buildErr  error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if buildDir != "" {
		os.RemoveAll(buildDir)
	}
	os.Exit(code)
}

// TestDebInstall installs both .deb packages into a throw-away root with
// dpkg --root, runs their maintainer scripts there, and checks files,
// modes, the service user, the enabled (not started, not configured)
// units with systemd-analyze verify, then removal and purge.
func TestDebInstall(t *testing.T) {
	need(t, "dpkg", "systemd-analyze", "systemd-sysusers", "systemctl")
	bs := build(t)
	root := t.TempDir()
	if err := NewRoot(root); err != nil {
		t.Fatal(err)
	}
	out, err := Dpkg(root, "-i", find(t, bs, "cordon-agent", "deb"), find(t, bs, "cordon-controller", "deb"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "cordon-agent enroll") || !strings.Contains(out, "cordon controller init") {
		t.Errorf("the scripts did not say what to do next:\n%s", out)
	}

	uid, gid := account(t, root, "cordon")
	for _, f := range []struct {
		path     string
		mode     os.FileMode
		uid, gid int
	}{
		{"/usr/bin/cordon-agent", 0o755, 0, 0},
		{"/usr/bin/cordon", 0o755, 0, 0},
		{"/usr/lib/cordon/plugins/cordon-plugin-nftables", 0o755, 0, 0},
		{"/usr/lib/cordon/plugins/cordon-plugin-iptables", 0o755, 0, 0},
		{"/usr/lib/cordon/plugins/cordon-plugin-aws", 0o755, 0, 0},
		{"/usr/lib/cordon/plugins/cordon-plugin-azure", 0o755, 0, 0},
		{"/usr/lib/cordon/plugins/cordon-plugin-gcp", 0o755, 0, 0},
		{"/usr/lib/systemd/system/cordon-agent.service", 0o644, 0, 0},
		{"/usr/lib/systemd/system/cordon-controller.service", 0o644, 0, 0},
		{"/usr/lib/tmpfiles.d/cordon-agent.conf", 0o644, 0, 0},
		{"/usr/lib/sysusers.d/cordon-controller.conf", 0o644, 0, 0},
		{"/etc/cordon/controller.yaml", 0o644, 0, 0},
		{"/usr/share/doc/cordon-agent/agent.yaml.example", 0o644, 0, 0},
		{"/usr/share/doc/cordon-controller/aws-IAM.md", 0o644, 0, 0},
		{"/etc/cordon", 0o755 | os.ModeDir, 0, 0},
		{"/var/lib/cordon-agent", 0o700 | os.ModeDir, 0, 0},
		{"/var/lib/cordon", 0o700 | os.ModeDir, uid, gid},
	} {
		st, err := os.Lstat(filepath.Join(root, f.path))
		if err != nil {
			t.Errorf("%s: %v", f.path, err)
			continue
		}
		if st.Mode() != f.mode || owner(st) != [2]int{f.uid, f.gid} {
			t.Errorf("%s: mode %v owner %v, want %v %d:%d", f.path, st.Mode(), owner(st), f.mode, f.uid, f.gid)
		}
	}
	// Not configured, so not started: the agent's configuration is written
	// by enroll, never by the package; the units start only once their
	// configuration (agent) or data directory (controller) is there.
	for _, p := range []string{"/etc/cordon/agent.yaml", "/var/lib/cordon/host_ed25519"} {
		if _, err := os.Stat(filepath.Join(root, p)); err == nil {
			t.Errorf("the package made %s", p)
		}
	}
	unitHas(t, root, "cordon-agent.service", "ConditionPathExists=/etc/cordon/agent.yaml")
	unitHas(t, root, "cordon-controller.service", "ConditionPathExists=/var/lib/cordon/host_ed25519")
	for _, u := range []string{"cordon-agent.service", "cordon-controller.service"} {
		link, err := os.Readlink(filepath.Join(root, "etc/systemd/system/multi-user.target.wants", u))
		if err != nil || link != "/usr/lib/systemd/system/"+u {
			t.Errorf("%s not enabled: %q %v", u, link, err)
		}
	}
	// An upgrade keeps the enablement as the administrator set it.
	if out, err := exec.Command("systemctl", "--root="+root, "disable", "cordon-agent.service").CombinedOutput(); err != nil {
		t.Fatalf("systemctl --root disable: %v %s", err, out)
	}
	if _, err := Dpkg(root, "-i", find(t, bs, "cordon-agent", "deb")); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(filepath.Join(root, "etc/systemd/system/multi-user.target.wants/cordon-agent.service")); err == nil {
		t.Error("an upgrade enabled the agent the administrator had disabled")
	}
	// The installed binaries run, with the package's version.
	if v, err := exec.Command(filepath.Join(root, "usr/bin/cordon-agent"), "version").Output(); err != nil || !strings.Contains(string(v), "0.1.0~test") {
		t.Errorf("cordon-agent version: %q %v", v, err)
	}
	// The shipped controller configuration is valid as installed.
	cfg, err := os.ReadFile(filepath.Join(root, "etc/cordon/controller.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(cfg), "data_dir: /var/lib/cordon\n") {
		t.Errorf("controller.yaml has no data_dir /var/lib/cordon")
	}

	verify := func(units ...string) (string, error) {
		out, err := exec.Command("systemd-analyze", append([]string{"verify", "--root=" + root}, units...)...).CombinedOutput()
		return string(out), err
	}
	if out, err := verify("cordon-agent.service", "cordon-controller.service"); err != nil || strings.TrimSpace(out) != "" {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
	// The check can fail: a unit with an unknown setting, or whose
	// command is missing, is refused.
	broken := filepath.Join(root, "etc/systemd/system/cordon-broken.service")
	unit, _ := os.ReadFile(filepath.Join(root, "usr/lib/systemd/system/cordon-agent.service"))
	os.WriteFile(broken, []byte(strings.Replace(string(unit), "ExecStart=/usr/bin/cordon-agent", "ExecStart=/usr/bin/cordon-agnet", 1)), 0o644)
	if out, err := verify("cordon-broken.service"); err == nil {
		t.Errorf("systemd-analyze verify passed a unit whose command is missing:\n%s", out)
	}
	os.Remove(broken)

	// Removal takes the files, keeps the enablement (a package removed
	// and installed again is enabled as before), the controller's data
	// directory and the agent's configuration; purge takes the agent's
	// configuration and key, and the enablement.
	os.WriteFile(filepath.Join(root, "etc/cordon/agent.yaml"), []byte("controller: c:7443\n"), 0o600)
	os.WriteFile(filepath.Join(root, "var/lib/cordon-agent/agent_ed25519"), []byte("key"), 0o600)
	if _, err := Dpkg(root, "-r", "cordon-agent", "cordon-controller"); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"/usr/bin/cordon-agent", "/usr/bin/cordon"} {
		if _, err := os.Lstat(filepath.Join(root, p)); err == nil {
			t.Errorf("%s left after removal", p)
		}
	}
	// Installed again from the removed state: enabled as it was (the
	// controller) and as the administrator left it (the agent, disabled
	// above).
	if _, err := Dpkg(root, "-i", find(t, bs, "cordon-agent", "deb"), find(t, bs, "cordon-controller", "deb")); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(filepath.Join(root, "etc/systemd/system/multi-user.target.wants/cordon-controller.service")); err != nil {
		t.Errorf("the controller, removed and installed again, is no longer enabled: %v", err)
	}
	if _, err := os.Lstat(filepath.Join(root, "etc/systemd/system/multi-user.target.wants/cordon-agent.service")); err == nil {
		t.Error("the agent, disabled, removed and installed again, is enabled")
	}
	if _, err := Dpkg(root, "-r", "cordon-agent", "cordon-controller"); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"/etc/cordon/agent.yaml", "/var/lib/cordon", "/etc/cordon/controller.yaml"} {
		if _, err := os.Stat(filepath.Join(root, p)); err != nil {
			t.Errorf("%s gone after removal (not purge): %v", p, err)
		}
	}
	if _, err := Dpkg(root, "--purge", "cordon-agent", "cordon-controller"); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"/etc/cordon/agent.yaml", "/var/lib/cordon-agent", "/etc/cordon/controller.yaml",
		"/etc/systemd/system/multi-user.target.wants/cordon-controller.service"} {
		if _, err := os.Lstat(filepath.Join(root, p)); err == nil {
			t.Errorf("%s left after purge", p)
		}
	}
	if _, err := os.Stat(filepath.Join(root, "var/lib/cordon")); err != nil {
		t.Errorf("purge removed the controller's data directory (evidence): %v", err)
	}
}

// TestRPMContents checks the .rpm packages carry the same files with the
// same modes, and their scripts.
func TestRPMContents(t *testing.T) {
	need(t, "rpm")
	bs := build(t)
	for pkg, want := range map[string][]string{
		"cordon-agent": {"-rwxr-xr-x /usr/bin/cordon-agent", "-rwxr-xr-x /usr/lib/cordon/plugins/cordon-plugin-nftables",
			"-rw-r--r-- /usr/lib/systemd/system/cordon-agent.service", "drwx------ /var/lib/cordon-agent"},
		"cordon-controller": {"-rwxr-xr-x /usr/bin/cordon", "-rwxr-xr-x /usr/lib/cordon/plugins/cordon-plugin-aws",
			"-rw-r--r-- /etc/cordon/controller.yaml", "-rw-r--r-- /usr/lib/sysusers.d/cordon-controller.conf"},
	} {
		p := find(t, bs, pkg, "rpm")
		out, err := exec.Command("rpm", "-qp", "--queryformat", "[%{FILEMODES:perms} %{FILENAMES}\n]", p).CombinedOutput()
		if err != nil {
			t.Fatalf("rpm -qp %s: %v\n%s", p, err, out)
		}
		for _, w := range want {
			if !strings.Contains(string(out), w+"\n") {
				t.Errorf("%s: no %q in\n%s", pkg, w, out)
			}
		}
		recs, _ := exec.Command("rpm", "-qp", "--recommends", p).Output()
		if pkg == "cordon-agent" && strings.TrimSpace(string(recs)) != "(nftables or iptables)" {
			t.Errorf("%s recommends %q, want the rich dependency (nftables or iptables)", pkg, recs)
		}
		scripts, err := exec.Command("rpm", "-qp", "--scripts", p).CombinedOutput()
		if err != nil || !strings.Contains(string(scripts), "postinstall scriptlet") || !strings.Contains(string(scripts), "systemctl") {
			t.Errorf("%s scripts: %v\n%s", pkg, err, scripts)
		}
	}
	conf, _ := exec.Command("rpm", "-qp", "--configfiles", find(t, bs, "cordon-controller", "rpm")).Output()
	if strings.TrimSpace(string(conf)) != "/etc/cordon/controller.yaml" {
		t.Errorf("controller rpm configuration files: %q", conf)
	}
}

func unitHas(t *testing.T, root, unit, line string) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(root, "usr/lib/systemd/system", unit))
	if err != nil || !strings.Contains(string(b), "\n"+line+"\n") {
		t.Errorf("%s lacks %s (%v)", unit, line, err)
	}
}

// account returns a user's uid and its group's gid from the root's
// /etc/passwd and /etc/group.
func account(t *testing.T, root, name string) (uid, gid int) {
	t.Helper()
	uid, gid = -1, -1
	for file, dst := range map[string]*int{"etc/passwd": &uid, "etc/group": &gid} {
		f, err := os.Open(filepath.Join(root, file))
		if err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			fields := strings.Split(sc.Text(), ":")
			if len(fields) > 2 && fields[0] == name {
				*dst, _ = strconv.Atoi(fields[2])
			}
		}
		f.Close()
	}
	if uid <= 0 || gid <= 0 {
		t.Fatalf("no user or group %s in the root (uid %d, gid %d)", name, uid, gid)
	}
	return uid, gid
}
