// Command demo runs Cordon's main job on real kernels, step by step, in
// network namespaces it makes and removes: a controller, a card-data host
// pay-db-01 serving TCP on port 8080, and an outside host. It isolates
// pay-db-01, shows that nothing gets in or out any more while the
// controller still talks to it, downloads and verifies the evidence, and
// releases the host. Run it as root with 'make demo'.
package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"time"

	"github.com/cordon-ir/cordon/controller/api"
	"github.com/cordon-ir/cordon/internal/netlab"
	"github.com/cordon-ir/cordon/internal/stage"
)

func main() {
	bin := flag.String("bin", "bin", "directory with cordon, cordon-agent and the firewall plugins ('make build' puts them in bin)")
	flag.Parse()
	if err := netlab.Available(); err != nil {
		fmt.Fprintf(os.Stderr, "demo: %v: run it as root ('sudo make demo'); it only touches namespaces it makes\n", err)
		os.Exit(1)
	}
	if err := run(*bin); err != nil {
		fmt.Fprintf(os.Stderr, "\ndemo FAILED: %v\n", err)
		os.Exit(1)
	}
	fmt.Println("\nDemo complete: pay-db-01 was contained with its evidence kept, then released as it was.")
}

type demo struct {
	s    *stage.Stage
	work string
	n    int
}

func (d *demo) step(format string, args ...any) {
	d.n++
	title := fmt.Sprintf("%d. %s", d.n, fmt.Sprintf(format, args...))
	if isTerminal(os.Stdout) {
		title = "\033[1m" + title + "\033[0m"
	}
	fmt.Println("\n" + title)
}

func isTerminal(f *os.File) bool {
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

// cordon shows and runs an operator command.
func (d *demo) cordon(args ...string) (string, error) {
	fmt.Printf("   $ cordon %s\n", quote(args))
	out, errOut, code := d.s.Cordon(args...)
	indent(out)
	indent(errOut)
	if code != 0 {
		return out, fmt.Errorf("cordon %s: exit status %d", args[0], code)
	}
	return out, nil
}

func quote(args []string) string {
	var q []string
	for _, a := range args {
		if strings.ContainsAny(a, " \"'") {
			a = "\"" + a + "\""
		}
		q = append(q, a)
	}
	return strings.Join(q, " ")
}

func indent(s string) {
	s = strings.TrimRight(s, "\n")
	if s == "" {
		return
	}
	for _, l := range strings.Split(s, "\n") {
		fmt.Println("     " + l)
	}
}

// reach checks each path and compares with want.
func (d *demo) reach(want bool) error {
	type path struct {
		from  *netlab.Host
		label string
		addr  string
	}
	s := d.s
	paths := []path{
		{s.Outside, "outside  -> pay-db-01:8080  IPv4", stage.HostV4 + ":8080"},
		{s.Outside, "outside  -> pay-db-01:8080  IPv6", "[" + stage.HostV6 + "]:8080"},
		{s.Host, "pay-db-01 -> outside:9090   IPv4", stage.OutV4 + ":9090"},
		{s.Host, "pay-db-01 -> outside:9090   IPv6", "[" + stage.OutV6 + "]:9090"},
	}
	var bad []string
	for _, p := range paths {
		got := s.Reachable(p.from, p.addr)
		word := "blocked"
		if got {
			word = "reachable"
		}
		mark := "ok"
		if got != want {
			mark = "UNEXPECTED"
			bad = append(bad, p.label)
		}
		fmt.Printf("   %-34s %-9s  (%s)\n", p.label, word, mark)
	}
	if len(bad) > 0 {
		return fmt.Errorf("unexpected reachability: %s", strings.Join(bad, "; "))
	}
	return nil
}

func run(bin string) error {
	bin, err := filepath.Abs(bin)
	if err != nil {
		return err
	}
	work, err := os.MkdirTemp("", "cordon-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	// The demo runs the built binaries from a directory of its own, with
	// netprobe, its stand-in for the host's service and the attacker, which
	// is built there and not shipped.
	demoBin := filepath.Join(work, "bin")
	if err := os.Mkdir(demoBin, 0o755); err != nil {
		return err
	}
	for name, pkg := range stage.Binaries {
		if name == "cordon-plugin-leaky" {
			continue // for tests only
		}
		if !stage.Built(name) {
			if out, err := exec.Command("go", "build", "-o", filepath.Join(demoBin, name), pkg).CombinedOutput(); err != nil {
				return fmt.Errorf("build %s: %v\n%s", name, err, out)
			}
			continue
		}
		if _, err := os.Stat(filepath.Join(bin, name)); err != nil {
			return fmt.Errorf("%s missing in %s: run 'make build' first", name, bin)
		}
		if err := os.Symlink(filepath.Join(bin, name), filepath.Join(demoBin, name)); err != nil {
			return err
		}
	}
	bin = demoBin

	fmt.Println("Cordon demo: contain a compromised card-data host, keep its volatile state as evidence.")
	fmt.Println("Everything runs in private network namespaces made for this demo; your machine's own network is not touched.")
	s, err := stage.New(bin, work)
	if err != nil {
		return err
	}
	// Remove the namespaces on Ctrl-C too.
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	go func() {
		<-sig
		s.Close()
		os.Exit(130)
	}()
	defer func() {
		fmt.Println("\nCleaning up: stopping processes, removing the namespaces.")
		s.Close()
	}()
	d := &demo{s: s, work: work}
	dumpLogs := func(err error) error {
		if err != nil {
			if s.CtlLog != nil {
				fmt.Fprintf(os.Stderr, "\n--- controller log ---\n%s", s.CtlLog)
			}
			if s.AgentLog != nil {
				fmt.Fprintf(os.Stderr, "\n--- agent log ---\n%s", s.AgentLog)
			}
		}
		return err
	}
	return dumpLogs(d.play())
}

func (d *demo) play() error {
	s := d.s
	d.step("A private network: controller %s, pay-db-01 %s, outside %s (and %s, %s, %s)",
		stage.CtlV4, stage.HostV4, stage.OutV4, stage.CtlV6, stage.HostV6, stage.OutV6)
	fmt.Printf("   controller initialized: cordon controller init --data-dir %s\n", s.DataDir)
	fmt.Printf("   host key fingerprint %s, admin key %s\n", s.Fingerprint, s.OperatorKey)
	if err := s.StartController(); err != nil {
		return err
	}
	fmt.Printf("   controller serving: cordon controller serve --listen %s\n", s.CtlAddr)

	d.step("pay-db-01 runs its card-data service and its own firewall rules")
	if _, _, err := s.Serve(s.Host, "8080"); err != nil {
		return err
	}
	if _, _, err := s.Serve(s.Outside, "9090"); err != nil {
		return err
	}
	if err := stage.Restore(s.Host, "iptables-restore", stage.HostRulesV4); err != nil {
		return err
	}
	if err := stage.Restore(s.Host, "ip6tables-restore", stage.HostRulesV6); err != nil {
		return err
	}
	before, err := allRules(s)
	if err != nil {
		return err
	}
	own, err := s.Host.Output("iptables", "-S")
	if err != nil {
		return err
	}
	fmt.Println("   its own IPv4 rules (iptables -S):")
	indent(own)
	held, err := s.Hold(s.Outside, stage.HostV4+":8080")
	if err != nil {
		return err
	}
	fmt.Printf("   an attacker's session from outside is open: %s -> %s:8080\n", held.Local, stage.HostV4)

	d.step("The agent starts on pay-db-01 and enrolls with the one-time token")
	fmt.Printf("   # cordon-agent --controller %s --controller-fingerprint %s --enroll-token %s --name %s\n",
		s.CtlAddr, s.Fingerprint, s.Token, stage.HostName)
	fmt.Println("   (--plugin auto, the default: the agent picks the firewall plugin from what the host uses, and says why)")
	if err := s.StartAgent(stage.AgentOptions{Token: s.Token, Plugin: "auto"}); err != nil {
		return err
	}
	if err := s.WaitOnline(20 * time.Second); err != nil {
		return err
	}
	if _, err := d.cordon("hosts"); err != nil {
		return err
	}

	d.step("Before isolation, everything reaches everything")
	if err := d.reach(true); err != nil {
		return err
	}

	d.step("The IR lead isolates pay-db-01: snapshot first, then cut it off")
	out, err := d.cordon("isolate", "host", stage.HostName, "--reason", "card data seen leaving to an unknown host",
		"--incident", "INC-2026-042", "--wait")
	if err != nil {
		return err
	}
	if !strings.Contains(out, "isolated: rules verified") {
		return fmt.Errorf("isolation not reported verified")
	}

	d.step("After isolation, nothing gets in or out, over IPv4 or IPv6")
	if err := d.reach(false); err != nil {
		return err
	}
	got, err := held.Send("exfil-chunk-1")
	if err != nil {
		return err
	}
	if strings.HasPrefix(got, "timeout") {
		fmt.Println("   the attacker's session opened before isolation sends data: no answer, the session is cut")
	} else {
		return fmt.Errorf("the session opened before isolation still carries data: %q", got)
	}

	d.step("The controller still talks to the agent")
	out, err = d.cordon("hosts", "-o", "json")
	if err != nil {
		return err
	}
	var hosts []api.Host
	if err := json.Unmarshal([]byte(out), &hosts); err != nil || len(hosts) != 1 || !hosts[0].Online || hosts[0].State != "isolated" {
		return fmt.Errorf("controller does not see pay-db-01 online and isolated: %v %+v", err, hosts)
	}
	fmt.Println("   -> pay-db-01 is online and isolated")
	cordonTable, err := s.Host.Output("nft", "list", "table", "inet", "cordon")
	if err != nil {
		return fmt.Errorf("Cordon's table: %w", err)
	}
	fmt.Println("   Cordon's rules on pay-db-01 (nft list table inet cordon), one table of its own:")
	indent(cordonTable)

	d.step("The forensic team lists, downloads and verifies the evidence, with the controller's signed receipt")
	out, err = d.cordon("snapshots", "--host", stage.HostName, "-o", "json")
	if err != nil {
		return err
	}
	var snaps []api.Snapshot
	if err := json.Unmarshal([]byte(out), &snaps); err != nil || len(snaps) == 0 {
		return fmt.Errorf("no snapshot listed: %v", err)
	}
	dir := filepath.Join(d.work, "evidence")
	os.MkdirAll(dir, 0o700)
	if _, err := d.cordon("snapshot", "download", snaps[0].ID, "--out", dir); err != nil {
		return err
	}
	file := filepath.Join(dir, snaps[0].FileName)
	out, err = d.cordon("snapshot", "verify", file)
	if err != nil {
		return err
	}
	if !strings.Contains(out, "receipt: signed by the controller") {
		return fmt.Errorf("verify did not check the controller's receipt")
	}
	if _, err := d.cordon("snapshot", "custody", snaps[0].ID); err != nil {
		return err
	}
	if err := sshKeygenVerify(file, s.AgentKey+".pub"); err != nil {
		return err
	}

	d.step("The host is released: Cordon's rules go, the host's own rules stay as they were")
	if _, err := d.cordon("release", "host", stage.HostName, "--reason", "host imaged, credentials rotated", "--wait"); err != nil {
		return err
	}
	after, err := allRules(s)
	if err != nil {
		return err
	}
	if after != before {
		return fmt.Errorf("rules after release differ from before:\n%s\n---\n%s", before, after)
	}
	fmt.Println("   iptables-save, ip6tables-save and nft list ruleset are identical to before isolation")
	if err := d.reach(true); err != nil {
		return err
	}
	return nil
}

// sshKeygenVerify shows that stock OpenSSH accepts the manifest signature.
func sshKeygenVerify(bundle, pubFile string) error {
	dir, err := os.MkdirTemp("", "cordon-verify-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	if out, err := exec.Command("tar", "-xzf", bundle, "-C", dir, "manifest.json", "manifest.json.sig").CombinedOutput(); err != nil {
		return fmt.Errorf("tar: %v %s", err, out)
	}
	pub, err := os.ReadFile(pubFile)
	if err != nil {
		return err
	}
	f := strings.Fields(string(pub))
	signers := filepath.Join(dir, "allowed_signers")
	os.WriteFile(signers, []byte(stage.HostName+` namespaces="cordon-evidence" `+f[0]+" "+f[1]+"\n"), 0o600)
	fmt.Println("   $ ssh-keygen -Y verify -f allowed_signers -I pay-db-01 -n cordon-evidence -s manifest.json.sig < manifest.json")
	man, err := os.ReadFile(filepath.Join(dir, "manifest.json"))
	if err != nil {
		return err
	}
	cmd := exec.Command("ssh-keygen", "-Y", "verify", "-f", signers, "-I", stage.HostName, "-n", "cordon-evidence", "-s", filepath.Join(dir, "manifest.json.sig"))
	cmd.Stdin = bytes.NewReader(man)
	out, err := cmd.CombinedOutput()
	indent(string(out))
	if err != nil {
		return fmt.Errorf("ssh-keygen refused the signature: %v", err)
	}
	return nil
}

// allRules returns the host's whole ruleset: iptables-save and
// ip6tables-save (stage.Rules) and nft list ruleset, counters stripped.
func allRules(s *stage.Stage) (string, error) {
	r, err := stage.Rules(s.Host)
	if err != nil {
		return "", err
	}
	nft, err := s.Host.Output("nft", "list", "ruleset")
	if err != nil {
		return "", err
	}
	return r + "== nft list ruleset\n" + nftCounters.ReplaceAllString(nft, "counter"), nil
}

// nftCounters matches the counts nft prints in a counter statement.
var nftCounters = regexp.MustCompile(`counter packets \d+ bytes \d+`)
