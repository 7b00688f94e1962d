package main

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/cordon-ir/cordon/internal/flowcut"
	"github.com/cordon-ir/cordon/pkg/firewall"
	"github.com/cordon-ir/cordon/pkg/policy"
)

// Name is the plugin's name, as Info reports it and as its executable is
// called (cordon-plugin-iptables).
const Name = "iptables"

// Version is the plugin's version as Info reports it.
const Version = "0.1.0"

// DefaultLockWait is how long each iptables or iptables-restore command
// waits for the xtables lock that another program holds (--wait), when
// Options.LockWait is zero.
const DefaultLockWait = 10 * time.Second

// Options configure a Plugin. The zero value is usable.
type Options struct {
	// Logger receives the plugin's log lines; under go-plugin it writes to
	// stderr, which the host reads. Nil discards them.
	Logger hclog.Logger
	// LockWait bounds how long each iptables or iptables-restore command
	// waits for the xtables lock held by another program (iptables-legacy;
	// iptables-nft takes none), in whole seconds (rounded up); zero means
	// DefaultLockWait. A command that waits longer fails with an error
	// saying so.
	LockWait time.Duration
}

// Plugin is the iptables implementation of firewall.Firewall. It isolates a
// host with three chains per IP family in the filter table, named
// CORDON-IN-<gen>, CORDON-OUT-<gen> and CORDON-FWD-<gen> after a generation
// derived from the policy, each linked in by a jump at the top of INPUT,
// OUTPUT and FORWARD. It keeps no state of its own: everything it knows it
// reads back from the kernel, so it finds its rules after a restart.
//
// It reads the rules with iptables(8) and ip6tables(8) through go-iptables,
// and changes them with iptables-restore(8) and ip6tables-restore, one
// commit per family and call (see Isolate); it cuts established flows
// through the conntrack netlink interface (conntrack(8)). It opens each
// family's iptables once and keeps it while PATH still finds the same
// commands. Calls are serialised. It must run in the host's network
// namespace as root.
type Plugin struct {
	log  hclog.Logger
	wait time.Duration
	mu   sync.Mutex
	// opened is each family's iptables kept between calls (openCached).
	opened map[family]*xtables

	// Operating-system boundaries; tests replace them.
	open       func(family) (ipTables, error)
	flows      flowTable
	hostIPv6   func() (string, error)
	localAddrs func() func(netip.Addr) bool
}

var _ firewall.Firewall = (*Plugin)(nil)

// New returns a Plugin configured by o.
func New(o Options) *Plugin {
	p := &Plugin{log: o.Logger, wait: o.LockWait, opened: map[family]*xtables{}}
	if p.log == nil {
		p.log = hclog.NewNullLogger()
	}
	if p.wait <= 0 {
		p.wait = DefaultLockWait
	}
	p.open = p.openCached
	p.flows = conntrackTable{}
	p.hostIPv6 = hostIPv6Addr
	p.localAddrs = flowcut.LocalAddrs
	return p
}

// openCached returns family f's iptables, opened (openIPTables: a version
// check and a listing of INPUT) on first use and kept while the commands are
// still those PATH finds: every call looks them up again, a few stat calls,
// so that iptables taken away or another one put first in PATH is noticed
// at once. A call that fails forgets them all (forget), so that the next
// one opens afresh.
func (p *Plugin) openCached(f family) (ipTables, error) {
	path, restore, err := commands(f)
	if err != nil {
		delete(p.opened, f)
		return nil, err
	}
	if x := p.opened[f]; x != nil && x.path == path && x.restorePath == restore {
		return x, nil
	}
	delete(p.opened, f)
	x, err := openIPTables(f, p.wait)
	if err != nil {
		return nil, err
	}
	p.opened[f] = x
	return x, nil
}

// forget drops the iptables kept open, after a call that failed.
func (p *Plugin) forget() { clear(p.opened) }

// backend is the iptables of each family in use.
type backend struct {
	tabs []tab
	// v6err says why IPv6 is not isolated although the host has IPv6;
	// nil when IPv6 is in use or the host has none.
	v6err error
	// v6off says why IPv6 is not in use on a host without IPv6.
	v6off error
}

func (b backend) families() []family {
	var out []family
	for _, t := range b.tabs {
		out = append(out, t.fam)
	}
	return out
}

// each runs fn for every family in use, at once when every family's
// backend allows it (ipTables.Concurrent), and returns their errors in
// family order.
func (b backend) each(fn func(i int, t tab) error) []error {
	errs := make([]error, len(b.tabs))
	if slices.ContainsFunc(b.tabs, func(t tab) bool { return !t.ipt.Concurrent() }) {
		for i, t := range b.tabs {
			errs[i] = fn(i, t)
		}
		return errs
	}
	var wg sync.WaitGroup
	for i, t := range b.tabs {
		wg.Go(func() { errs[i] = fn(i, t) })
	}
	wg.Wait()
	return errs
}

// readAll reads the live rules of every family in use, the families at
// once.
func (b backend) readAll() ([]liveFamily, error) {
	out := make([]liveFamily, len(b.tabs))
	errs := b.each(func(i int, t tab) (err error) {
		out[i], err = t.read()
		return err
	})
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return out, nil
}

// backend opens iptables for each family. IPv4 must work, or it returns
// firewall.ErrUnavailable. When ip6tables does not work IPv6 is left out:
// on a host with no IPv6 address other than loopback that is recorded in
// v6off; on a host with one, IPv6 stays open and v6err says so (an
// ErrUnavailable error).
func (p *Plugin) backend() (backend, error) {
	var b backend
	v4, err := p.open(ipv4)
	if err != nil {
		return b, fmt.Errorf("%w: %v", firewall.ErrUnavailable, err)
	}
	b.tabs = append(b.tabs, tab{fam: ipv4, ipt: v4, wait: p.wait})
	v6, err6 := p.open(ipv6)
	if err6 == nil {
		b.tabs = append(b.tabs, tab{fam: ipv6, ipt: v6, wait: p.wait})
		return b, nil
	}
	addr, err := p.hostIPv6()
	if err != nil {
		// Fail closed: not knowing is treated as having IPv6.
		addr = "unknown: " + err.Error()
	}
	if addr == "" {
		b.v6off = err6
		return b, nil
	}
	b.v6err = fmt.Errorf("%w: ip6tables does not work but the host has IPv6 (%s): %v", firewall.ErrUnavailable, addr, err6)
	return b, nil
}

// Info reports the plugin's name, version and capabilities: "ipv6" when
// ip6tables works, "conntrack" when the conntrack netlink interface does. It
// returns firewall.ErrUnavailable (wrapped) when iptables does not work.
func (p *Plugin) Info(_ context.Context) (firewall.Info, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	info := firewall.Info{Name: Name, Version: Version}
	b, err := p.backend()
	if err != nil {
		return info, fmt.Errorf("info: %w", err)
	}
	if len(b.tabs) == 2 {
		info.Capabilities = append(info.Capabilities, firewall.CapIPv6)
	}
	if p.flows.available() == nil {
		info.Capabilities = append(info.Capabilities, firewall.CapConntrack)
	}
	return info, nil
}

// Isolate makes the host reachable only as pol allows: loopback, the
// controller endpoints and the allowlist CIDRs, in, out and forwarded, over
// IPv4 and (when the host has it) IPv6. The controller endpoints are reached
// over TCP to their port, on connections the host opens: what comes from
// their address and port is let in only as part of such a connection
// (conntrack ESTABLISHED), so whoever takes the controller's address cannot
// open one to the host. ICMP errors that path-MTU discovery needs are let in
// when they relate to a connection the rules allow.
//
// It reads what is in place (the whole filter table once per family, then
// the chains it needs), then changes each family in one iptables-restore
// --noflush, IPv4 first: one commit creates the new generation's chains
// (or rebuilds those of a damaged one of the same name), fills them, puts
// the jumps to them at the top of INPUT, OUTPUT and FORWARD, and removes
// every other jump to a Cordon chain and every other Cordon chain. The
// kernel applies a table's commit whole (iptables-nft: one nf_tables
// transaction; iptables-legacy: one table replace), so a family is never
// half changed, and a plugin killed mid-way leaves the family as it was.
// It then reads the families' builtin chains and Cordon chains back and
// checks that they are exactly the plan. If a restore fails, nothing of it
// is applied; if a later family's restore or the check fails, every family
// already changed is put back as it was read, again with one restore each.
// Isolating with the policy already in place changes nothing and returns
// the same digest.
//
// Once the rules are in place it deletes the conntrack entries of flows pol
// does not allow and counts them in FlowsCut; a conntrack failure is logged,
// not returned, since the drop rules already stop those flows' packets.
//
// Applied.Rules are Cordon's rules as read back (see Status) and
// Applied.Digest their SHA-256. Errors: firewall.ErrInvalidPolicy when pol
// cannot be applied (it fails Validate, names no controller of an IP family
// in use, or allows a /0); firewall.ErrUnavailable when iptables (or its
// iptables-restore) does not work.
//
// When ip6tables does not work on a host that has IPv6, containment comes
// first: Isolate isolates IPv4 as above, leaves those rules in place (fail
// closed), and returns the IPv4 Applied together with an ErrUnavailable
// error saying that IPv6 is NOT contained, so that the order fails loudly.
// Status then reports the host not isolated, with Partial naming IPv6, and
// Release removes the IPv4 rules. If pol names no IPv4 controller endpoint
// in that case, isolating IPv4 would leave no policy to read back, so
// nothing is changed and the error says that neither family is contained.
func (p *Plugin) Isolate(ctx context.Context, pol policy.Policy, orderID string) (firewall.Applied, error) {
	start := time.Now()
	log := p.log.With("order_id", orderID)
	if err := pol.Validate(); err != nil {
		return firewall.Applied{}, fmt.Errorf("isolate: %w: %v", firewall.ErrInvalidPolicy, err)
	}
	if _, err := effective(pol, []family{ipv4, ipv6}); err != nil {
		return firewall.Applied{}, fmt.Errorf("isolate: %w: %v", firewall.ErrInvalidPolicy, err)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	b, err := p.backend()
	if err != nil {
		return firewall.Applied{}, fmt.Errorf("isolate: %w", err)
	}
	if len(b.tabs) > 0 && b.tabs[0].ipt.Concurrent() {
		if legacy := legacyTablesInUse(); legacy != "" {
			// Both sets of chains hook into netfilter; a drop in either is
			// final, so Cordon's chains in iptables-nft hold over them.
			log.Warn("iptables-legacy tables are in use beside iptables-nft: Cordon's chains are in iptables-nft, where this plugin reads and writes; the legacy chains run on the same hooks and cannot undo its drops",
				"legacy_tables", legacy)
		}
	}
	switch {
	case b.v6err != nil:
		log.Error("IPv6 is NOT contained: isolating IPv4 only", "error", b.v6err)
	case b.v6off != nil:
		log.Warn("isolating IPv4 only: the host has no IPv6 and ip6tables does not work", "reason", b.v6off)
	}
	eff, err := effective(pol, b.families())
	if err != nil {
		if b.v6err != nil {
			return firewall.Applied{}, fmt.Errorf("isolate: neither IPv6 nor IPv4 is contained, nothing was changed: %w; and IPv4 cannot be isolated alone: %v", b.v6err, err)
		}
		return firewall.Applied{}, fmt.Errorf("isolate: %w: %v", firewall.ErrInvalidPolicy, err)
	}
	pl := newPlan(eff, b.families(), generation(eff))
	a, err := p.apply(ctx, pl, eff, b, log)
	if err != nil {
		p.forget()
		return firewall.Applied{}, fmt.Errorf("isolate: %w", err)
	}
	log.Info("isolated", "generation", pl.gen, "digest", a.Digest, "rules", len(a.Rules), "flows_cut", a.FlowsCut,
		"families", famList(b.families()), "took", time.Since(start))
	if b.v6err != nil {
		return a, fmt.Errorf("isolate: IPv6 is NOT contained, only IPv4 is (its rules stay in place, digest %s): %w", a.Digest, b.v6err)
	}
	return a, nil
}

// apply puts plan pl, which enforces eff in b's families, in place unless
// it already is, and then cuts the flows eff does not allow.
func (p *Plugin) apply(ctx context.Context, pl plan, eff policy.Policy, b backend, log hclog.Logger) (firewall.Applied, error) {
	live, err := b.readAll()
	if err != nil {
		return firewall.Applied{}, fmt.Errorf("read rules: %w", err)
	}
	if ev := evaluate(live); !ev.empty && ev.gen == pl.gen && len(ev.problems) == 0 {
		lines := ruleLines(live)
		d := digestLines(lines)
		log.Info("already isolated by this policy, nothing changed", "generation", pl.gen, "digest", d)
		return firewall.Applied{Digest: d, Rules: lines}, nil
	}
	final, err := swap(ctx, b, live, pl)
	if err != nil {
		if errors.Is(err, errRollback) {
			log.Error("putting back the rules after a failed isolation failed: a family may keep the new rules", "error", err)
		}
		log.Error("isolation failed", "generation", pl.gen, "error", err)
		return firewall.Applied{}, err
	}
	lines := ruleLines(final)
	a := firewall.Applied{Digest: digestLines(lines), Rules: lines}
	a.FlowsCut = p.cutFlows(eff, b, log)
	return a, nil
}

// errRollback marks the failure to put back what a failed isolation
// changed.
var errRollback = errors.New("rollback failed")

// swap puts plan pl in place of whatever Cordon rules live describes, one
// iptables-restore per family (restoreText), IPv4 first so that a filter
// table the host did not have appears in a stable order, and returns the
// rules read back. A family whose restore fails is left as it was, and the
// next is not touched. The check reads only the builtin chains, the plan's
// chains and, to see that they are gone, the chains removed. On any failure
// it puts back every family it changed (putBack).
func swap(ctx context.Context, b backend, live []liveFamily, pl plan) ([]liveFamily, error) {
	want := make([]liveFamily, len(b.tabs))
	changed := 0
	var err error
	for i, t := range b.tabs {
		want[i] = pl.expected(t.fam)
		var in string
		if in, err = restoreText(live[i], want[i]); err != nil {
			break
		}
		if err = ctx.Err(); err != nil {
			break
		}
		if err = t.restore(in); err != nil {
			break
		}
		changed = i + 1
	}
	var final []liveFamily
	if err == nil {
		final = make([]liveFamily, len(b.tabs))
		errs := b.each(func(i int, t tab) (err error) {
			final[i], err = t.readChains(want[i].sortedChains(), removed(live[i], want[i]))
			return err
		})
		if err = errors.Join(errs...); err != nil {
			err = fmt.Errorf("verify: %w", err)
		} else {
			err = verify(final, want, pl.gen)
		}
	}
	if err == nil {
		return final, nil
	}
	if changed > 0 {
		if rerr := putBack(b.tabs[:changed], live[:changed]); rerr != nil {
			err = errors.Join(err, fmt.Errorf("%w: %w", errRollback, rerr))
		}
	}
	return nil, err
}

// verify checks that the rules read back, got, are exactly the plan's,
// want, of generation gen.
func verify(got, want []liveFamily, gen string) error {
	ev := evaluate(got)
	g, w := ruleLines(got), ruleLines(want)
	if ev.gen == gen && len(ev.problems) == 0 && slices.Equal(g, w) {
		return nil
	}
	problems := append(ev.problems, diffLines(g, w)...)
	return fmt.Errorf("verify: rules read back are not the ones written: %s", strings.Join(problems, "; "))
}

// diffLines describes how the lines got differ from want: each missing,
// each extra, or their order.
func diffLines(got, want []string) []string {
	var out []string
	for _, l := range want {
		if !slices.Contains(got, l) {
			out = append(out, fmt.Sprintf("%q missing", l))
		}
	}
	for _, l := range got {
		if !slices.Contains(want, l) {
			out = append(out, fmt.Sprintf("%q not expected", l))
		}
	}
	if len(out) == 0 && !slices.Equal(got, want) {
		out = append(out, "rules out of order or repeated")
	}
	return out
}

// putBack returns each family of tabs to the state live describes: it reads
// what is there now, replaces Cordon's part of it in one iptables-restore
// (the jumps go back where they were), and checks that it reads back as
// live did.
func putBack(tabs []tab, live []liveFamily) error {
	var errs []error
	for i, t := range tabs {
		now, err := t.read()
		var in string
		if err == nil {
			in, err = restoreText(now, live[i])
		}
		if err == nil {
			err = t.restore(in)
		}
		var after liveFamily
		if err == nil {
			after, err = t.read()
		}
		if err == nil {
			if d := diffLines(stateLines(after), stateLines(live[i])); len(d) > 0 {
				err = fmt.Errorf("%s: the rules put back read back differently: %s", t.fam.command(), strings.Join(d, "; "))
			}
		}
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// stateLines returns lf's Cordon chains (ruleLines) and every rule of
// INPUT, OUTPUT and FORWARD, in order.
func stateLines(lf liveFamily) []string {
	out := ruleLines([]liveFamily{lf})
	for _, bi := range builtins {
		out = append(out, lf.builtins[bi]...)
	}
	return out
}

// cutFlows deletes the conntrack entries of flows eff does not allow, in each
// family in use, and returns how many it deleted. Failures are logged only.
func (p *Plugin) cutFlows(eff policy.Policy, b backend, log hclog.Logger) uint64 {
	local := p.localAddrs()
	keep := func(fl flowcut.Flow) bool { return flowcut.Keep(fl, eff, local) }
	var total uint64
	for _, f := range b.families() {
		n, err := p.flows.cut(f, keep)
		total += n
		if err != nil {
			log.Warn("cutting established flows failed; the drop rules still stop their packets",
				"family", f.String(), "cut", n, "error", err)
		}
	}
	return total
}

// Release removes every jump to a Cordon chain from INPUT, OUTPUT and
// FORWARD, and every chain of the filter table whose name starts with
// ChainPrefix, in each family, and nothing else: remnants of a crashed
// Isolate included. Each family goes in one iptables-restore (one commit),
// after which the builtin chains and the removed chains are checked. When
// that commit fails, for instance because another program's chain jumps to
// a Cordon chain so that it cannot be deleted, it falls back on removing
// the pieces one at a time with go-iptables, so that it still removes what
// it can. It returns how many rules and chains it removed (each jump, each
// rule of a removed chain, each chain) and succeeds when there was nothing
// to remove. On an error it returns the errors joined. When ip6tables does
// not work it removes the IPv4 rules and logs that IPv6 could not be
// checked.
func (p *Plugin) Release(_ context.Context, orderID string) (int, error) {
	log := p.log.With("order_id", orderID)
	p.mu.Lock()
	defer p.mu.Unlock()
	b, err := p.backend()
	if err != nil {
		return 0, fmt.Errorf("release: %w", err)
	}
	if b.v6err != nil {
		log.Warn("IPv6 rules cannot be checked", "error", b.v6err)
	}
	live := make([]liveFamily, len(b.tabs))
	errs := b.each(func(i int, t tab) (err error) {
		live[i], err = t.read()
		return err
	})
	// One commit per family, one family after the other.
	counts := make([]int, len(b.tabs))
	restored := make([]bool, len(b.tabs))
	for i, t := range b.tabs {
		if errs[i] != nil || len(ruleLines(live[i:i+1])) == 0 {
			continue
		}
		in, err := restoreText(live[i], liveFamily{fam: t.fam})
		if err == nil {
			err = t.restore(in)
		}
		if err == nil {
			counts[i], restored[i] = removedCount(live[i]), true
			continue
		}
		if errors.Is(err, errLockHeld) {
			errs[i] = err
			continue
		}
		log.Warn("removing the rules in one commit failed; removing them one at a time", "family", t.fam.String(), "error", err)
		counts[i], errs[i] = releaseOneByOne(t)
		if errs[i] != nil {
			errs[i] = errors.Join(err, errs[i])
		}
	}
	// Check the families done in one commit.
	checked := b.each(func(i int, t tab) error {
		if !restored[i] {
			return nil
		}
		after, err := t.readChains(nil, removed(live[i], liveFamily{}))
		if err != nil {
			return err
		}
		if left := ruleLines([]liveFamily{after}); len(left) > 0 {
			return fmt.Errorf("%s: rules left after release: %s", t.fam.command(), strings.Join(left, "; "))
		}
		return nil
	})
	n := 0
	for _, c := range counts {
		n += c
	}
	if err := errors.Join(append(errs, checked...)...); err != nil {
		p.forget()
		log.Error("release failed", "removed", n, "error", err)
		return n, fmt.Errorf("release: %w", err)
	}
	log.Info("released", "removed", n)
	return n, nil
}

// removedCount is what Release counts for removing lf's Cordon rules: each
// jump, each rule of a Cordon chain and each chain.
func removedCount(lf liveFamily) int {
	n := 0
	for _, bi := range builtins {
		js, _ := lf.jumps(bi)
		n += len(js)
	}
	for _, rules := range lf.chains {
		n += len(rules) + 1
	}
	return n
}

// releaseOneByOne removes Cordon's jumps and chains from one family a
// change at a time, going on past what fails, and checks that none is
// left.
func releaseOneByOne(t tab) (int, error) {
	lf, err := t.read()
	if err != nil {
		return 0, err
	}
	n := 0
	var errs []error
	for _, bi := range builtins {
		js, _ := lf.jumps(bi)
		for k := len(js) - 1; k >= 0; k-- {
			if err := t.deleteRule(js[k]); err != nil {
				errs = append(errs, err)
				continue
			}
			n++
		}
	}
	for _, c := range lf.sortedChains() {
		if err := t.flush(c); err != nil {
			errs = append(errs, err)
			continue
		}
		n += len(lf.chains[c])
		if err := t.deleteChain(c); err != nil {
			errs = append(errs, err)
			continue
		}
		n++
	}
	if err := errors.Join(errs...); err != nil {
		return n, err
	}
	after, err := t.read()
	if err != nil {
		return n, err
	}
	if left := ruleLines([]liveFamily{after}); len(left) > 0 {
		return n, fmt.Errorf("%s: rules left after release: %s", t.fam.command(), strings.Join(left, "; "))
	}
	return n, nil
}

// Status reads Cordon's rules back from the kernel. Rules lists them, per
// family (iptables, then ip6tables): each Cordon chain ("-N" line, then its
// rules as iptables -S prints them), then the jumps to them from INPUT,
// OUTPUT and FORWARD, each line prefixed with the family's command. Digest is
// "sha256:<hex>" over those lines, each ended by a newline, computed as
// Isolate computes it. Isolated is true when exactly one generation is in
// place, complete, unmodified and linked first in every builtin chain, in
// every family the host has; otherwise Partial says what is missing or extra
// ("IPv6 OUTPUT jump missing", "IPv6 NOT isolated: …" when ip6tables does
// not work on a host with IPv6).
//
// Policy is the policy the rules in place enforce, read back from the rules
// of the generation most present: in canonical form (policy.Canonical), for
// the families isolated, so after a complete Isolate it is the policy given,
// canonical, less any family the host does not isolate. It is nil when what
// is in place names no controller endpoint (it is then no valid policy).
// With no Cordon rules at all, Status is the zero value (Policy nil).
func (p *Plugin) Status(_ context.Context) (firewall.Status, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	b, err := p.backend()
	if err != nil {
		return firewall.Status{}, fmt.Errorf("status: %w", err)
	}
	live, err := b.readAll()
	if err != nil {
		p.forget()
		return firewall.Status{}, fmt.Errorf("status: read rules: %w", err)
	}
	ev := evaluate(live)
	if ev.empty {
		return firewall.Status{}, nil
	}
	lines := ruleLines(live)
	st := firewall.Status{Digest: digestLines(lines), Rules: lines}
	if ev.gen != "" && ev.pol.Validate() == nil {
		pol := ev.pol
		st.Policy = &pol
	}
	problems := ev.problems
	if b.v6err != nil {
		problems = append(problems, "IPv6 NOT isolated: "+b.v6err.Error())
	}
	st.Isolated = len(problems) == 0
	st.Partial = strings.Join(problems, "; ")
	return st, nil
}
