package fwtest

import (
	"fmt"
	"os/exec"
	"regexp"
	"strings"
	"testing"
)

// Dump is a namespace's whole ruleset, one text per dump command, with
// counters stripped ("[pkts:bytes]" and "counter packets N bytes M" become
// "" and "counter") and the *-save commands' comment lines dropped.
type Dump struct {
	IPTables        string // iptables-save
	IP6Tables       string // ip6tables-save
	IPTablesLegacy  string // iptables-legacy-save
	IP6TablesLegacy string // ip6tables-legacy-save
	NFT             string // nft list ruleset
}

type section struct {
	cmd  []string
	text *string
}

func (d *Dump) sections() []section {
	return []section{
		{[]string{"iptables-save"}, &d.IPTables},
		{[]string{"ip6tables-save"}, &d.IP6Tables},
		{[]string{"iptables-legacy-save"}, &d.IPTablesLegacy},
		{[]string{"ip6tables-legacy-save"}, &d.IP6TablesLegacy},
		{[]string{"nft", "list", "ruleset"}, &d.NFT},
	}
}

// Plus returns d with each text of extra appended to the same text of d.
func (d Dump) Plus(extra Dump) Dump {
	out := d
	es := extra.sections()
	for i, s := range out.sections() {
		*s.text += *es[i].text
	}
	return out
}

// String returns every text under a "== command" header.
func (d Dump) String() string {
	var b strings.Builder
	for _, s := range d.sections() {
		fmt.Fprintf(&b, "== %s\n%s", strings.Join(s.cmd, " "), *s.text)
	}
	return b.String()
}

// Diff returns, for each text that differs from want's, the lines only in
// want ("-") and only in d ("+") with the lines around them; "" when d
// equals want.
func (d Dump) Diff(want Dump) string {
	var b strings.Builder
	ws := want.sections()
	for i, s := range d.sections() {
		if *s.text == *ws[i].text {
			continue
		}
		fmt.Fprintf(&b, "== %s\n%s", strings.Join(s.cmd, " "), lineDiff(*ws[i].text, *s.text))
	}
	return b.String()
}

var (
	saveCounters = regexp.MustCompile(` ?\[\d+:\d+\]`)
	nftCounters  = regexp.MustCompile(`counter packets \d+ bytes \d+`)
)

// takeDump dumps the ruleset of the namespace the test copy runs in.
func takeDump(t *testing.T) Dump {
	t.Helper()
	requireLabNS(t)
	var d Dump
	for _, s := range d.sections() {
		out, err := exec.Command(s.cmd[0], s.cmd[1:]...).Output()
		if err != nil {
			t.Fatalf("%s: %v", strings.Join(s.cmd, " "), err)
		}
		*s.text = normalise(s.cmd[0], string(out))
	}
	return d
}

// normalise strips counters, and the comment lines (dates, warnings) of
// the *-save commands.
func normalise(cmd, out string) string {
	if cmd == "nft" {
		return nftCounters.ReplaceAllString(out, "counter")
	}
	var b strings.Builder
	for _, l := range strings.SplitAfter(out, "\n") {
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		b.WriteString(saveCounters.ReplaceAllString(l, ""))
	}
	return b.String()
}

// lineDiff shows how b differs from a, line by line, with up to two
// unchanged lines of context around each change.
func lineDiff(a, b string) string {
	x, y := strings.SplitAfter(a, "\n"), strings.SplitAfter(b, "\n")
	// Longest common subsequence, by dynamic programming.
	lcs := make([][]int, len(x)+1)
	for i := range lcs {
		lcs[i] = make([]int, len(y)+1)
	}
	for i := len(x) - 1; i >= 0; i-- {
		for j := len(y) - 1; j >= 0; j-- {
			if x[i] == y[j] {
				lcs[i][j] = lcs[i+1][j+1] + 1
			} else {
				lcs[i][j] = max(lcs[i+1][j], lcs[i][j+1])
			}
		}
	}
	type line struct {
		op   byte
		text string
	}
	var ls []line
	i, j := 0, 0
	for i < len(x) || j < len(y) {
		switch {
		case i < len(x) && j < len(y) && x[i] == y[j]:
			ls = append(ls, line{' ', x[i]})
			i++
			j++
		case j < len(y) && (i == len(x) || lcs[i][j+1] >= lcs[i+1][j]):
			ls = append(ls, line{'+', y[j]})
			j++
		default:
			ls = append(ls, line{'-', x[i]})
			i++
		}
	}
	near := func(k int) bool {
		for d := -2; d <= 2; d++ {
			if k+d >= 0 && k+d < len(ls) && ls[k+d].op != ' ' {
				return true
			}
		}
		return false
	}
	var sb strings.Builder
	skipped := false
	for k, l := range ls {
		if l.text == "" {
			continue
		}
		if !near(k) {
			skipped = true
			continue
		}
		if skipped {
			sb.WriteString("  …\n")
			skipped = false
		}
		text := l.text
		if !strings.HasSuffix(text, "\n") {
			text += "\t(no newline at end)\n"
		}
		sb.WriteString(string(l.op) + " " + text)
	}
	return sb.String()
}
