package main

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/coreos/go-iptables/iptables"
)

// ipTables is the part of go-iptables the plugin uses, so that tests can wrap
// the real thing (to inject a failure at a chosen step, for instance).
// *iptables.IPTables implements it.
type ipTables interface {
	List(table, chain string) ([]string, error)
	ListChains(table string) ([]string, error)
	NewChain(table, chain string) error
	ClearChain(table, chain string) error
	DeleteChain(table, chain string) error
	RenameChain(table, oldChain, newChain string) error
	Append(table, chain string, rulespec ...string) error
	Insert(table, chain string, pos int, rulespec ...string) error
	Delete(table, chain string, rulespec ...string) error
}

// openIPTables returns go-iptables for family f, waiting up to wait for the
// xtables lock (iptables --wait SECONDS; rounded up to whole seconds, at
// least 1), after checking that the filter table can be listed.
func openIPTables(f family, wait time.Duration) (ipTables, error) {
	secs := int((wait + time.Second - 1) / time.Second)
	if secs < 1 {
		secs = 1
	}
	ipt, err := iptables.New(iptables.IPFamily(f.proto()), iptables.Timeout(secs))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", f.command(), err)
	}
	if _, err := ipt.List(filterTable, "INPUT"); err != nil {
		return nil, tab{fam: f, ipt: ipt, wait: wait}.wrap(err, "list the filter table")
	}
	return ipt, nil
}

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
	var ie *iptables.Error
	if errors.As(err, &ie) && strings.Contains(ie.Error(), "xtables lock") {
		return fmt.Errorf("%s: %s: xtables lock held by another program for more than %s: %w", t.fam.command(), what, t.wait, err)
	}
	return fmt.Errorf("%s: %s: %w", t.fam.command(), what, err)
}

func (t tab) newChain(c string) error {
	return t.wrap(t.ipt.NewChain(filterTable, c), "create chain %s", c)
}

func (t tab) flush(c string) error {
	return t.wrap(t.ipt.ClearChain(filterTable, c), "flush chain %s", c)
}

func (t tab) deleteChain(c string) error {
	return t.wrap(t.ipt.DeleteChain(filterTable, c), "delete chain %s", c)
}

func (t tab) rename(from, to string) error {
	return t.wrap(t.ipt.RenameChain(filterTable, from, to), "rename chain %s to %s", from, to)
}

// appendRule appends a rule given as an "-A CHAIN …" line.
func (t tab) appendRule(rule string) error {
	f := splitRule(rule)
	if len(f) < 3 || f[0] != "-A" {
		return fmt.Errorf("%s: malformed rule %q", t.fam.command(), rule)
	}
	return t.wrap(t.ipt.Append(filterTable, f[1], f[2:]...), "append %q", rule)
}

// insertRule inserts a rule given as an "-A CHAIN …" line at 1-based
// position pos of its chain.
func (t tab) insertRule(pos int, rule string) error {
	f := splitRule(rule)
	if len(f) < 3 || f[0] != "-A" {
		return fmt.Errorf("%s: malformed rule %q", t.fam.command(), rule)
	}
	return t.wrap(t.ipt.Insert(filterTable, f[1], pos, f[2:]...), "insert %q at %d", rule, pos)
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
func (t tab) read() (liveFamily, error) {
	lf := liveFamily{fam: t.fam, chains: map[string][]string{}, builtins: map[string][]string{}}
	chains, err := t.ipt.ListChains(filterTable)
	if err != nil {
		return lf, t.wrap(err, "list chains")
	}
	for _, b := range builtins {
		if lf.builtins[b], err = t.rules(b); err != nil {
			return lf, err
		}
	}
	for _, c := range chains {
		if !strings.HasPrefix(c, ChainPrefix) {
			continue
		}
		if lf.chains[c], err = t.rules(c); err != nil {
			return lf, err
		}
	}
	return lf, nil
}

// journal records how to undo each change Isolate makes, so that a failed
// attempt leaves the tables as it found them.
type journal struct {
	steps []undoStep
}

type undoStep struct {
	what string
	undo func() error
}

func (j *journal) add(what string, undo func() error) {
	j.steps = append(j.steps, undoStep{what, undo})
}

// rollback undoes every recorded change, last first, and joins the errors of
// those that failed.
func (j *journal) rollback() error {
	var errs []error
	for i := len(j.steps) - 1; i >= 0; i-- {
		if err := j.steps[i].undo(); err != nil {
			errs = append(errs, fmt.Errorf("undo %s: %w", j.steps[i].what, err))
		}
	}
	j.steps = nil
	return errors.Join(errs...)
}
