package main

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cordon-ir/cordon/pkg/firewall"
	"github.com/cordon-ir/cordon/pkg/policy"
)

// samplePolicy is the policy the rule text below is written for.
func samplePolicy() policy.Policy {
	return policy.Policy{
		Controllers: []policy.Endpoint{
			{Addr: netip.MustParseAddr("198.18.0.1"), Port: 7443},
			{Addr: netip.MustParseAddr("fd00:c0de::1"), Port: 7443},
		},
		Allow: []netip.Prefix{
			netip.MustParsePrefix("198.18.0.4/30"),
			netip.MustParsePrefix("fd00:c0de::4/126"),
		},
	}
}

// sampleRules is what the plan for samplePolicy reads back as, with GEN for
// the generation.
const sampleRules = `iptables -N CORDON-IN-GEN
iptables -A CORDON-IN-GEN -i lo -j ACCEPT
iptables -A CORDON-IN-GEN -s 198.18.0.1/32 -p tcp -m tcp --sport 7443 -m conntrack --ctstate ESTABLISHED -j ACCEPT
iptables -A CORDON-IN-GEN -p icmp -m icmp --icmp-type 3/4 -m conntrack --ctstate RELATED -j ACCEPT
iptables -A CORDON-IN-GEN -s 198.18.0.4/30 -j ACCEPT
iptables -A CORDON-IN-GEN -j DROP
iptables -N CORDON-OUT-GEN
iptables -A CORDON-OUT-GEN -o lo -j ACCEPT
iptables -A CORDON-OUT-GEN -d 198.18.0.1/32 -p tcp -m tcp --dport 7443 -m conntrack --ctstate NEW,ESTABLISHED -j ACCEPT
iptables -A CORDON-OUT-GEN -d 198.18.0.4/30 -j ACCEPT
iptables -A CORDON-OUT-GEN -p tcp -m tcp --tcp-flags SYN,RST NONE -j REJECT --reject-with tcp-reset
iptables -A CORDON-OUT-GEN -j DROP
iptables -N CORDON-FWD-GEN
iptables -A CORDON-FWD-GEN -s 198.18.0.4/30 -j ACCEPT
iptables -A CORDON-FWD-GEN -d 198.18.0.4/30 -j ACCEPT
iptables -A CORDON-FWD-GEN -j DROP
iptables -A INPUT -j CORDON-IN-GEN
iptables -A OUTPUT -j CORDON-OUT-GEN
iptables -A FORWARD -j CORDON-FWD-GEN
ip6tables -N CORDON-IN-GEN
ip6tables -A CORDON-IN-GEN -i lo -j ACCEPT
ip6tables -A CORDON-IN-GEN -s fd00:c0de::1/128 -p tcp -m tcp --sport 7443 -m conntrack --ctstate ESTABLISHED -j ACCEPT
ip6tables -A CORDON-IN-GEN -p ipv6-icmp -m icmp6 --icmpv6-type 2 -m conntrack --ctstate RELATED -j ACCEPT
ip6tables -A CORDON-IN-GEN -s fd00:c0de::4/126 -j ACCEPT
ip6tables -A CORDON-IN-GEN -p ipv6-icmp -m icmp6 --icmpv6-type 133 -m hl --hl-eq 255 -j ACCEPT
ip6tables -A CORDON-IN-GEN -p ipv6-icmp -m icmp6 --icmpv6-type 134 -m hl --hl-eq 255 -j ACCEPT
ip6tables -A CORDON-IN-GEN -p ipv6-icmp -m icmp6 --icmpv6-type 135 -m hl --hl-eq 255 -j ACCEPT
ip6tables -A CORDON-IN-GEN -p ipv6-icmp -m icmp6 --icmpv6-type 136 -m hl --hl-eq 255 -j ACCEPT
ip6tables -A CORDON-IN-GEN -j DROP
ip6tables -N CORDON-OUT-GEN
ip6tables -A CORDON-OUT-GEN -o lo -j ACCEPT
ip6tables -A CORDON-OUT-GEN -d fd00:c0de::1/128 -p tcp -m tcp --dport 7443 -m conntrack --ctstate NEW,ESTABLISHED -j ACCEPT
ip6tables -A CORDON-OUT-GEN -d fd00:c0de::4/126 -j ACCEPT
ip6tables -A CORDON-OUT-GEN -p ipv6-icmp -m icmp6 --icmpv6-type 133 -m hl --hl-eq 255 -j ACCEPT
ip6tables -A CORDON-OUT-GEN -p ipv6-icmp -m icmp6 --icmpv6-type 134 -m hl --hl-eq 255 -j ACCEPT
ip6tables -A CORDON-OUT-GEN -p ipv6-icmp -m icmp6 --icmpv6-type 135 -m hl --hl-eq 255 -j ACCEPT
ip6tables -A CORDON-OUT-GEN -p ipv6-icmp -m icmp6 --icmpv6-type 136 -m hl --hl-eq 255 -j ACCEPT
ip6tables -A CORDON-OUT-GEN -p tcp -m tcp --tcp-flags SYN,RST NONE -j REJECT --reject-with tcp-reset
ip6tables -A CORDON-OUT-GEN -j DROP
ip6tables -N CORDON-FWD-GEN
ip6tables -A CORDON-FWD-GEN -s fd00:c0de::4/126 -j ACCEPT
ip6tables -A CORDON-FWD-GEN -d fd00:c0de::4/126 -j ACCEPT
ip6tables -A CORDON-FWD-GEN -j DROP
ip6tables -A INPUT -j CORDON-IN-GEN
ip6tables -A OUTPUT -j CORDON-OUT-GEN
ip6tables -A FORWARD -j CORDON-FWD-GEN`

func expectedOf(pl plan) []liveFamily {
	var out []liveFamily
	for _, f := range pl.fams {
		out = append(out, pl.expected(f))
	}
	return out
}

func TestPlanRuleText(t *testing.T) {
	eff, err := effective(samplePolicy(), []family{ipv4, ipv6})
	if err != nil {
		t.Fatal(err)
	}
	gen := generation(eff)
	if !isGen(gen) {
		t.Fatalf("generation %q is not 8 hex digits", gen)
	}
	got := strings.Join(ruleLines(expectedOf(newPlan(eff, []family{ipv4, ipv6}, gen))), "\n")
	want := strings.ReplaceAll(sampleRules, "GEN", gen)
	if got != want {
		t.Errorf("rules for the sample policy:\n%s\nwant:\n%s", got, want)
	}
	t.Logf("generation %s:\n%s", gen, got)
	for _, k := range chainKinds {
		if n := len(chainName(k.short, gen) + "-X99"); n > 28 {
			t.Errorf("chain name of %d characters; iptables allows 28", n)
		}
	}
}

func TestGenerationFollowsPolicy(t *testing.T) {
	both := []family{ipv4, ipv6}
	a, _ := effective(samplePolicy(), both)
	// The same policy written differently: order, duplicates, mapped address.
	p := samplePolicy()
	p.Controllers = append([]policy.Endpoint{{Addr: netip.MustParseAddr("::ffff:198.18.0.1"), Port: 7443}}, p.Controllers...)
	slices.Reverse(p.Allow)
	b, _ := effective(p, both)
	if generation(a) != generation(b) {
		t.Errorf("equal policies have generations %s and %s", generation(a), generation(b))
	}
	p = samplePolicy()
	p.Allow = p.Allow[:1]
	c, _ := effective(p, both)
	if generation(a) == generation(c) {
		t.Errorf("different policies share generation %s", generation(a))
	}
	// IPv4 only: the IPv6 entries are dropped and the generation changes.
	d, err := effective(samplePolicy(), []family{ipv4})
	if err != nil {
		t.Fatal(err)
	}
	if len(d.Controllers) != 1 || len(d.Allow) != 1 || generation(d) == generation(a) {
		t.Errorf("IPv4-only effective policy %+v, generation %s", d, generation(d))
	}
}

func TestEffectiveRejects(t *testing.T) {
	cases := map[string]policy.Policy{
		"allow everything v4": {Controllers: samplePolicy().Controllers, Allow: []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0")}},
		"allow everything v6": {Controllers: samplePolicy().Controllers, Allow: []netip.Prefix{netip.MustParsePrefix("::/0")}},
	}
	for name, p := range cases {
		if _, err := effective(p, []family{ipv4, ipv6}); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
	v6only := policy.Policy{Controllers: []policy.Endpoint{{Addr: netip.MustParseAddr("fd00:c0de::1"), Port: 22}}}
	if _, err := effective(v6only, []family{ipv4}); err == nil {
		t.Error("IPv6-only controllers on an IPv4-only host: no error")
	}
}

func TestReconstruct(t *testing.T) {
	fams := []family{ipv4, ipv6}
	eff, _ := effective(samplePolicy(), fams)
	gen := generation(eff)
	live := expectedOf(newPlan(eff, fams, gen))
	got := reconstruct(live, gen)
	if !reflect.DeepEqual(got, eff) {
		t.Errorf("reconstructed %+v, want %+v", got, eff)
	}
	if ev := evaluate(live); !reflect.DeepEqual(ev.pol, eff) {
		t.Errorf("evaluate read back %+v, want %+v", ev.pol, eff)
	}
	// Only the IPv4 family isolated: the IPv4 part of the policy.
	eff4, _ := effective(samplePolicy(), []family{ipv4})
	gen4 := generation(eff4)
	if got := reconstruct(expectedOf(newPlan(eff4, []family{ipv4}, gen4)), gen4); !reflect.DeepEqual(got, eff4) || len(got.Controllers) != 1 {
		t.Errorf("IPv4 only: reconstructed %+v, want %+v", got, eff4)
	}
}

// liveOf returns a deep copy of the plan's state, for tests to damage.
func liveOf(pl plan) []liveFamily {
	var out []liveFamily
	for _, lf := range expectedOf(pl) {
		c := liveFamily{fam: lf.fam, chains: map[string][]string{}, builtins: map[string][]string{}}
		for k, v := range lf.chains {
			c.chains[k] = slices.Clone(v)
		}
		for k, v := range lf.builtins {
			c.builtins[k] = slices.Clone(v)
		}
		out = append(out, c)
	}
	return out
}

func TestEvaluate(t *testing.T) {
	fams := []family{ipv4, ipv6}
	eff, _ := effective(samplePolicy(), fams)
	gen := generation(eff)
	pl := newPlan(eff, fams, gen)
	cases := []struct {
		name   string
		damage func(l []liveFamily)
		want   []string // substrings of the problems; none means isolated
	}{
		{"intact", func([]liveFamily) {}, nil},
		{"user rules around", func(l []liveFamily) {
			l[0].builtins["INPUT"] = append(l[0].builtins["INPUT"], "-A INPUT -p tcp -m tcp --dport 22 -j ACCEPT")
		}, nil},
		{"jump missing", func(l []liveFamily) { delete(l[1].builtins, "OUTPUT") }, []string{"IPv6 OUTPUT jump missing"}},
		{"jump not first", func(l []liveFamily) {
			l[0].builtins["INPUT"] = append([]string{"-A INPUT -j ACCEPT"}, l[0].builtins["INPUT"]...)
		}, []string{"IPv4 INPUT jump is rule 2, not the first"}},
		{"chain missing", func(l []liveFamily) { delete(l[0].chains, chainName("FWD", gen)) }, []string{"IPv4 chain CORDON-FWD-" + gen + " missing"}},
		{"family missing", func(l []liveFamily) {
			l[1].chains = map[string][]string{}
			l[1].builtins = map[string][]string{}
		}, []string{"IPv6 rules of generation " + gen + " missing"}},
		{"rule removed from one chain", func(l []liveFamily) {
			c := chainName("IN", gen)
			l[0].chains[c] = slices.Delete(l[0].chains[c], 1, 2)
		}, []string{"IPv4 rule missing: \"-A CORDON-IN-" + gen + " -s 198.18.0.1/32"}},
		{"allowlist entry removed everywhere", func(l []liveFamily) {
			for _, k := range chainKinds {
				c := chainName(k.short, gen)
				l[0].chains[c] = slices.DeleteFunc(l[0].chains[c], func(r string) bool { return strings.Contains(r, "198.18.0.4/30") })
			}
		}, []string{"do not enforce the policy it was made for"}},
		{"controller rule made stateless", func(l []liveFamily) {
			c := chainName("IN", gen)
			i := slices.IndexFunc(l[0].chains[c], func(r string) bool { return strings.Contains(r, "--sport 7443") })
			l[0].chains[c][i] = "-A " + c + " -s 198.18.0.1/32 -p tcp -m tcp --sport 7443 -j ACCEPT"
		}, []string{"IPv4 rule missing: \"-A CORDON-IN-" + gen + " -s 198.18.0.1/32 -p tcp -m tcp --sport 7443 -m conntrack --ctstate ESTABLISHED -j ACCEPT\"", "unexpected rule"}},
		{"controller rules made stateless everywhere", func(l []liveFamily) {
			for _, k := range []string{"IN", "OUT"} {
				c := chainName(k, gen)
				for i, r := range l[1].chains[c] {
					r = strings.Replace(r, " -m conntrack --ctstate ESTABLISHED", "", 1)
					l[1].chains[c][i] = strings.Replace(r, " -m conntrack --ctstate NEW,ESTABLISHED", "", 1)
				}
			}
		}, []string{"do not enforce the policy it was made for", "unexpected rule"}},
		{"path-MTU rule widened to all ICMP", func(l []liveFamily) {
			c := chainName("IN", gen)
			i := slices.IndexFunc(l[0].chains[c], func(r string) bool { return strings.Contains(r, "--icmp-type 3/4") })
			l[0].chains[c][i] = "-A " + c + " -p icmp -j ACCEPT"
		}, []string{"IPv4 rule missing", "unexpected rule: \"-A CORDON-IN-" + gen + " -p icmp -j ACCEPT\""}},
		{"rule added", func(l []liveFamily) {
			c := chainName("IN", gen)
			l[0].chains[c] = slices.Insert(l[0].chains[c], 0, "-A "+c+" -j ACCEPT")
		}, []string{"unexpected rule"}},
		{"stray chain and jump", func(l []liveFamily) {
			l[0].chains["CORDON-IN-00000000"] = []string{"-A CORDON-IN-00000000 -j DROP"}
			l[0].builtins["INPUT"] = append(l[0].builtins["INPUT"], "-A INPUT -j CORDON-IN-00000000")
		}, []string{"several generations", "IPv4 stray chain CORDON-IN-00000000", "stray rule"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			live := liveOf(pl)
			tc.damage(live)
			ev := evaluate(live)
			if ev.gen != gen {
				t.Errorf("generation %q, want %q", ev.gen, gen)
			}
			got := strings.Join(ev.problems, "; ")
			if len(tc.want) == 0 && got != "" {
				t.Errorf("problems %q, want none", got)
			}
			if len(tc.want) > 0 && got == "" {
				t.Errorf("no problems, want %q", tc.want)
			}
			for _, w := range tc.want {
				if !strings.Contains(got, w) {
					t.Errorf("problems %q do not mention %q", got, w)
				}
			}
		})
	}
	if ev := evaluate([]liveFamily{{fam: ipv4}, {fam: ipv6}}); !ev.empty {
		t.Errorf("no rules evaluate as %+v", ev)
	}
}

func TestSplitRule(t *testing.T) {
	cases := map[string][]string{
		`-A INPUT -j CORDON-IN-1a2b3c4d`:                                      {"-A", "INPUT", "-j", "CORDON-IN-1a2b3c4d"},
		`-A USER -s 198.18.0.0/24 -m comment --comment "lab peers" -j ACCEPT`: {"-A", "USER", "-s", "198.18.0.0/24", "-m", "comment", "--comment", "lab peers", "-j", "ACCEPT"},
		`-A USER -m comment --comment "say \"hi\" \\ bye" -j LOG`:             {"-A", "USER", "-m", "comment", "--comment", `say "hi" \ bye`, "-j", "LOG"},
		`-A USER -m comment --comment "" -j DROP`:                             {"-A", "USER", "-m", "comment", "--comment", "", "-j", "DROP"},
	}
	for in, want := range cases {
		if got := splitRule(in); !slices.Equal(got, want) {
			t.Errorf("splitRule(%q) = %q, want %q", in, got, want)
		}
	}
	if got := ruleTarget(`-A FORWARD -i eth0 -g CORDON-FWD-1a2b3c4d`); got != "CORDON-FWD-1a2b3c4d" {
		t.Errorf("ruleTarget = %q", got)
	}
}

func TestFirstIPv6(t *testing.T) {
	lo := "00000000000000000000000000000001 01 80 10 80       lo\n"
	if got := firstIPv6([]byte(lo)); got != "" {
		t.Errorf("loopback only: %q", got)
	}
	ll := lo + "fe8000000000000000fc00fffe000001 04 40 20 80     eth0\n"
	if got := firstIPv6([]byte(ll)); got != "fe80::fc:ff:fe00:1%eth0" {
		t.Errorf("link-local: %q", got)
	}
	if got := firstIPv6(nil); got != "" {
		t.Errorf("empty: %q", got)
	}
}

// refuseTables is an ipTables that fails the test on any use: for checks
// that must not reach iptables at all.
type refuseTables struct{ t *testing.T }

func (r refuseTables) fail() error { r.t.Error("iptables used"); return errors.New("refused") }

func (r refuseTables) List(string, string) ([]string, error)    { return nil, r.fail() }
func (r refuseTables) ListChains(string) ([]string, error)      { return nil, r.fail() }
func (r refuseTables) ChainExists(string, string) (bool, error) { return false, r.fail() }
func (r refuseTables) ClearChain(string, string) error          { return r.fail() }
func (r refuseTables) DeleteChain(string, string) error         { return r.fail() }
func (r refuseTables) Delete(string, string, ...string) error   { return r.fail() }
func (r refuseTables) Restore(string) error                     { return r.fail() }
func (r refuseTables) Concurrent() bool                         { return false }

func TestIsolateRejectsBadPolicyFirst(t *testing.T) {
	p := New(Options{})
	opened := false
	p.open = func(family) (ipTables, error) { opened = true; return refuseTables{t}, nil }
	bad := map[string]policy.Policy{
		"no controller":  {},
		"port 0":         {Controllers: []policy.Endpoint{{Addr: netip.MustParseAddr("198.18.0.1")}}},
		"allow all":      {Controllers: samplePolicy().Controllers, Allow: []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0")}},
		"unspecified ip": {Controllers: []policy.Endpoint{{Addr: netip.IPv4Unspecified(), Port: 1}}},
	}
	for name, pol := range bad {
		_, err := p.Isolate(context.Background(), pol, "order-1")
		if !errors.Is(err, firewall.ErrInvalidPolicy) {
			t.Errorf("%s: error %v, want ErrInvalidPolicy", name, err)
		}
	}
	if opened {
		t.Error("iptables was opened for a bad policy")
	}
}

func TestBackendUnavailable(t *testing.T) {
	missing := errors.New(`exec: "iptables": executable file not found in $PATH`)
	cases := []struct {
		name     string
		v4, v6   error
		hostIPv6 string
		wantErr  bool
		wantFams int
		wantV6   bool // v6err set: IPv6 stays open
	}{
		{"no iptables", missing, missing, "", true, 0, false},
		{"no ip6tables, host has IPv6", nil, missing, "fe80::1%eth0", false, 1, true},
		{"no ip6tables, no IPv6", nil, missing, "", false, 1, false},
		{"both", nil, nil, "fe80::1%eth0", false, 2, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := New(Options{})
			p.open = func(f family) (ipTables, error) {
				if f == ipv4 && tc.v4 != nil {
					return nil, tc.v4
				}
				if f == ipv6 && tc.v6 != nil {
					return nil, tc.v6
				}
				return refuseTables{t}, nil
			}
			p.hostIPv6 = func() (string, error) { return tc.hostIPv6, nil }
			b, err := p.backend()
			if tc.wantErr {
				if !errors.Is(err, firewall.ErrUnavailable) {
					t.Fatalf("error %v, want ErrUnavailable", err)
				}
				_, err := p.Isolate(context.Background(), samplePolicy(), "o")
				if !errors.Is(err, firewall.ErrUnavailable) {
					t.Errorf("Isolate error %v, want ErrUnavailable", err)
				}
				return
			}
			if err != nil || len(b.tabs) != tc.wantFams {
				t.Errorf("backend: %d families, error %v; want %d", len(b.tabs), err, tc.wantFams)
			}
			if (b.v6err != nil) != tc.wantV6 || (b.v6err != nil && !errors.Is(b.v6err, firewall.ErrUnavailable)) {
				t.Errorf("v6err = %v, want set: %v (ErrUnavailable)", b.v6err, tc.wantV6)
			}
		})
	}
}

// TestIsolateIPv6OnlyControllersWithoutIP6tables: with ip6tables broken on
// a host with IPv6 and only IPv6 controllers, IPv4 cannot be isolated alone
// (no policy would remain to read back): nothing is changed and the error
// says neither family is contained.
func TestIsolateIPv6OnlyControllersWithoutIP6tables(t *testing.T) {
	p := New(Options{})
	p.open = func(f family) (ipTables, error) {
		if f == ipv6 {
			return nil, errors.New("ip6tables: broken")
		}
		return refuseTables{t}, nil
	}
	p.hostIPv6 = func() (string, error) { return "fd00:c0de::2%eth0", nil }
	pol := policy.Policy{Controllers: []policy.Endpoint{{Addr: netip.MustParseAddr("fd00:c0de::1"), Port: 7443}}}
	_, err := p.Isolate(context.Background(), pol, "o")
	if !errors.Is(err, firewall.ErrUnavailable) || errors.Is(err, firewall.ErrInvalidPolicy) ||
		!strings.Contains(err.Error(), "neither IPv6 nor IPv4 is contained") {
		t.Errorf("Isolate error %v, want ErrUnavailable saying neither family is contained", err)
	}
}

// TestLockWait checks that each iptables and iptables-restore command is
// told to wait a bounded time for the xtables lock: it points the plugin at
// scripts that record their arguments instead of running iptables.
func TestLockWait(t *testing.T) {
	dir := t.TempDir()
	argsFile := filepath.Join(dir, "args")
	script := "#!/bin/sh\n" +
		"if [ \"$1\" = --version ]; then echo 'iptables v1.8.9 (nf_tables)'; exit 0; fi\n" +
		"echo \"$0 $@\" >> " + argsFile + "\n" +
		"echo 'Another app is currently holding the xtables lock. Stopped waiting after 3s.' >&2\n" +
		"exit 4\n"
	for _, name := range []string{"iptables", "iptables-restore"} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(script), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	t.Setenv("PATH", dir)
	_, err := openIPTables(ipv4, 2500*time.Millisecond)
	if err == nil {
		t.Fatal("no error from a held lock")
	}
	if !strings.Contains(err.Error(), "xtables lock held by another program for more than 2.5s") || !errors.Is(err, errLockHeld) {
		t.Errorf("error %q does not say the lock was held too long", err)
	}
	// The restore, as opened for a working iptables.
	path, restore, err := commands(ipv4)
	if err != nil || restore != filepath.Join(dir, "iptables-restore") {
		t.Fatalf("commands = %q, %q, %v", path, restore, err)
	}
	x := &xtables{path: path, restorePath: restore, wait: 3, restoreWait: true}
	err = tab{fam: ipv4, ipt: x, wait: 2500 * time.Millisecond}.restore("*filter\nCOMMIT\n")
	if !errors.Is(err, errLockHeld) || !strings.Contains(err.Error(), "xtables lock held by another program for more than 2.5s") {
		t.Errorf("restore error %q does not say the lock was held too long", err)
	}
	args, rerr := os.ReadFile(argsFile)
	if rerr != nil {
		t.Fatal(rerr)
	}
	lines := strings.Split(strings.TrimSpace(string(args)), "\n")
	if len(lines) != 2 || !strings.HasSuffix(lines[0], "/iptables -t filter -S INPUT --wait 3") ||
		!strings.HasSuffix(lines[1], "/iptables-restore --noflush --wait 3") {
		t.Errorf("commands ran as %q, want iptables -S INPUT and iptables-restore --noflush, each with --wait 3", lines)
	}
}

// TestOpenCached checks that iptables is opened once (its version and a
// listing of INPUT, which the fake logs) and kept while PATH finds the same
// commands, and that it is noticed at once when iptables or
// iptables-restore goes away, or another comes first in PATH.
func TestOpenCached(t *testing.T) {
	dir, other := t.TempDir(), t.TempDir()
	log := filepath.Join(dir, "log")
	script := "#!/bin/sh\n" +
		"if [ \"$1\" = --version ]; then echo 'iptables v1.8.9 (nf_tables)'; exit 0; fi\n" +
		"case \" $* \" in *\" -S INPUT \"*) echo \"$0\" >> " + log + ";; esac\n" +
		"exit 0\n"
	for _, d := range []string{dir, other} {
		for _, name := range []string{"iptables", "iptables-restore"} {
			if err := os.WriteFile(filepath.Join(d, name), []byte(script), 0o755); err != nil {
				t.Fatal(err)
			}
		}
	}
	opened := func() []string {
		t.Helper()
		b, _ := os.ReadFile(log)
		return strings.Fields(string(b))
	}
	p := New(Options{})
	p.hostIPv6 = func() (string, error) { return "", nil }
	t.Setenv("PATH", dir)
	for range 3 {
		if b, err := p.backend(); err != nil || len(b.tabs) != 1 {
			t.Fatalf("backend: %d families, %v", len(b.tabs), err)
		}
	}
	if got := opened(); len(got) != 1 {
		t.Errorf("iptables opened %d times for three calls, want once: %q", len(got), got)
	}
	if err := os.Remove(filepath.Join(dir, "iptables-restore")); err != nil {
		t.Fatal(err)
	}
	if _, err := p.backend(); !errors.Is(err, firewall.ErrUnavailable) || !strings.Contains(err.Error(), "iptables-restore") {
		t.Errorf("backend without iptables-restore: %v, want ErrUnavailable naming it", err)
	}
	t.Setenv("PATH", other+":"+dir)
	if _, err := p.backend(); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", "")
	if _, err := p.backend(); !errors.Is(err, firewall.ErrUnavailable) {
		t.Errorf("backend without iptables: %v, want ErrUnavailable", err)
	}
	t.Setenv("PATH", other)
	if _, err := p.backend(); err != nil {
		t.Fatal(err)
	}
	if got, want := opened(), []string{filepath.Join(dir, "iptables"), filepath.Join(other, "iptables"), filepath.Join(other, "iptables")}; !slices.Equal(got, want) {
		t.Errorf("iptables opened as %q, want %q", got, want)
	}
}
