package main

import (
	"cmp"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/cordon-ir/cordon/pkg/policy"
)

// evaluation is what the live rules say about isolation.
type evaluation struct {
	// empty: no Cordon chain and no jump to one in any family.
	empty bool
	// gen is the generation the live rules are measured against: the one
	// with the most pieces present.
	gen string
	// pol is the effective policy the rules of generation gen enforce, read
	// back from them (reconstruct); zero when there is no generation.
	pol policy.Policy
	// problems lists what differs from a complete, sole generation gen;
	// none means the host is isolated by it.
	problems []string
}

// evaluate measures the live rules of every family in use against the
// generation most present in them. The expected rules are rebuilt from the
// policy the live rules themselves enforce (reconstruct); since the
// generation is a digest of that policy, a rule removed from or added to
// every chain is caught too.
func evaluate(live []liveFamily) evaluation {
	pieces := map[string]int{}
	anything := false
	for _, lf := range live {
		for c := range lf.chains {
			anything = true
			if g, ok := genOf(c); ok {
				pieces[g]++
			}
		}
		for _, b := range builtins {
			js, _ := lf.jumps(b)
			for _, j := range js {
				anything = true
				if g, ok := genOf(ruleTarget(j)); ok {
					pieces[g]++
				}
			}
		}
	}
	if !anything {
		return evaluation{empty: true}
	}
	gens := slices.SortedFunc(maps.Keys(pieces), func(a, b string) int {
		return cmp.Or(cmp.Compare(pieces[b], pieces[a]), cmp.Compare(a, b))
	})
	if len(gens) == 0 {
		ev := evaluation{}
		for _, lf := range live {
			ev.problems = append(ev.problems, strays(lf, nil)...)
		}
		return ev
	}
	ev := evaluation{gen: gens[0]}
	if len(gens) > 1 {
		ev.problems = append(ev.problems, fmt.Sprintf("several generations present: %s", strings.Join(gens, ", ")))
	}
	pol := reconstruct(live, ev.gen)
	ev.pol = pol
	var fams []family
	for _, lf := range live {
		fams = append(fams, lf.fam)
	}
	want := newPlan(pol, fams, ev.gen)
	var diffs []string
	anyAbsent := false
	for _, lf := range live {
		d, absent := compareFamily(lf, want)
		diffs = append(diffs, d...)
		anyAbsent = anyAbsent || absent
	}
	// A family without any of the generation's rules also changes the
	// policy read back; that is already said.
	if g := generation(pol); g != ev.gen && !anyAbsent {
		ev.problems = append(ev.problems, fmt.Sprintf("rules of generation %s do not enforce the policy it was made for (rules were removed or added)", ev.gen))
	}
	ev.problems = append(ev.problems, diffs...)
	return ev
}

// compareFamily lists how lf differs from what want expects of its family,
// and reports whether none of want's pieces is there at all.
func compareFamily(lf liveFamily, want plan) (problems []string, absent bool) {
	var missing, other []string
	pieces := 0
	for _, c := range want.chains[lf.fam] {
		got, ok := lf.chains[c.name]
		if !ok {
			missing = append(missing, fmt.Sprintf("%s chain %s missing", lf.fam, c.name))
		} else {
			pieces++
			other = append(other, compareRules(lf.fam, c.name, got, c.rules)...)
		}
		js, pos := lf.jumps(c.builtin)
		var mine []int
		for i, j := range js {
			if j == c.jump() {
				mine = append(mine, pos[i])
			}
		}
		switch {
		case len(mine) == 0:
			missing = append(missing, fmt.Sprintf("%s %s jump missing", lf.fam, c.builtin))
		case len(mine) > 1:
			pieces++
			other = append(other, fmt.Sprintf("%s %s jumps to %s %d times", lf.fam, c.builtin, c.name, len(mine)))
		case mine[0] != 1:
			pieces++
			other = append(other, fmt.Sprintf("%s %s jump is rule %d, not the first", lf.fam, c.builtin, mine[0]))
		default:
			pieces++
		}
	}
	if pieces == 0 {
		missing = []string{fmt.Sprintf("%s rules of generation %s missing", lf.fam, want.gen)}
	}
	return append(append(missing, other...), strays(lf, want.chains[lf.fam])...), pieces == 0
}

// strays lists Cordon chains and jumps in lf that are not part of want.
func strays(lf liveFamily, want []chainPlan) []string {
	var out []string
	ours := map[string]bool{}
	for _, c := range want {
		ours[c.name] = true
	}
	for _, c := range lf.sortedChains() {
		if !ours[c] {
			out = append(out, fmt.Sprintf("%s stray chain %s", lf.fam, c))
		}
	}
	for _, b := range builtins {
		js, _ := lf.jumps(b)
		for _, j := range js {
			if !ours[ruleTarget(j)] || !slices.ContainsFunc(want, func(c chainPlan) bool { return c.jump() == j }) {
				out = append(out, fmt.Sprintf("%s stray rule %q", lf.fam, j))
			}
		}
	}
	return out
}

// compareRules describes how got differs from want, rule by rule.
func compareRules(f family, chain string, got, want []string) []string {
	if slices.Equal(got, want) {
		return nil
	}
	var out []string
	for _, w := range want {
		if !slices.Contains(got, w) {
			out = append(out, fmt.Sprintf("%s rule missing: %q", f, w))
		}
	}
	for _, g := range got {
		if !slices.Contains(want, g) {
			out = append(out, fmt.Sprintf("%s unexpected rule: %q", f, g))
		}
	}
	if len(out) == 0 {
		out = append(out, fmt.Sprintf("%s chain %s: rules out of order or repeated", f, chain))
	}
	return out
}
