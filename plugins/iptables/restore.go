package main

import (
	"fmt"
	"strconv"
	"strings"
)

// restoreText returns the input of iptables-restore --noflush that turns
// Cordon's rules in the filter table from what from describes into what to
// describes (each a liveFamily: Cordon chains, and INPUT, OUTPUT and
// FORWARD), in one commit. It touches nothing else:
//
//  1. each chain of to is declared (":NAME - [0:0]"), which creates it, or
//     flushes it if it exists (damaged leftovers of the same generation
//     are simply rebuilt), and its rules are appended;
//  2. every jump to a Cordon chain that from has in INPUT, OUTPUT and
//     FORWARD is deleted, by its rule text;
//  3. each of to's jumps is inserted at its position in to, in ascending
//     order (position 1 for a plan; where they were for a state put back);
//  4. every chain of from that to has not is flushed, then deleted.
//
// With to empty, it removes every Cordon jump and chain from describes.
// Rules are rewritten argument by argument with restoreArg's quoting.
func restoreText(from, to liveFamily) (string, error) {
	var (
		b    strings.Builder
		errs []error
	)
	line := func(args ...string) {
		for i, a := range args {
			q, err := restoreArg(a)
			if err != nil {
				errs = append(errs, err)
			}
			if i > 0 {
				b.WriteByte(' ')
			}
			b.WriteString(q)
		}
		b.WriteByte('\n')
	}
	// rule writes op (-A, -D, -I) for an "-A CHAIN …" line of chain c,
	// with the position after the chain when pos > 0.
	rule := func(op, c string, r string, pos int) {
		f := splitRule(r)
		if len(f) < 3 || f[0] != "-A" || f[1] != c {
			errs = append(errs, fmt.Errorf("malformed rule %q of chain %s", r, c))
			return
		}
		args := []string{op, c}
		if pos > 0 {
			args = append(args, strconv.Itoa(pos))
		}
		line(append(args, f[2:]...)...)
	}
	chain := func(c string) string {
		if c == "" || strings.ContainsAny(c, " \t\r\n\"\\") {
			errs = append(errs, fmt.Errorf("chain name %q cannot be written to iptables-restore", c))
		}
		return c
	}

	b.WriteString("*" + filterTable + "\n")
	keep := to.sortedChains()
	for _, c := range keep {
		b.WriteString(":" + chain(c) + " - [0:0]\n")
	}
	for _, c := range keep {
		for _, r := range to.chains[c] {
			rule("-A", c, r, 0)
		}
	}
	for _, bi := range builtins {
		js, _ := from.jumps(bi)
		for _, j := range js {
			rule("-D", bi, j, 0)
		}
	}
	for _, bi := range builtins {
		js, pos := to.jumps(bi)
		for k, j := range js {
			rule("-I", bi, j, pos[k])
		}
	}
	gone := removed(from, to)
	for _, c := range gone {
		line("-F", chain(c))
	}
	for _, c := range gone {
		line("-X", c)
	}
	b.WriteString("COMMIT\n")
	if len(errs) > 0 {
		return "", fmt.Errorf("%s: cannot write iptables-restore input: %w", from.fam.command(), errs[0])
	}
	return b.String(), nil
}

// restoreArg quotes one argument of a rule line as iptables-restore parses
// it (and as iptables -S prints it, see splitRule): in double quotes, with
// '"' and '\' escaped by a backslash, when it is empty or holds a blank, a
// quote or a backslash; as it is otherwise. A line break cannot be written
// at all: iptables-restore reads a line at a time.
func restoreArg(s string) (string, error) {
	if strings.ContainsAny(s, "\n\r\x00") {
		return "", fmt.Errorf("argument %q has a line break or NUL", s)
	}
	if s != "" && !strings.ContainsAny(s, " \t\"\\") {
		return s, nil
	}
	var b strings.Builder
	b.WriteByte('"')
	for i := 0; i < len(s); i++ {
		if s[i] == '"' || s[i] == '\\' {
			b.WriteByte('\\')
		}
		b.WriteByte(s[i])
	}
	b.WriteByte('"')
	return b.String(), nil
}

// removed returns the chains of from that to has not.
func removed(from, to liveFamily) []string {
	var out []string
	for _, c := range from.sortedChains() {
		if _, ok := to.chains[c]; !ok {
			out = append(out, c)
		}
	}
	return out
}
