package main

// Tests against the kernel's nf_tables and the nft binary, each inside a
// network namespace the test makes (labtest): the part that touches the
// firewall runs in a copy of this test binary started in the host's
// namespace (labtest.RunChild).

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/hashicorp/go-hclog"

	"github.com/cordon-ir/cordon/internal/netlab/labtest"
	"github.com/cordon-ir/cordon/pkg/firewall"
	"github.com/cordon-ir/cordon/pkg/policy"
)

var bg = context.Background()

func testPolicy() policy.Policy {
	return policy.Policy{
		Controllers: []policy.Endpoint{
			{Addr: netip.MustParseAddr("198.18.0.1"), Port: 7443},
			{Addr: netip.MustParseAddr("fd00:c0de::1"), Port: 7443},
		},
		Allow: []netip.Prefix{
			netip.MustParsePrefix("198.18.0.4/30"),
			netip.MustParsePrefix("fd00:c0de::4/126"),
			netip.MustParsePrefix("198.18.0.9/32"),
		},
		DNS:  []netip.Addr{netip.MustParseAddr("198.18.0.53"), netip.MustParseAddr("fd00:c0de::53")},
		DHCP: true,
	}
}

// inNamespace runs child in a copy of the test binary inside a fresh
// network namespace.
func inNamespace(t *testing.T, child func(t *testing.T)) {
	t.Helper()
	if labtest.IsChild(t) {
		child(t)
		return
	}
	l := labtest.New(t)
	h := labtest.AddHost(t, l, "host", "198.18.0.2/24", "fd00:c0de::2/64")
	labtest.RunChild(t, h)
}

func newTestPlugin(t *testing.T) *Plugin {
	return New(Options{Logger: hclog.New(&hclog.LoggerOptions{Output: testWriter{t}, Level: hclog.Debug})})
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// ruleset returns `nft list ruleset` with handles and counters as they
// are (this plugin adds none).
func ruleset(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("nft", "list", "ruleset").CombinedOutput()
	if err != nil {
		t.Fatalf("nft list ruleset: %v\n%s", err, out)
	}
	return string(out)
}

func nft(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command("nft", args...).CombinedOutput(); err != nil {
		t.Fatalf("nft %q: %v\n%s", args, err, out)
	}
}

// TestIsolateReadBack isolates, checks what the kernel holds against what
// nft(8) itself makes of the reported script, isolates again (no-op) and
// with a new policy, and releases to the ruleset as it was.
func TestIsolateReadBack(t *testing.T) {
	inNamespace(t, func(t *testing.T) {
		// Someone else's table, which must be left exactly as it is.
		nft(t, "add table inet firewalld")
		nft(t, "add chain inet firewalld filter_INPUT { type filter hook input priority 10; policy accept; }")
		nft(t, "add rule inet firewalld filter_INPUT tcp dport 22 accept")
		before := ruleset(t)
		p := newTestPlugin(t)
		a, err := p.Isolate(bg, testPolicy(), "order-1")
		if err != nil {
			t.Fatalf("Isolate: %v", err)
		}
		if want := newPlan(testPolicy().Canonical()).lines(); !slices.Equal(a.Rules, want) {
			t.Errorf("Applied.Rules =\n%s\nwant\n%s", strings.Join(a.Rules, "\n"), strings.Join(want, "\n"))
		}
		// The script Isolate reports, given to nft(8) in an empty namespace,
		// must build the very table the plugin built: nft decompiles the
		// kernel's expressions, so this checks the expressions, not only
		// the comments.
		ours := cordonTable(t, ruleset(t))
		if theirs := nftScriptTable(t, a.Rules); ours != theirs {
			t.Errorf("the table in the kernel:\n%s\nwhat nft -f makes of the reported script:\n%s", ours, theirs)
		}
		st, err := p.Status(bg)
		if err != nil || !st.Isolated || st.Digest != a.Digest || st.Partial != "" || !slices.Equal(st.Rules, a.Rules) {
			t.Errorf("Status = %+v, %v; want isolated with digest %s", st, err, a.Digest)
		}
		if st.Policy == nil || st.Policy.Digest() != testPolicy().Digest() {
			t.Errorf("Status policy = %+v, want %+v", st.Policy, testPolicy().Canonical())
		}

		isolated := ruleset(t)
		again, err := p.Isolate(bg, testPolicy(), "order-2")
		if err != nil || again.Digest != a.Digest {
			t.Errorf("Isolate with the same policy = %s, %v; want %s", again.Digest, err, a.Digest)
		}
		if r := ruleset(t); r != isolated {
			t.Errorf("Isolate with the same policy changed the ruleset:\n%s\nwas:\n%s", r, isolated)
		}

		polB := testPolicy()
		polB.Allow = []netip.Prefix{netip.MustParsePrefix("198.18.0.3/32")}
		b, err := p.Isolate(bg, polB, "order-3")
		if err != nil || b.Digest == a.Digest {
			t.Fatalf("Isolate with a new policy = %s, %v", b.Digest, err)
		}
		if st, err := p.Status(bg); err != nil || !st.Isolated || st.Policy == nil || st.Policy.Digest() != polB.Digest() {
			t.Errorf("Status after the new policy = %+v, %v", st, err)
		}
		if r := ruleset(t); strings.Contains(r, "198.18.0.4/30") || !strings.Contains(r, "198.18.0.3") {
			t.Errorf("ruleset after the new policy:\n%s", r)
		}

		n, err := p.Release(bg, "order-4")
		// A table, three chains, and the rules.
		if err != nil || n != 1+3+len(newPlan(polB.Canonical()).rules) {
			t.Errorf("Release = %d, %v", n, err)
		}
		if after := ruleset(t); after != before {
			t.Errorf("ruleset after release:\n%s\nwant as before:\n%s", after, before)
		}
		if st, err := p.Status(bg); err != nil || st.Isolated || st.Digest != "" || len(st.Rules) != 0 || st.Policy != nil || st.Partial != "" {
			t.Errorf("Status after Release = %+v, %v; want zero", st, err)
		}
		if n, err := p.Release(bg, "order-5"); err != nil || n != 0 {
			t.Errorf("second Release = %d, %v; want 0, nil", n, err)
		}
	})
}

// cordonTable returns the text of table inet cordon in `nft list ruleset`
// output.
func cordonTable(t *testing.T, rs string) string {
	t.Helper()
	i := strings.Index(rs, "table inet cordon {")
	if i < 0 {
		t.Fatalf("no table inet cordon in:\n%s", rs)
	}
	rest := rs[i:]
	if j := strings.Index(rest, "\n}\n"); j >= 0 {
		rest = rest[:j+3]
	}
	return rest
}

// nftScriptTable runs script with nft -f in a network namespace of its own
// (unshare(1); it goes when the command ends) and returns the table inet
// cordon it made.
func nftScriptTable(t *testing.T, lines []string) string {
	t.Helper()
	f := filepath.Join(t.TempDir(), "cordon.nft")
	if err := os.WriteFile(f, []byte(strings.Join(lines, "\n")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("unshare", "--net", "sh", "-c", `nft -f "$1" && nft list ruleset`, "sh", f).CombinedOutput()
	if err != nil {
		t.Fatalf("nft -f of the reported script: %v\n%s", err, out)
	}
	return cordonTable(t, string(out))
}

// TestTamperedTable changes Cordon's table behind its back, in each way
// that matters, and expects Status to say so and Isolate to put it right.
func TestTamperedTable(t *testing.T) {
	inNamespace(t, func(t *testing.T) {
		p := newTestPlugin(t)
		a, err := p.Isolate(bg, testPolicy(), "order-1")
		if err != nil {
			t.Fatalf("Isolate: %v", err)
		}
		isolated := ruleset(t)
		handle := func(role, text string) string {
			out, err := exec.Command("nft", "-a", "list", "table", "inet", "cordon").CombinedOutput()
			if err != nil {
				t.Fatalf("nft -a list: %v\n%s", err, out)
			}
			m := regexp.MustCompile(regexp.QuoteMeta(`comment "`+role+": "+text+`"`) + ` # handle (\d+)`).FindStringSubmatch(string(out))
			if m == nil {
				t.Fatalf("no rule %q in:\n%s", text, out)
			}
			return m[1]
		}
		cases := []struct {
			name   string
			tamper func()
			want   string // in Partial
		}{
			{"rule deleted", func() {
				nft(t, "delete", "rule", "inet", "cordon", "input", "handle", handle("allow", "ip saddr 198.18.0.4/30 accept"))
			}, `rule "ip saddr 198.18.0.4/30 accept" missing`},
			{"accept inserted", func() { nft(t, "insert rule inet cordon input accept") }, "chain input: rule 1 \"\" is not Cordon's"},
			{"comment that lies", func() {
				nft(t, "insert", "rule", "inet", "cordon", "input", "position", handle("loopback", "iifname lo accept"), "accept", "comment", `"loopback: iifname lo accept"`)
			}, "rule 1 \"iifname lo accept\" does not match what its comment says"},
			{"policy accept", func() { nft(t, "chain inet cordon output { policy accept; }") }, "chain output is"},
			{"chain deleted", func() {
				nft(t, "flush chain inet cordon forward")
				nft(t, "delete chain inet cordon forward")
			}, "chain forward missing"},
			{"chain added", func() { nft(t, "add chain inet cordon extra") }, "chain extra is not Cordon's"},
			// Dormant unhooks every chain: the rules stay and filter nothing.
			{"table dormant", func() { nft(t, "add table inet cordon { flags dormant; }") }, "dormant"},
			// An expression google/nftables cannot decode (rt) added to an
			// allow rule would leave its decoded expressions unchanged.
			{"undecodable expression", func() {
				nft(t, "replace", "rule", "inet", "cordon", "output", "handle", handle("allow", "ip daddr 198.18.0.4/30 accept"),
					"rt", "ip", "nexthop", "198.18.0.4/30", "accept", "comment", `"allow: ip daddr 198.18.0.4/30 accept"`)
			}, "holds expressions this plugin cannot read (rt bitwise cmp immediate)"},
		}
		for _, tc := range cases {
			tc.tamper()
			st, err := p.Status(bg)
			if err != nil || st.Isolated || !strings.Contains(st.Partial, tc.want) || st.Digest == a.Digest {
				t.Errorf("%s: Status = isolated %v, partial %q, %v; want not isolated, partial with %q", tc.name, st.Isolated, st.Partial, err, tc.want)
			}
			if st.Policy == nil || st.Policy.Digest() != testPolicy().Digest() {
				t.Errorf("%s: Status policy = %+v", tc.name, st.Policy)
			}
			b, err := p.Isolate(bg, testPolicy(), "repair")
			if err != nil || b.Digest != a.Digest {
				t.Errorf("%s: Isolate to repair = %s, %v; want %s", tc.name, b.Digest, err, a.Digest)
			}
			if r := ruleset(t); r != isolated {
				t.Errorf("%s: after the repair:\n%s\nwant:\n%s", tc.name, r, isolated)
			}
		}
	})
}

// TestIsolateRollback makes the kernel refuse the transaction of an
// Isolate and expects nothing changed: the earlier isolation stays as it
// was, or, with none, no table at all.
func TestIsolateRollback(t *testing.T) {
	inNamespace(t, func(t *testing.T) {
		p := newTestPlugin(t)
		// A rule in a chain that does not exist: the kernel refuses the
		// whole batch.
		p.beforeCommit = func(c *nftables.Conn) {
			c.AddRule(&nftables.Rule{Table: table, Chain: &nftables.Chain{Name: "no-such-chain", Table: table},
				Exprs: []expr.Any{&expr.Verdict{Kind: expr.VerdictAccept}}})
		}
		empty := ruleset(t)
		if _, err := p.Isolate(bg, testPolicy(), "order-1"); err == nil {
			t.Fatal("Isolate succeeded with a batch the kernel must refuse")
		}
		if r := ruleset(t); r != empty {
			t.Errorf("a refused Isolate left:\n%s", r)
		}
		p.beforeCommit = nil
		a, err := p.Isolate(bg, testPolicy(), "order-2")
		if err != nil {
			t.Fatal(err)
		}
		isolated := ruleset(t)
		p.beforeCommit = func(c *nftables.Conn) {
			c.AddRule(&nftables.Rule{Table: table, Chain: &nftables.Chain{Name: "no-such-chain", Table: table},
				Exprs: []expr.Any{&expr.Verdict{Kind: expr.VerdictAccept}}})
		}
		polB := testPolicy()
		polB.Allow = nil
		if _, err := p.Isolate(bg, polB, "order-3"); err == nil {
			t.Fatal("Isolate succeeded with a batch the kernel must refuse")
		}
		if r := ruleset(t); r != isolated {
			t.Errorf("a refused Isolate changed the isolation:\n%s\nwas:\n%s", r, isolated)
		}
		if st, err := p.Status(bg); err != nil || !st.Isolated || st.Digest != a.Digest {
			t.Errorf("Status = %+v, %v", st, err)
		}
	})
}

// TestRulesChangedMeanwhile: something on the host changes Cordon's table
// between each commit and its read-back; Isolate tries again, then fails
// with ErrRulesChanged and leaves its rules in place (fail closed), and
// Status says what differs.
func TestRulesChangedMeanwhile(t *testing.T) {
	inNamespace(t, func(t *testing.T) {
		p := newTestPlugin(t)
		commits := 0
		p.afterCommit = func() {
			commits++
			nft(t, "insert rule inet cordon input accept")
		}
		_, err := p.Isolate(bg, testPolicy(), "order-1")
		if !errors.Is(err, firewall.ErrRulesChanged) || commits != maxAttempts {
			t.Fatalf("Isolate = %v after %d commits; want ErrRulesChanged after %d", err, commits, maxAttempts)
		}
		st, err := p.Status(bg)
		if err != nil || st.Isolated || !strings.Contains(st.Partial, "is not Cordon's") || st.Policy == nil {
			t.Errorf("Status = %+v, %v; want the table in place, not isolated, the extra rule named", st, err)
		}
		p.afterCommit = nil
		if _, err := p.Isolate(bg, testPolicy(), "order-2"); err != nil {
			t.Errorf("Isolate once the host stops changing the rules: %v", err)
		}
	})
}

// TestInvalidPolicy: a policy that fails Validate changes nothing.
func TestInvalidPolicy(t *testing.T) {
	p := New(Options{})
	p.dial = func() (*nftables.Conn, error) { t.Fatal("dialled for an invalid policy"); return nil, nil }
	_, err := p.Isolate(bg, policy.Policy{}, "order-1")
	if !errors.Is(err, firewall.ErrInvalidPolicy) {
		t.Errorf("Isolate(empty policy) = %v, want ErrInvalidPolicy", err)
	}
}
