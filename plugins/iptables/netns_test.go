package main

// Tests against real iptables, ip6tables, conntrack and kernel, each inside
// network namespaces the test makes (labtest): the part that touches the
// firewall runs in a copy of this test binary started in the host's
// namespace (labtest.RunChild).

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/cordon-ir/cordon/internal/netlab"
	"github.com/cordon-ir/cordon/internal/netlab/labtest"
	"github.com/cordon-ir/cordon/pkg/firewall"
	"github.com/cordon-ir/cordon/pkg/policy"
)

// pristineAfterRelease is what iptables-save shows once iptables has been
// used in a namespace that had no tables: the filter table stays, empty,
// with ACCEPT policies. No iptables command removes a table; this is the one
// way the dump differs from before, and it filters nothing.
const pristineAfterRelease = "== iptables-save\n*filter\n:INPUT ACCEPT\n:FORWARD ACCEPT\n:OUTPUT ACCEPT\nCOMMIT\n" +
	"== ip6tables-save\n*filter\n:INPUT ACCEPT\n:FORWARD ACCEPT\n:OUTPUT ACCEPT\nCOMMIT\n"

const emptyFilter = "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n"

var setups = []struct {
	name       string
	v4, v6     string // rules loaded before the test
	afterwards string // the dump expected after release; "" means as before
}{
	{name: "pristine", afterwards: pristineAfterRelease},
	{name: "empty", v4: emptyFilter, v6: emptyFilter},
	{name: "user-rules", v4: userRules4, v6: userRules6},
}

func loadSetup(t *testing.T, name string) (before, afterwards string) {
	t.Helper()
	for _, s := range setups {
		if s.name != name {
			continue
		}
		if s.v4 != "" {
			restore(t, "iptables-restore", s.v4)
		}
		if s.v6 != "" {
			restore(t, "ip6tables-restore", s.v6)
		}
		before = saveRules(t)
		afterwards = s.afterwards
		if afterwards == "" {
			afterwards = before
		}
		return before, afterwards
	}
	t.Fatalf("no setup %q", name)
	return "", ""
}

// TestIsolateNamespace isolates a host for real, over each starting ruleset:
// traffic is cut except as the policy allows, in both directions and both
// families; Status agrees; the same policy again is a no-op; a new policy
// swaps generations; release brings back the ruleset as it was and the
// traffic with it.
func TestIsolateNamespace(t *testing.T) {
	for _, s := range setups {
		t.Run(s.name, func(t *testing.T) {
			if labtest.IsChild(t) {
				isolateInNamespace(t, s.name)
				return
			}
			host, env := newLab(t)
			labtest.RunChild(t, host, env...)
		})
	}
}

func isolateInNamespace(t *testing.T, setup string) {
	hosts := childLab(t)
	before, afterwards := loadSetup(t, setup)
	checkReach(t, hosts, "before isolation", openProbes())
	p := nsPlugin(t)

	start := time.Now()
	a, err := p.Isolate(bg, labPolicy(), "order-1")
	tookFirst := time.Since(start)
	if err != nil {
		t.Fatalf("Isolate: %v", err)
	}
	if !strings.HasPrefix(a.Digest, "sha256:") || len(a.Digest) != len("sha256:")+64 {
		t.Errorf("digest %q", a.Digest)
	}
	if got, want := setOf(a.Rules), listCordon(t); !equalSets(got, want) {
		t.Errorf("Applied.Rules %q\ndiffer from iptables -S: %v", a.Rules, want)
	}
	genA := genOfRules(t, a.Rules)
	st, err := p.Status(bg)
	if err != nil || !st.Isolated || st.Digest != a.Digest || st.Partial != "" || !slices.Equal(st.Rules, a.Rules) {
		t.Errorf("Status after Isolate = %+v, %v; want isolated with digest %s", st, err, a.Digest)
	}
	checkPolicy(t, "Status after Isolate", st.Policy, labPolicy())
	// Forget the neighbours, so that reaching the controller over IPv6 needs
	// neighbour discovery through the isolation rules.
	flushNeighbours(t, hosts)
	checkReach(t, hosts, "isolated", isolatedProbes())

	isolatedDump := saveRules(t)
	start = time.Now()
	again, err := p.Isolate(bg, labPolicy(), "order-2")
	tookNoop := time.Since(start)
	if err != nil || again.Digest != a.Digest {
		t.Errorf("Isolate with the same policy = %s, %v; want %s", again.Digest, err, a.Digest)
	}
	if d := saveRules(t); d != isolatedDump {
		t.Errorf("Isolate with the same policy changed the ruleset:\n%s\nwas:\n%s", d, isolatedDump)
	}

	// A changed allowlist: outside becomes reachable, allowed no longer.
	polB := policy.Policy{
		Controllers: labPolicy().Controllers,
		Allow:       []netip.Prefix{netip.PrefixFrom(outsideV4, 32), netip.PrefixFrom(outsideV6, 128)},
	}
	start = time.Now()
	b, err := p.Isolate(bg, polB, "order-3")
	tookSwap := time.Since(start)
	if err != nil {
		t.Fatalf("Isolate with a new policy: %v", err)
	}
	genB := genOfRules(t, b.Rules)
	if genB == genA || b.Digest == a.Digest {
		t.Errorf("new policy kept generation %s / digest %s", genA, a.Digest)
	}
	for l := range listCordon(t) {
		if strings.Contains(l, genA) {
			t.Errorf("old generation left behind: %s", l)
		}
	}
	if st, err := p.Status(bg); err != nil || !st.Isolated || st.Digest != b.Digest {
		t.Errorf("Status after swap = %+v, %v", st, err)
	} else {
		checkPolicy(t, "Status after swap", st.Policy, polB)
	}
	checkReach(t, hosts, "isolated by the new policy", []probe{
		{"outside", ap(hostV4, svcPort), true},
		{"outside", ap(hostV6, svcPort), true},
		{"host", ap(outsideV4, svcPort), true},
		{"allowed", ap(hostV4, svcPort), false},
		{"allowed", ap(hostV6, svcPort), false},
		{"host", ap(allowedV6, svcPort), false},
		{"host", ap(ctrlV4, ctrlPort), true},
		{"host", ap(ctrlV6, ctrlPort), true},
	})

	start = time.Now()
	n, err := p.Release(bg, "order-4")
	tookRelease := time.Since(start)
	if err != nil || n == 0 {
		t.Errorf("Release = %d, %v", n, err)
	}
	if after := saveRules(t); after != afterwards {
		t.Errorf("ruleset after release:\n%s\nwant:\n%s\n(before isolation:\n%s)", after, afterwards, before)
	}
	if st, err := p.Status(bg); err != nil || st.Isolated || st.Digest != "" || st.Partial != "" || len(st.Rules) != 0 || st.Policy != nil {
		t.Errorf("Status after Release = %+v, %v; want zero", st, err)
	}
	if n, err := p.Release(bg, "order-5"); err != nil || n != 0 {
		t.Errorf("second Release = %d, %v; want 0, nil", n, err)
	}
	checkReach(t, hosts, "released", openProbes())
	t.Logf("timing in namespace (%d rules): Isolate %v, same policy again %v, swap %v, Release %v",
		len(a.Rules), tookFirst, tookNoop, tookSwap, tookRelease)
}

// checkPolicy checks that the policy Status read back is want in canonical
// form: the same controllers and allowlist, in both families.
func checkPolicy(t *testing.T, what string, got *policy.Policy, want policy.Policy) {
	t.Helper()
	w := want.Canonical()
	if got == nil || !reflect.DeepEqual(*got, w) {
		t.Errorf("%s: Policy = %+v, want %+v", what, got, w)
	}
}

func flushNeighbours(t *testing.T, hosts map[string]*netlab.Host) {
	t.Helper()
	if out, err := exec.Command("ip", "neigh", "flush", "all").CombinedOutput(); err != nil {
		t.Fatalf("ip neigh flush: %v: %s", err, out)
	}
	for _, h := range []string{"ctrl", "allowed"} {
		if _, err := hosts[h].Output("ip", "neigh", "flush", "all"); err != nil {
			t.Fatal(err)
		}
	}
}

func setOf(ss []string) map[string]bool {
	m := map[string]bool{}
	for _, s := range ss {
		m[s] = true
	}
	return m
}

func equalSets(a, b map[string]bool) bool {
	if len(a) != len(b) {
		return false
	}
	for k := range a {
		if !b[k] {
			return false
		}
	}
	return true
}

// TestLegacy runs the isolation and rollback tests with iptables-legacy in
// place of iptables-nft (PATH names iptables-legacy and its twins as
// iptables, ip6tables and their -restore and -save): the restore input must
// mean the same to it, and the plugin must not run its commands at once,
// which would queue on the xtables lock.
func TestLegacy(t *testing.T) {
	for _, tc := range []struct {
		name  string
		child func(*testing.T)
	}{
		{"isolate", func(t *testing.T) { isolateInNamespace(t, "user-rules") }},
		{"rollback", rollbackInNamespace},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if labtest.IsChild(t) {
				useLegacy(t)
				tc.child(t)
				return
			}
			host, env := newLab(t)
			labtest.RunChild(t, host, env...)
		})
	}
}

// useLegacy puts iptables-legacy and its twins first in PATH under the
// names of iptables, for the rest of t, and checks that the plugin sees
// them as such.
func useLegacy(t *testing.T) {
	t.Helper()
	requireLabNS(t)
	dir := t.TempDir()
	for _, cmd := range []string{"iptables", "ip6tables"} {
		for _, suffix := range []string{"", "-restore", "-save"} {
			real, err := exec.LookPath(cmd + "-legacy" + suffix)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(real, filepath.Join(dir, cmd+suffix)); err != nil {
				t.Fatal(err)
			}
		}
	}
	t.Setenv("PATH", dir+":"+os.Getenv("PATH"))
	b, err := nsPlugin(t).backend()
	if err != nil || len(b.tabs) != 2 {
		t.Fatalf("backend: %d families, %v", len(b.tabs), err)
	}
	for _, tb := range b.tabs {
		if x := tb.ipt.(*xtables); x.Concurrent() || !strings.HasPrefix(x.path, dir) {
			t.Fatalf("%s is %s, concurrent %v; want the legacy one in %s", tb.fam.command(), x.path, x.Concurrent(), dir)
		}
	}
}

// TestEstablishedFlowCut opens TCP connections to the outside over IPv4 and
// IPv6, isolates, and checks that they carry nothing more either way and
// that their conntrack entries are gone.
//
// Conntrack tracks flows in a namespace only once something there needs it
// (here the user rules' -m conntrack); without it there is no entry to cut
// and the drop rules alone stop the flows.
func TestEstablishedFlowCut(t *testing.T) {
	for _, setup := range []string{"user-rules", "pristine"} {
		t.Run(setup, func(t *testing.T) {
			if labtest.IsChild(t) {
				flowCutInNamespace(t, setup)
				return
			}
			host, env := newLab(t)
			labtest.RunChild(t, host, env...)
		})
	}
}

func flowCutInNamespace(t *testing.T, setup string) {
	hosts := childLab(t)
	loadSetup(t, setup)
	peer := startPeer(t, hosts["outside"], peerPort)
	expect := func(want string) { t.Helper(); peer.expect(t, want) }
	forbid := func(bad string, d time.Duration) { t.Helper(); peer.forbid(t, bad, d) }

	conns := map[string]net.Conn{}
	readers := map[string]*bufio.Reader{}
	for tag, a := range map[string]netip.Addr{"4": outsideV4, "6": outsideV6} {
		c, err := net.DialTimeout("tcp", ap(a, peerPort).String(), 3*time.Second)
		if err != nil {
			t.Fatalf("dial outside: %v", err)
		}
		defer c.Close()
		conns[tag], readers[tag] = c, bufio.NewReader(c)
		expect("conn " + tag)
	}
	for _, tag := range []string{"4", "6"} {
		if _, err := conns[tag].Write([]byte("a1\n")); err != nil {
			t.Fatal(err)
		}
		expect("got " + tag + " a1")
		peer.send(t, tag, "b1")
		_ = conns[tag].SetReadDeadline(time.Now().Add(3 * time.Second))
		if l, err := readers[tag].ReadString('\n'); err != nil || l != "b1\n" {
			t.Fatalf("before isolation, IPv%s read %q, %v", tag, l, err)
		}
	}
	// The agent's own connections to the controller must survive.
	ctrlConns := map[string]net.Conn{}
	for tag, a := range map[string]netip.Addr{"4": ctrlV4, "6": ctrlV6} {
		c, err := net.DialTimeout("tcp", ap(a, ctrlPort).String(), 3*time.Second)
		if err != nil {
			t.Fatalf("dial controller: %v", err)
		}
		defer c.Close()
		ctrlConns[tag] = c
		echoOn(t, c, "c1", "before isolation, controller over IPv"+tag)
	}
	n4, n6 := conntrackCount(t, "ipv4", peerPort), conntrackCount(t, "ipv6", peerPort)
	if setup == "user-rules" && (n4 != 1 || n6 != 1) {
		t.Fatalf("before isolation: %d IPv4 and %d IPv6 conntrack entries, want 1 each", n4, n6)
	}
	t.Logf("before isolation: %d IPv4 and %d IPv6 conntrack entries", n4, n6)

	p := nsPlugin(t)
	a, err := p.Isolate(bg, labPolicy(), "order-flows")
	if err != nil {
		t.Fatalf("Isolate: %v", err)
	}
	if a.FlowsCut < uint64(n4+n6) {
		t.Errorf("FlowsCut = %d, want at least %d", a.FlowsCut, n4+n6)
	}
	if n4, n6 := conntrackCount(t, "ipv4", peerPort), conntrackCount(t, "ipv6", peerPort); n4 != 0 || n6 != 0 {
		t.Errorf("after isolation: %d IPv4 and %d IPv6 conntrack entries, want none", n4, n6)
	}
	for _, tag := range []string{"4", "6"} {
		_, _ = conns[tag].Write([]byte("a2\n"))
		peer.send(t, tag, "b2")
	}
	forbid("got 4 a2", 2*time.Second)
	forbid("got 6 a2", 100*time.Millisecond)
	for _, tag := range []string{"4", "6"} {
		_ = conns[tag].SetReadDeadline(time.Now().Add(500 * time.Millisecond))
		if l, err := readers[tag].ReadString('\n'); err == nil || l != "" {
			t.Errorf("IPv%s connection still delivers data after isolation: %q, %v", tag, l, err)
		} else if !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Logf("IPv%s read after isolation: %v", tag, err)
		}
	}
	if n4, n6 := conntrackCount(t, "ipv4", peerPort), conntrackCount(t, "ipv6", peerPort); n4 != 0 || n6 != 0 {
		t.Errorf("after traffic on the cut flows: %d IPv4 and %d IPv6 conntrack entries, want none", n4, n6)
	}
	for tag, c := range ctrlConns {
		echoOn(t, c, "c2", "after isolation, controller over IPv"+tag)
	}
	if setup == "user-rules" {
		if n4, n6 := conntrackCount(t, "ipv4", ctrlPort), conntrackCount(t, "ipv6", ctrlPort); n4 != 1 || n6 != 1 {
			t.Errorf("controller flows: %d IPv4 and %d IPv6 conntrack entries, want 1 each (kept)", n4, n6)
		}
	}
	if _, err := p.Release(bg, "order-flows"); err != nil {
		t.Fatal(err)
	}
}

// echoOn sends msg on c, an echo connection, and expects it back.
func echoOn(t *testing.T, c net.Conn, msg, what string) {
	t.Helper()
	_ = c.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := c.Write([]byte(msg + "\n")); err != nil {
		t.Errorf("%s: write: %v", what, err)
		return
	}
	buf := make([]byte, len(msg)+1)
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != msg+"\n" {
		t.Errorf("%s: read %q, %v", what, buf, err)
	}
}

// TestReleaseCrashLeftovers leaves what a crashed Isolate could leave, checks
// that Status calls it partial, and that Release brings the ruleset back to
// what it was; then that Isolate over such leftovers ends isolated.
func TestReleaseCrashLeftovers(t *testing.T) {
	inNamespace(t, leftoversInNamespace)
}

func leftoversInNamespace(t *testing.T) {
	requireLabNS(t)
	before, _ := loadSetup(t, "user-rules")
	p := nsPlugin(t)
	b, err := p.backend()
	if err != nil || b.v6err != nil || len(b.tabs) != 2 {
		t.Fatalf("backend: %d families, %v, %v", len(b.tabs), err, b.v6err)
	}
	fams := b.families()
	effA, _ := effective(labPolicy(), fams)
	plA := newPlan(effA, fams, generation(effA))
	polB := labPolicy()
	polB.Allow = polB.Allow[:1]
	effB, _ := effective(polB, fams)
	plB := newPlan(effB, fams, generation(effB))

	build := func(t *testing.T, tb tab, pl plan) {
		t.Helper()
		for _, c := range pl.chains[tb.fam] {
			if err := tb.newChain(c.name); err != nil {
				t.Fatal(err)
			}
			for _, r := range c.rules {
				if err := tb.appendRule(r); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	link := func(t *testing.T, tb tab, pl plan, builtin string) {
		t.Helper()
		for _, c := range pl.chains[tb.fam] {
			if c.builtin == builtin {
				if err := tb.insertRule(1, c.jump()); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	cases := []struct {
		name    string
		make    func(t *testing.T)
		partial string // expected in Status.Partial
	}{
		{"built, not linked", func(t *testing.T) {
			build(t, b.tabs[0], plA)
			build(t, b.tabs[1], plA)
		}, "IPv4 INPUT jump missing"},
		{"linked in IPv4 INPUT only", func(t *testing.T) {
			build(t, b.tabs[0], plA)
			build(t, b.tabs[1], plA)
			link(t, b.tabs[0], plA, "INPUT")
		}, "IPv4 OUTPUT jump missing"},
		{"IPv4 only, half linked", func(t *testing.T) {
			build(t, b.tabs[0], plA)
			link(t, b.tabs[0], plA, "INPUT")
			link(t, b.tabs[0], plA, "OUTPUT")
		}, "IPv6 rules of generation " + plA.gen + " missing"},
		{"crashed in a swap", func(t *testing.T) {
			if _, err := p.Isolate(bg, labPolicy(), "order-a"); err != nil {
				t.Fatal(err)
			}
			build(t, b.tabs[0], plB)
			build(t, b.tabs[1], plB)
			for _, bi := range builtins {
				link(t, b.tabs[0], plB, bi)
			}
			link(t, b.tabs[1], plB, "INPUT")
			if err := b.tabs[0].newChain(chainName("IN", plA.gen) + "-X1"); err != nil {
				t.Fatal(err)
			}
		}, "several generations present"},
		{"earlier layout in place", func(t *testing.T) {
			// What the plugin wrote before layout 2: stateless controller
			// rules and no path-MTU rule, under layout 1's generation.
			sum := sha256.Sum256([]byte("cordon-iptables/1\n" + effA.Digest()))
			old := plan{gen: hex.EncodeToString(sum[:4]), fams: fams, chains: map[family][]chainPlan{}}
			for _, f := range fams {
				for _, c := range newPlan(effA, fams, old.gen).chains[f] {
					var rules []string
					for _, r := range c.rules {
						if strings.Contains(r, "--ctstate RELATED") {
							continue
						}
						r = strings.Replace(r, " -m conntrack --ctstate ESTABLISHED", "", 1)
						rules = append(rules, strings.Replace(r, " -m conntrack --ctstate NEW,ESTABLISHED", "", 1))
					}
					c.rules = rules
					old.chains[f] = append(old.chains[f], c)
				}
			}
			for _, tb := range b.tabs {
				build(t, tb, old)
				for _, bi := range builtins {
					link(t, tb, old, bi)
				}
			}
		}, "unexpected rule"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tc.make(t)
			st, err := p.Status(bg)
			if err != nil || st.Isolated || !strings.Contains(st.Partial, tc.partial) {
				t.Errorf("Status = %+v, %v; want partial mentioning %q", st, err, tc.partial)
			}
			t.Logf("partial: %s", st.Partial)
			n, err := p.Release(bg, "order-release")
			if err != nil || n == 0 {
				t.Errorf("Release = %d, %v", n, err)
			}
			if after := saveRules(t); after != before {
				t.Fatalf("ruleset after release:\n%s\nwant:\n%s", after, before)
			}
			// The same leftovers, then Isolate: it must end isolated, with
			// nothing stray, and release cleanly.
			tc.make(t)
			a, err := p.Isolate(bg, labPolicy(), "order-over-leftovers")
			if err != nil {
				t.Fatalf("Isolate over leftovers: %v", err)
			}
			if st, err := p.Status(bg); err != nil || !st.Isolated || st.Digest != a.Digest {
				t.Errorf("Status after Isolate over leftovers = %+v, %v", st, err)
			}
			if _, err := p.Release(bg, "order-release"); err != nil {
				t.Fatal(err)
			}
			if after := saveRules(t); after != before {
				t.Fatalf("ruleset after release:\n%s\nwant:\n%s", after, before)
			}
		})
	}
}

// TestReleaseFallback: when Release cannot remove a family's rules in one
// commit, it removes them one at a time, as much as it can. A restore that
// fails still ends with nothing left; a Cordon chain that another program's
// chain jumps to stays, flushed, with an error naming it, and everything
// else goes; a single removal that fails as well is reported, the rest
// still goes, and a second Release finishes.
func TestReleaseFallback(t *testing.T) {
	inNamespace(t, releaseFallbackInNamespace)
}

func releaseFallbackInNamespace(t *testing.T) {
	requireLabNS(t)
	before, _ := loadSetup(t, "user-rules")
	p := nsPlugin(t)
	c := &faultCounter{}
	withFaults(p, c)
	isolate := func() firewall.Applied {
		t.Helper()
		c.reset()
		a, err := p.Isolate(bg, labPolicy(), "o")
		if err != nil {
			t.Fatal(err)
		}
		c.reset()
		return a
	}
	iptablesCmd := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("iptables", append([]string{"-w"}, args...)...).CombinedOutput(); err != nil {
			t.Fatalf("iptables %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	oneByOne := func() bool { return slices.Contains(c.calls(), "DeleteChain") }

	// The IPv4 restore fails.
	a := isolate()
	c.failAt = map[int]bool{1: true}
	if n, err := p.Release(bg, "o"); err != nil || n != len(a.Rules) || !oneByOne() {
		t.Errorf("Release with the IPv4 restore failing = %d, %v (calls %s); want %d, nil, one by one", n, err, c.calls(), len(a.Rules))
	}
	if got := saveRules(t); got != before {
		t.Fatalf("ruleset after release:\n%s\nwant:\n%s", got, before)
	}

	// Another program's chain jumps to Cordon's IPv4 IN chain.
	a = isolate()
	in := chainName("IN", genOfRules(t, a.Rules))
	iptablesCmd("-N", "USER-HOLD")
	iptablesCmd("-A", "USER-HOLD", "-j", in)
	n, err := p.Release(bg, "o")
	if err == nil || !strings.Contains(err.Error(), in) || n != len(a.Rules)-1 || !oneByOne() {
		t.Errorf("Release with %s in use = %d, %v; want %d and an error naming it", in, n, err, len(a.Rules)-1)
	}
	want := map[string]bool{"iptables -N " + in: true, "iptables -A USER-HOLD -j " + in: true}
	if got := listCordon(t); !equalSets(got, want) {
		t.Errorf("left after release: %v, want %v", got, want)
	}
	if st, err := p.Status(bg); err != nil || st.Isolated {
		t.Errorf("Status = %+v, %v; want not isolated", st, err)
	}
	iptablesCmd("-F", "USER-HOLD")
	iptablesCmd("-X", "USER-HOLD")
	c.reset()
	if n, err := p.Release(bg, "o"); err != nil || n != 1 {
		t.Errorf("Release of the chain left = %d, %v; want 1, nil", n, err)
	}
	if got := saveRules(t); got != before {
		t.Fatalf("ruleset after release:\n%s\nwant:\n%s", got, before)
	}

	// The IPv4 restore fails, then the first removal one at a time (the
	// IPv4 INPUT jump, so its chain cannot go either).
	a = isolate()
	c.failAt = map[int]bool{1: true, 2: true}
	n, err = p.Release(bg, "o")
	if !errors.Is(err, errInjected) || n != len(a.Rules)-2 {
		t.Errorf("Release with a removal failing = %d, %v; want %d and the failure", n, err, len(a.Rules)-2)
	}
	if st, err := p.Status(bg); err != nil || st.Isolated {
		t.Errorf("Status = %+v, %v; want not isolated", st, err)
	}
	c.reset()
	if n, err := p.Release(bg, "o"); err != nil || n != 2 {
		t.Errorf("second Release = %d, %v; want 2 (the jump and its chain), nil", n, err)
	}
	if got := saveRules(t); got != before {
		t.Fatalf("ruleset after release:\n%s\nwant:\n%s", got, before)
	}
}

// TestIsolateRollback makes an Isolate fail at each step of the way it
// writes, from no isolation, from an earlier generation (a swap), and from
// a damaged generation of the same policy (a repair), and checks that the
// ruleset is then exactly as it was: each family's restore failing (the
// first restore changes nothing; a later one has the families already
// changed put back), a restore that applies something other than it was
// given (the read-back check finds it and the family is put back), and
// reads failing, before the restores and in the read-back check.
func TestIsolateRollback(t *testing.T) {
	inNamespace(t, rollbackInNamespace)
}

func rollbackInNamespace(t *testing.T) {
	requireLabNS(t)
	loadSetup(t, "user-rules")
	polB := labPolicy()
	polB.Allow = []netip.Prefix{netip.MustParsePrefix("198.18.0.64/26")}
	cases := []struct {
		name   string
		pre    func(t *testing.T, p *Plugin) // state before the failing Isolate
		target policy.Policy
	}{
		{"from nothing", func(*testing.T, *Plugin) {}, labPolicy()},
		{"swap", func(t *testing.T, p *Plugin) {
			if _, err := p.Isolate(bg, labPolicy(), "pre"); err != nil {
				t.Fatal(err)
			}
		}, polB},
		{"repair", func(t *testing.T, p *Plugin) {
			_ = exec.Command("iptables", "-w", "-D", "INPUT", "-s", "198.18.0.3/32", "-j", "ACCEPT").Run()
			if _, err := p.Isolate(bg, labPolicy(), "pre"); err != nil {
				t.Fatal(err)
			}
			// Someone put a rule above Cordon's jump.
			if out, err := exec.Command("iptables", "-w", "-I", "INPUT", "1", "-s", "198.18.0.3", "-j", "ACCEPT").CombinedOutput(); err != nil {
				t.Fatalf("iptables -I: %v: %s", err, out)
			}
		}, labPolicy()},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := nsPlugin(t)
			c := &faultCounter{}
			withFaults(p, c)
			tc.pre(t, p)
			before := saveRules(t)
			stBefore, _ := p.Status(bg)
			// Record the calls of a successful run, then put things back.
			c.reset()
			if _, err := p.Isolate(bg, tc.target, "count"); err != nil {
				t.Fatalf("Isolate: %v", err)
			}
			ops := c.calls()
			if _, err := p.Release(bg, "reset"); err != nil {
				t.Fatal(err)
			}
			tc.pre(t, p)
			if got := saveRules(t); got != before {
				t.Fatalf("could not recreate the starting state:\n%s\nwant:\n%s", got, before)
			}
			changes, reads := failurePoints(ops)
			if len(changes) != 2 {
				t.Fatalf("calls %s: %d changes, want one restore per family", strings.Join(ops, " "), len(changes))
			}
			t.Logf("calls: %s; failing changes %v and reads %v", strings.Join(ops, " "), changes, reads)
			check := func(t *testing.T, what string) {
				t.Helper()
				if got := saveRules(t); got != before {
					t.Fatalf("after %s the ruleset is:\n%s\nwant:\n%s", what, got, before)
				}
				if st, err := p.Status(bg); err != nil || st.Digest != stBefore.Digest || st.Isolated != stBefore.Isolated {
					t.Errorf("after %s: Status %+v, %v; was %+v", what, st, err, stBefore)
				}
			}
			for _, n := range changes {
				c.reset()
				c.failAt = map[int]bool{n: true}
				_, err := p.Isolate(bg, tc.target, "fail")
				if !errors.Is(err, errInjected) || errors.Is(err, errRollback) {
					t.Fatalf("restore %d failed: Isolate returned %v", n, err)
				}
				check(t, fmt.Sprintf("a failed restore %d", n))
			}
			for _, n := range changes {
				c.reset()
				c.alterAt = n
				_, err := p.Isolate(bg, tc.target, "alter")
				if err == nil || !strings.Contains(err.Error(), "rules read back are not the ones written") || errors.Is(err, errRollback) {
					t.Fatalf("restore %d applied without %q: Isolate returned %v", n, c.altered, err)
				}
				if c.altered == "" {
					t.Fatalf("restore %d was not altered", n)
				}
				check(t, fmt.Sprintf("restore %d applied without %q", n, c.altered))
			}
			for _, n := range reads {
				c.reset()
				c.readFail = n
				_, err := p.Isolate(bg, tc.target, "read")
				if !errors.Is(err, errInjected) || errors.Is(err, errRollback) {
					t.Fatalf("read %d failed: Isolate returned %v", n, err)
				}
				check(t, fmt.Sprintf("a failed read %d", n))
			}
			// When putting back fails too, the error says so.
			c.reset()
			c.failAt = map[int]bool{2: true, 3: true}
			if _, err := p.Isolate(bg, tc.target, "fail twice"); !errors.Is(err, errRollback) {
				t.Errorf("the IPv6 restore and the IPv4 undo failed: Isolate returned %v, want a rollback error", err)
			}
			c.reset()
			if _, err := p.Release(bg, "reset"); err != nil {
				t.Fatal(err)
			}
			tc.pre(t, p)
			// And finally it works.
			c.reset()
			if _, err := p.Isolate(bg, tc.target, "ok"); err != nil {
				t.Fatal(err)
			}
			if st, err := p.Status(bg); err != nil || !st.Isolated {
				t.Errorf("Status = %+v, %v", st, err)
			}
			if _, err := p.Release(bg, "done"); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// failurePoints picks, from the calls of a successful run (faultCounter
// ops), the changes to fail (every one: one restore per family) and the
// reads to fail: the first and last read before, between and after the
// changes, and the first read of each kind.
func failurePoints(ops []string) (changes, reads []int) {
	set := map[int]bool{}
	seen := map[string]bool{}
	r, last := 0, 0 // reads so far; the read before the latest change
	for _, op := range ops {
		if !isRead(op) {
			changes = append(changes, len(changes)+1)
			if r > last {
				set[r] = true // last of its phase
			}
			last = r
			continue
		}
		r++
		if r == last+1 {
			set[r] = true // first of its phase
		}
		if !seen[op] {
			seen[op] = true
			set[r] = true
		}
	}
	set[r] = true
	for n := range set {
		reads = append(reads, n)
	}
	sort.Ints(reads)
	return changes, reads
}

// TestRuleTextMatchesIptables writes the rules of a policy with many shapes
// of address and reads them back: what iptables -S prints must be exactly
// what the plugin wrote, or comparing them would never succeed.
func TestRuleTextMatchesIptables(t *testing.T) {
	if labtest.IsChild(t) {
		ruleTextInNamespace(t)
		return
	}
	l := labtest.New(t)
	host := labtest.AddHost(t, l, "host", "198.18.0.2/24", "fd00:c0de::2/64")
	labtest.RunChild(t, host)
}

func ruleTextInNamespace(t *testing.T) {
	requireLabNS(t)
	pol := policy.Policy{
		Controllers: []policy.Endpoint{
			{Addr: netip.MustParseAddr("198.18.0.1"), Port: 7443},
			{Addr: netip.MustParseAddr("198.18.255.254"), Port: 1},
			{Addr: netip.MustParseAddr("fd00:c0de::1"), Port: 65535},
			{Addr: netip.MustParseAddr("fd00:c0de::1:0:0:1"), Port: 22},
			{Addr: netip.MustParseAddr("::ffff:198.19.0.9"), Port: 443},
		},
		Allow: []netip.Prefix{
			netip.MustParsePrefix("198.18.0.0/15"),
			netip.MustParsePrefix("198.19.128.0/17"),
			netip.MustParsePrefix("198.18.7.7/32"),
			netip.MustParsePrefix("fd00:c0de::/64"),
			netip.MustParsePrefix("fd00:c0de::a:0:0/96"),
			netip.MustParsePrefix("fd00:c0de::1:2:3:4/128"),
			netip.MustParsePrefix("fd00:c0de:0:0:8000::/65"),
		},
		DNS:  []netip.Addr{netip.MustParseAddr("198.18.0.53"), netip.MustParseAddr("fd00:c0de::53")},
		DHCP: true,
	}
	p := nsPlugin(t)
	b, err := p.backend()
	if err != nil || b.v6err != nil || len(b.tabs) != 2 {
		t.Fatalf("backend: %d families, %v, %v", len(b.tabs), err, b.v6err)
	}
	eff, err := effective(pol, b.families())
	if err != nil {
		t.Fatal(err)
	}
	pl := newPlan(eff, b.families(), generation(eff))
	for _, tb := range b.tabs {
		for _, c := range pl.chains[tb.fam] {
			if err := tb.newChain(c.name); err != nil {
				t.Fatal(err)
			}
			for _, r := range c.rules {
				if err := tb.appendRule(r); err != nil {
					t.Fatal(err)
				}
			}
			got, err := tb.rules(c.name)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got, c.rules) {
				t.Errorf("%s reads back as:\n%s\nwritten as:\n%s", c.name, strings.Join(got, "\n"), strings.Join(c.rules, "\n"))
			}
		}
	}
	// Arguments that need quoting reach iptables-restore exactly.
	comments := []string{"a b", `say "hi"`, `back\slash`, `\`, `"`, "it's", "#hash", "", "tab\there", "  lead", "-j DROP"}
	odd := liveFamily{fam: ipv4, chains: map[string][]string{}}
	for _, c := range comments {
		q, err := restoreArg(c)
		if err != nil {
			t.Fatal(err)
		}
		odd.chains["CORDON-QUOTE"] = append(odd.chains["CORDON-QUOTE"], "-A CORDON-QUOTE -m comment --comment "+q+" -j ACCEPT")
	}
	in, err := restoreText(liveFamily{fam: ipv4}, odd)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.tabs[0].restore(in); err != nil {
		t.Fatalf("restore of odd comments: %v\n%s", err, in)
	}
	got, err := b.tabs[0].rules("CORDON-QUOTE")
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(comments) {
		t.Fatalf("CORDON-QUOTE reads back as %q", got)
	}
	for i, c := range comments {
		if f := splitRule(got[i]); len(f) != 8 || f[5] != c {
			t.Errorf("comment %q reads back as %q (%q)", c, got[i], f)
		}
	}
	if _, err := p.Release(bg, "cleanup"); err != nil {
		t.Fatal(err)
	}
	a, err := p.Isolate(bg, pol, "shapes")
	if err != nil {
		t.Fatalf("Isolate: %v", err)
	}
	if got, want := setOf(a.Rules), listCordon(t); !equalSets(got, want) {
		t.Errorf("Applied.Rules differ from iptables -S")
	}
	if _, err := p.Release(bg, "cleanup"); err != nil {
		t.Fatal(err)
	}
}

// TestUnavailable takes iptables and ip6tables away through PATH: no
// iptables is ErrUnavailable and changes nothing; no ip6tables on a host
// with IPv6 isolates IPv4 anyway, leaves it isolated and returns
// ErrUnavailable saying IPv6 is not contained, Status calls that partial and
// Release undoes it; no ip6tables on a host without IPv6 isolates IPv4 only,
// without error.
func TestUnavailable(t *testing.T) {
	inNamespace(t, unavailableInNamespace)
}

func unavailableInNamespace(t *testing.T) {
	hosts := childLab(t)
	before, _ := loadSetup(t, "empty")
	path := os.Getenv("PATH")
	// only4 has iptables and its iptables-restore; noRestore has both
	// iptables commands but neither restore.
	empty, only4, noRestore := t.TempDir(), t.TempDir(), t.TempDir()
	for dir, cmds := range map[string][]string{
		only4:     {"iptables", "iptables-restore"},
		noRestore: {"iptables", "ip6tables"},
	} {
		for _, cmd := range cmds {
			real, err := exec.LookPath(cmd)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(real, filepath.Join(dir, cmd)); err != nil {
				t.Fatal(err)
			}
		}
	}
	p := nsPlugin(t)
	// Opened once with everything in place: what follows must notice
	// that commands went away.
	if _, err := p.Status(bg); err != nil {
		t.Fatal(err)
	}

	for _, dir := range []string{empty, noRestore} {
		t.Setenv("PATH", dir)
		if _, err := p.Info(bg); !errors.Is(err, firewall.ErrUnavailable) {
			t.Errorf("Info with PATH %s: %v, want ErrUnavailable", dir, err)
		}
		if _, err := p.Isolate(bg, labPolicy(), "o"); !errors.Is(err, firewall.ErrUnavailable) {
			t.Errorf("Isolate with PATH %s: %v, want ErrUnavailable", dir, err)
		} else {
			t.Logf("with PATH %s: %v", dir, err)
		}
		t.Setenv("PATH", path)
		if got := saveRules(t); got != before {
			t.Errorf("a refused Isolate changed the ruleset:\n%s\nwant:\n%s", got, before)
		}
	}

	// No ip6tables on a host with IPv6: containment first.
	pol4, _ := effective(labPolicy(), []family{ipv4})
	t.Setenv("PATH", only4)
	a, err := p.Isolate(bg, labPolicy(), "o")
	if !errors.Is(err, firewall.ErrUnavailable) || !strings.Contains(err.Error(), "IPv6 is NOT contained") {
		t.Fatalf("Isolate without ip6tables on a host with IPv6: %v, want ErrUnavailable saying IPv6 is NOT contained", err)
	}
	t.Logf("without ip6tables: %v", err)
	if len(a.Rules) == 0 || a.Digest == "" {
		t.Errorf("Applied = %+v, want the IPv4 rules", a)
	}
	for _, r := range a.Rules {
		if !strings.HasPrefix(r, "iptables ") {
			t.Errorf("rule %q without ip6tables", r)
		}
	}
	st, err := p.Status(bg)
	if err != nil || st.Isolated || st.Digest != a.Digest || !strings.Contains(st.Partial, "IPv6 NOT isolated") {
		t.Errorf("Status = %+v, %v; want not isolated, digest %s, partial naming IPv6", st, err, a.Digest)
	} else {
		t.Logf("partial: %s", st.Partial)
	}
	checkPolicy(t, "Status with IPv4 only isolated", st.Policy, pol4)
	t.Setenv("PATH", path) // saveRules and the probes run other commands
	dump := saveRules(t)
	t.Setenv("PATH", only4)
	again, err := p.Isolate(bg, labPolicy(), "o2")
	if !errors.Is(err, firewall.ErrUnavailable) || again.Digest != a.Digest {
		t.Errorf("Isolate again without ip6tables = %s, %v; want %s and ErrUnavailable", again.Digest, err, a.Digest)
	}
	t.Setenv("PATH", path)
	if got := saveRules(t); got != dump {
		t.Errorf("Isolate again changed the ruleset:\n%s\nwas:\n%s", got, dump)
	}
	checkReach(t, hosts, "IPv4 isolated, IPv6 not contained", []probe{
		{"outside", ap(hostV4, svcPort), false},
		{"host", ap(outsideV4, svcPort), false},
		{"host", ap(ctrlV4, ctrlPort), true},
		{"allowed", ap(hostV4, svcPort), true},
		// What the error says: IPv6 stays open.
		{"outside", ap(hostV6, svcPort), true},
	})
	t.Setenv("PATH", only4)
	if n, err := p.Release(bg, "o"); err != nil || n == 0 {
		t.Errorf("Release without ip6tables = %d, %v", n, err)
	}
	if st, err := p.Status(bg); err != nil || st.Isolated || st.Partial != "" || st.Digest != "" || st.Policy != nil {
		t.Errorf("Status after Release = %+v, %v; want zero", st, err)
	}
	t.Setenv("PATH", path)
	if got := saveRules(t); got != before {
		t.Errorf("ruleset after release:\n%s\nwant:\n%s", got, before)
	}

	// No IPv6 at all in this namespace, and no ip6tables: IPv4 only.
	for _, k := range []string{"all", "default", "lo", "eth0"} {
		if err := os.WriteFile("/proc/sys/net/ipv6/conf/"+k+"/disable_ipv6", []byte("1"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if data, _ := os.ReadFile(ifInet6); len(data) != 0 {
		t.Fatalf("IPv6 still has addresses: %s", data)
	}
	t.Setenv("PATH", only4)
	info, err := p.Info(bg)
	if err != nil || slices.Contains(info.Capabilities, firewall.CapIPv6) || info.Name != Name || info.Version != Version {
		t.Errorf("Info on an IPv4-only host = %+v, %v", info, err)
	}
	a, err = p.Isolate(bg, labPolicy(), "o")
	if err != nil {
		t.Fatalf("Isolate on an IPv4-only host: %v", err)
	}
	for _, r := range a.Rules {
		if !strings.HasPrefix(r, "iptables ") {
			t.Errorf("rule %q on an IPv4-only host", r)
		}
	}
	if st, err := p.Status(bg); err != nil || !st.Isolated || st.Digest != a.Digest {
		t.Errorf("Status = %+v, %v", st, err)
	} else {
		checkPolicy(t, "Status on an IPv4-only host", st.Policy, pol4)
	}
	t.Setenv("PATH", path) // the probes run ip(8)
	checkReach(t, hosts, "IPv4-only isolation", []probe{
		{"outside", ap(hostV4, svcPort), false},
		{"host", ap(outsideV4, svcPort), false},
		{"host", ap(ctrlV4, ctrlPort), true},
	})
	t.Setenv("PATH", only4)
	if _, err := p.Release(bg, "o"); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", path)
	if got := saveRules(t); got != before {
		t.Errorf("ruleset after release:\n%s\nwant:\n%s", got, before)
	}
}

// TestPluginBinary builds cordon-plugin-iptables and drives it over
// go-plugin gRPC with firewall.Launch, inside the host's namespace.
func TestPluginBinary(t *testing.T) {
	if labtest.IsChild(t) {
		binaryInNamespace(t)
		return
	}
	if os.Geteuid() != 0 && os.Getenv(labtest.RequireEnv) == "" {
		t.Skip("skipping namespace test: needs root")
	}
	dir := t.TempDir()
	build := exec.Command("go", "build", "-o", filepath.Join(dir, firewall.BinaryPrefix+Name), ".")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	host, env := newLab(t)
	labtest.RunChild(t, host, append(env, pluginEnv+"="+dir)...)
}

func binaryInNamespace(t *testing.T) {
	hosts := childLab(t)
	before := saveRules(t)
	c, err := firewall.Launch(firewall.LaunchConfig{
		Dir:       os.Getenv(pluginEnv),
		Name:      Name,
		SocketDir: t.TempDir(),
		Stderr:    testWriter{t},
	})
	if err != nil {
		t.Fatalf("Launch: %v", err)
	}
	defer c.Close()
	info, err := c.Info(bg)
	if err != nil || info.Name != Name || info.Version != Version ||
		!slices.Contains(info.Capabilities, firewall.CapIPv6) || !slices.Contains(info.Capabilities, firewall.CapConntrack) {
		t.Errorf("Info = %+v, %v", info, err)
	}

	bad := map[string]policy.Policy{
		"no controller": {Allow: []netip.Prefix{allowNet}},
		"allow all":     {Controllers: labPolicy().Controllers, Allow: []netip.Prefix{netip.MustParsePrefix("::/0")}},
	}
	for name, pol := range bad {
		if _, err := c.Isolate(bg, pol, "bad"); !errors.Is(err, firewall.ErrInvalidPolicy) {
			t.Errorf("%s: Isolate error %v, want ErrInvalidPolicy", name, err)
		}
	}
	if got := saveRules(t); got != before {
		t.Errorf("a refused policy changed the ruleset:\n%s", got)
	}

	start := time.Now()
	a, err := c.Isolate(bg, labPolicy(), "order-grpc")
	took := time.Since(start)
	if err != nil {
		t.Fatalf("Isolate over gRPC: %v", err)
	}
	if got, want := setOf(a.Rules), listCordon(t); !equalSets(got, want) {
		t.Errorf("Applied.Rules differ from iptables -S")
	}
	st, err := c.Status(bg)
	if err != nil || !st.Isolated || st.Digest != a.Digest {
		t.Errorf("Status over gRPC = %+v, %v; want isolated with %s", st, err, a.Digest)
	}
	checkPolicy(t, "Status over gRPC", st.Policy, labPolicy())
	checkReach(t, hosts, "isolated by the plugin binary", []probe{
		{"outside", ap(hostV4, svcPort), false},
		{"outside", ap(hostV6, svcPort), false},
		{"host", ap(ctrlV4, ctrlPort), true},
		{"host", ap(ctrlV6, ctrlPort), true},
	})
	n, err := c.Release(bg, "order-grpc")
	if err != nil || n == 0 {
		t.Errorf("Release over gRPC = %d, %v", n, err)
	}
	if st, err := c.Status(bg); err != nil || st.Isolated || st.Digest != "" || st.Policy != nil {
		t.Errorf("Status after Release = %+v, %v", st, err)
	}
	if c.Exited() {
		t.Error("plugin exited")
	}
	t.Logf("Isolate over gRPC took %v (%d rules, digest %s)", took, len(a.Rules), a.Digest)
}

// TestWarnsOfLegacyBeside: with iptables-legacy rules beside the
// iptables-nft ones the plugin writes to, Isolate says so in its log.
func TestWarnsOfLegacyBeside(t *testing.T) {
	inNamespace(t, func(t *testing.T) {
		if out, err := exec.Command("iptables", "-V").Output(); err != nil || !strings.Contains(string(out), "nf_tables") {
			t.Skipf("iptables here is not iptables-nft: %s", out)
		}
		if out, err := exec.Command("iptables-legacy", "-A", "FORWARD", "-j", "ACCEPT").CombinedOutput(); err != nil {
			t.Fatalf("iptables-legacy: %v\n%s", err, out)
		}
		var log strings.Builder
		p := New(Options{Logger: hclog.New(&hclog.LoggerOptions{Output: &log, Level: hclog.Info})})
		p.open = nsPlugin(t).open
		if _, err := p.Isolate(bg, labPolicy(), "order-1"); err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(log.String(), "iptables-legacy tables are in use beside iptables-nft") || !strings.Contains(log.String(), "ip filter") {
			t.Errorf("no warning of the legacy tables in the log:\n%s", log.String())
		}
		if _, err := p.Release(bg, "order-2"); err != nil {
			t.Fatal(err)
		}
		exec.Command("iptables-legacy", "-D", "FORWARD", "-j", "ACCEPT").Run()
	})
}
