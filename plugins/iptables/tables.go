package main

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/coreos/go-iptables/iptables"
)

// ipTables is one family's iptables as the plugin uses it: the part of
// go-iptables it reads with and makes single changes with, and the
// family's iptables-restore for batches, so that tests can wrap the real
// thing (to inject a failure at a chosen step, for instance). *xtables
// implements it.
type ipTables interface {
	List(table, chain string) ([]string, error)
	ListChains(table string) ([]string, error)
	ChainExists(table, chain string) (bool, error)
	ClearChain(table, chain string) error
	DeleteChain(table, chain string) error
	Delete(table, chain string, rulespec ...string) error
	// Restore runs iptables-restore --noflush with rules as its input
	// (restoreText): each table in it changes in one commit, or not at all.
	Restore(rules string) error
	// Concurrent reports whether commands may run at once. iptables-nft
	// takes no lock; iptables-legacy serialises every command, reads
	// included, on the xtables lock, and one that finds it held sleeps
	// (a second by default) before it tries again.
	Concurrent() bool
}

// xtables is one family's iptables: go-iptables for reading, existence
// checks and single changes, and the family's iptables-restore for
// batches. go-iptables runs one process per rule and has no batch, and a
// batch is what makes a change atomic: iptables-restore hands a table's
// changes to the kernel as one commit (one replaced table blob with
// iptables-legacy, one nf_tables transaction with iptables-nft), so the
// firewall is never half changed, and a process killed before the commit
// changes nothing.
type xtables struct {
	*iptables.IPTables
	path        string // the iptables command go-iptables runs
	restorePath string // its iptables-restore (commands)
	wait        int    // seconds to wait for the xtables lock
	restoreWait bool   // iptables-restore takes --wait (1.6.2 and later)
	nft         bool   // iptables-nft, which takes no lock
}

var _ ipTables = (*xtables)(nil)

// openIPTables returns family f's iptables and iptables-restore, waiting up
// to wait for the xtables lock (iptables --wait SECONDS; rounded up to whole
// seconds, at least 1), after checking that the filter table can be listed.
func openIPTables(f family, wait time.Duration) (*xtables, error) {
	secs := int((wait + time.Second - 1) / time.Second)
	if secs < 1 {
		secs = 1
	}
	path, restore, err := commands(f)
	if err != nil {
		return nil, err
	}
	ipt, err := iptables.New(iptables.IPFamily(f.proto()), iptables.Timeout(secs), iptables.Path(path))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", f.command(), err)
	}
	v1, v2, v3 := ipt.GetIptablesVersion()
	// go-iptables ran --version but keeps the mode to itself.
	version, err := exec.Command(path, "--version").Output()
	if err != nil {
		return nil, fmt.Errorf("%s --version: %w", path, err)
	}
	x := &xtables{IPTables: ipt, path: path, restorePath: restore, wait: secs,
		restoreWait: slices.Compare([]int{v1, v2, v3}, []int{1, 6, 2}) >= 0,
		nft:         strings.Contains(string(version), "(nf_tables)")}
	if _, err := ipt.List(filterTable, "INPUT"); err != nil {
		return nil, tab{fam: f, ipt: x, wait: wait}.wrap(err, "list the filter table")
	}
	return x, nil
}

// commands returns the paths of family f's iptables, as PATH finds it, and
// of its iptables-restore: the one in the same directory, so that both reach
// the same backend (nf_tables or legacy), or else the first in PATH. The
// two come in the same package; without either, the family does not work.
func commands(f family) (ipt, restore string, err error) {
	ipt, err = exec.LookPath(f.command())
	if err != nil {
		return "", "", fmt.Errorf("%s: %w", f.command(), err)
	}
	name := f.command() + "-restore"
	if st, err := os.Stat(filepath.Join(filepath.Dir(ipt), name)); err == nil && !st.IsDir() && st.Mode()&0o111 != 0 {
		return ipt, filepath.Join(filepath.Dir(ipt), name), nil
	}
	restore, err = exec.LookPath(name)
	if err != nil {
		return "", "", fmt.Errorf("%s: %w", name, err)
	}
	return ipt, restore, nil
}

// restoreErrLine finds the line number iptables-restore names in its errors
// ("Error occurred at line: 6", "line 3: CHAIN_DEL failed …").
var restoreErrLine = regexp.MustCompile(`line:? (\d+)`)

// Restore runs iptables-restore --noflush --wait SECONDS with rules as its
// input. Its error carries what iptables-restore said, and the input line
// it names.
func (x *xtables) Restore(rules string) error {
	args := []string{"--noflush"}
	if x.restoreWait {
		args = append(args, "--wait", strconv.Itoa(x.wait))
	}
	cmd := exec.Command(x.restorePath, args...)
	cmd.Stdin = strings.NewReader(rules)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		msg := strings.ReplaceAll(strings.TrimSpace(out.String()), "\n", " ")
		if m := restoreErrLine.FindStringSubmatch(msg); m != nil {
			lines := strings.Split(rules, "\n")
			if n, _ := strconv.Atoi(m[1]); n >= 1 && n <= len(lines) {
				msg += fmt.Sprintf(" (line %d: %q)", n, lines[n-1])
			}
		}
		return fmt.Errorf("%s %s: %w: %s", x.restorePath, strings.Join(args, " "), err, msg)
	}
	return nil
}

// Concurrent reports whether this is iptables-nft.
func (x *xtables) Concurrent() bool { return x.nft }

// errLockHeld marks a command that gave up waiting for the xtables lock.
var errLockHeld = errors.New("xtables lock held by another program")

// tab is one family's iptables with errors that say what was being done.
type tab struct {
	fam  family
	ipt  ipTables
	wait time.Duration
}

func (t tab) wrap(err error, format string, args ...any) error {
	if err == nil {
		return nil
	}
	what := fmt.Sprintf(format, args...)
	if strings.Contains(err.Error(), "xtables lock") {
		return fmt.Errorf("%s: %s: %w for more than %s: %w", t.fam.command(), what, errLockHeld, t.wait, err)
	}
	return fmt.Errorf("%s: %s: %w", t.fam.command(), what, err)
}

// restore applies rules (restoreText) in one commit.
func (t tab) restore(rules string) error {
	return t.wrap(t.ipt.Restore(rules), "restore")
}

func (t tab) flush(c string) error {
	return t.wrap(t.ipt.ClearChain(filterTable, c), "flush chain %s", c)
}

func (t tab) deleteChain(c string) error {
	return t.wrap(t.ipt.DeleteChain(filterTable, c), "delete chain %s", c)
}

// deleteRule deletes the first rule matching an "-A CHAIN …" line.
func (t tab) deleteRule(rule string) error {
	f := splitRule(rule)
	if len(f) < 3 || f[0] != "-A" {
		return fmt.Errorf("%s: malformed rule %q", t.fam.command(), rule)
	}
	return t.wrap(t.ipt.Delete(filterTable, f[1], f[2:]...), "delete %q", rule)
}

// rules lists chain c's "-A" lines.
func (t tab) rules(c string) ([]string, error) {
	lines, err := t.ipt.List(filterTable, c)
	if err != nil {
		return nil, t.wrap(err, "list chain %s", c)
	}
	var out []string
	for _, l := range lines {
		if strings.HasPrefix(l, "-A ") {
			out = append(out, l)
		}
	}
	return out, nil
}

// read returns Cordon's chains and the rules of INPUT, OUTPUT and FORWARD.
// It lists the whole table once (iptables -S: the one way to find every
// Cordon chain, linked or not), then each chain it needs.
func (t tab) read() (liveFamily, error) {
	chains, err := t.ipt.ListChains(filterTable)
	if err != nil {
		return liveFamily{fam: t.fam}, t.wrap(err, "list chains")
	}
	var ours []string
	for _, c := range chains {
		if strings.HasPrefix(c, ChainPrefix) {
			ours = append(ours, c)
		}
	}
	return t.readChains(ours, nil)
}

// readChains returns the rules of INPUT, OUTPUT and FORWARD and of the
// Cordon chains named in chains, listing only those, and of each chain in
// gone that exists after all: what checking a change needs once it knows
// which chains there should be, without listing the whole table.
func (t tab) readChains(chains, gone []string) (liveFamily, error) {
	lf := liveFamily{fam: t.fam, chains: map[string][]string{}, builtins: map[string][]string{}}
	var err error
	for _, b := range builtins {
		if lf.builtins[b], err = t.rules(b); err != nil {
			return lf, err
		}
	}
	for _, c := range chains {
		if lf.chains[c], err = t.rules(c); err != nil {
			return lf, err
		}
	}
	for _, c := range gone {
		ok, err := t.ipt.ChainExists(filterTable, c)
		if err != nil {
			return lf, t.wrap(err, "check chain %s", c)
		}
		if !ok {
			continue
		}
		if lf.chains[c], err = t.rules(c); err != nil {
			return lf, err
		}
	}
	return lf, nil
}
