package main

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/cordon-ir/cordon/pkg/policy"
)

// TestRestoreText checks the restore input of a swap from a damaged state:
// an earlier generation linked below a user's rule, a stray chain jumped to
// with a comment, a leftover of the new generation; and of putting that
// state back.
func TestRestoreText(t *testing.T) {
	eff := policy.Policy{Controllers: []policy.Endpoint{{Addr: netip.MustParseAddr("198.18.0.1"), Port: 7443}}}
	pl := newPlan(eff, []family{ipv4}, "bbbbbbbb")
	from := liveFamily{fam: ipv4,
		chains: map[string][]string{
			"CORDON-IN-aaaaaaaa":  {"-A CORDON-IN-aaaaaaaa -j DROP"},
			"CORDON-FWD-aaaaaaaa": {"-A CORDON-FWD-aaaaaaaa -j DROP"},
			"CORDON-OLD":          {`-A CORDON-OLD -m comment --comment "left \"over\"" -j CORDON-FWD-aaaaaaaa`},
			"CORDON-FWD-bbbbbbbb": {"-A CORDON-FWD-bbbbbbbb -j ACCEPT"},
		},
		builtins: map[string][]string{
			"INPUT":   {"-A INPUT -s 198.18.0.3/32 -j ACCEPT", "-A INPUT -j CORDON-IN-aaaaaaaa", `-A INPUT -m comment --comment "a b" -j CORDON-OLD`},
			"FORWARD": {"-A FORWARD -j CORDON-FWD-aaaaaaaa", "-A FORWARD -j CORDON-FWD-aaaaaaaa"},
		},
	}
	got, err := restoreText(from, pl.expected(ipv4))
	if err != nil {
		t.Fatal(err)
	}
	want := `*filter
:CORDON-IN-bbbbbbbb - [0:0]
:CORDON-OUT-bbbbbbbb - [0:0]
:CORDON-FWD-bbbbbbbb - [0:0]
-A CORDON-IN-bbbbbbbb -i lo -j ACCEPT
-A CORDON-IN-bbbbbbbb -s 198.18.0.1/32 -p tcp -m tcp --sport 7443 -m conntrack --ctstate ESTABLISHED -j ACCEPT
-A CORDON-IN-bbbbbbbb -p icmp -m icmp --icmp-type 3/4 -m conntrack --ctstate RELATED -j ACCEPT
-A CORDON-IN-bbbbbbbb -j DROP
-A CORDON-OUT-bbbbbbbb -o lo -j ACCEPT
-A CORDON-OUT-bbbbbbbb -d 198.18.0.1/32 -p tcp -m tcp --dport 7443 -m conntrack --ctstate NEW,ESTABLISHED -j ACCEPT
-A CORDON-OUT-bbbbbbbb -p tcp -m tcp --tcp-flags SYN,RST NONE -j REJECT --reject-with tcp-reset
-A CORDON-OUT-bbbbbbbb -j DROP
-A CORDON-FWD-bbbbbbbb -j DROP
-D INPUT -j CORDON-IN-aaaaaaaa
-D INPUT -m comment --comment "a b" -j CORDON-OLD
-D FORWARD -j CORDON-FWD-aaaaaaaa
-D FORWARD -j CORDON-FWD-aaaaaaaa
-I INPUT 1 -j CORDON-IN-bbbbbbbb
-I OUTPUT 1 -j CORDON-OUT-bbbbbbbb
-I FORWARD 1 -j CORDON-FWD-bbbbbbbb
-F CORDON-IN-aaaaaaaa
-F CORDON-FWD-aaaaaaaa
-F CORDON-OLD
-X CORDON-IN-aaaaaaaa
-X CORDON-FWD-aaaaaaaa
-X CORDON-OLD
COMMIT
`
	if got != want {
		t.Errorf("swap:\n%s\nwant:\n%s", got, want)
	}

	// Back: the jumps go where they were, below the user's rule.
	got, err = restoreText(pl.expected(ipv4), from)
	if err != nil {
		t.Fatal(err)
	}
	want = `*filter
:CORDON-IN-aaaaaaaa - [0:0]
:CORDON-FWD-aaaaaaaa - [0:0]
:CORDON-FWD-bbbbbbbb - [0:0]
:CORDON-OLD - [0:0]
-A CORDON-IN-aaaaaaaa -j DROP
-A CORDON-FWD-aaaaaaaa -j DROP
-A CORDON-FWD-bbbbbbbb -j ACCEPT
-A CORDON-OLD -m comment --comment "left \"over\"" -j CORDON-FWD-aaaaaaaa
-D INPUT -j CORDON-IN-bbbbbbbb
-D OUTPUT -j CORDON-OUT-bbbbbbbb
-D FORWARD -j CORDON-FWD-bbbbbbbb
-I INPUT 2 -j CORDON-IN-aaaaaaaa
-I INPUT 3 -m comment --comment "a b" -j CORDON-OLD
-I FORWARD 1 -j CORDON-FWD-aaaaaaaa
-I FORWARD 2 -j CORDON-FWD-aaaaaaaa
-F CORDON-IN-bbbbbbbb
-F CORDON-OUT-bbbbbbbb
-X CORDON-IN-bbbbbbbb
-X CORDON-OUT-bbbbbbbb
COMMIT
`
	if got != want {
		t.Errorf("back:\n%s\nwant:\n%s", got, want)
	}

	// Release: to nothing.
	got, err = restoreText(pl.expected(ipv4), liveFamily{fam: ipv4})
	if err != nil {
		t.Fatal(err)
	}
	want = `*filter
-D INPUT -j CORDON-IN-bbbbbbbb
-D OUTPUT -j CORDON-OUT-bbbbbbbb
-D FORWARD -j CORDON-FWD-bbbbbbbb
-F CORDON-IN-bbbbbbbb
-F CORDON-OUT-bbbbbbbb
-F CORDON-FWD-bbbbbbbb
-X CORDON-IN-bbbbbbbb
-X CORDON-OUT-bbbbbbbb
-X CORDON-FWD-bbbbbbbb
COMMIT
`
	if got != want {
		t.Errorf("release:\n%s\nwant:\n%s", got, want)
	}
}

// TestRestoreArg checks that what restoreArg writes splits back (as
// iptables-restore and splitRule split it) into the arguments written, and
// that it refuses what a line cannot hold.
func TestRestoreArg(t *testing.T) {
	args := []string{"-A", "X", "plain", "", "a b", "tab\there", `say "hi"`, `back\slash`, `\`, `"`, `it's`, "#hash", "-j"}
	var quoted []string
	for _, a := range args {
		q, err := restoreArg(a)
		if err != nil {
			t.Fatalf("restoreArg(%q): %v", a, err)
		}
		quoted = append(quoted, q)
	}
	line := strings.Join(quoted, " ")
	if got := splitRule(line); !slices.Equal(got, args) {
		t.Errorf("%s splits into %q, want %q", line, got, args)
	}
	for _, bad := range []string{"a\nb", "a\rb", "a\x00b"} {
		if _, err := restoreArg(bad); err == nil {
			t.Errorf("restoreArg(%q): no error", bad)
		}
	}
	lf := liveFamily{fam: ipv4, chains: map[string][]string{"CORDON-X": {"-A CORDON-X -m comment --comment \"a\nb\" -j DROP"}}}
	if _, err := restoreText(liveFamily{fam: ipv4}, lf); err == nil {
		t.Error("restoreText wrote a rule with a line break")
	}
	lf = liveFamily{fam: ipv4, chains: map[string][]string{"CORDON-X": {"-A CORDON-Y -j DROP"}}}
	if _, err := restoreText(liveFamily{fam: ipv4}, lf); err == nil {
		t.Error("restoreText wrote a rule of another chain")
	}
}
