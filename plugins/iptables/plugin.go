package main

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
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

// DefaultLockWait is how long each iptables command waits for the xtables
// lock that another program holds (iptables --wait), when Options.LockWait
// is zero.
const DefaultLockWait = 10 * time.Second

// Options configure a Plugin. The zero value is usable.
type Options struct {
	// Logger receives the plugin's log lines; under go-plugin it writes to
	// stderr, which the host reads. Nil discards them.
	Logger hclog.Logger
	// LockWait bounds how long each iptables command waits for the xtables
	// lock held by another program, in whole seconds (rounded up); zero
	// means DefaultLockWait. A command that waits longer fails with an
	// error saying so.
	LockWait time.Duration
}

// Plugin is the iptables implementation of firewall.Firewall. It isolates a
// host with three chains per IP family in the filter table, named
// CORDON-IN-<gen>, CORDON-OUT-<gen> and CORDON-FWD-<gen> after a generation
// derived from the policy, each linked in by a jump at the top of INPUT,
// OUTPUT and FORWARD. It keeps no state of its own: everything it knows it
// reads back from the kernel, so it finds its rules after a restart.
//
// It drives iptables(8) and ip6tables(8) through go-iptables, and cuts
// established flows through the conntrack netlink interface (conntrack(8)).
// Calls are serialised. It must run in the host's network namespace as root.
type Plugin struct {
	log  hclog.Logger
	wait time.Duration
	mu   sync.Mutex

	// Operating-system boundaries; tests replace them.
	open       func(family) (ipTables, error)
	flows      flowTable
	hostIPv6   func() (string, error)
	localAddrs func() func(netip.Addr) bool
}

var _ firewall.Firewall = (*Plugin)(nil)

// New returns a Plugin configured by o.
func New(o Options) *Plugin {
	p := &Plugin{log: o.Logger, wait: o.LockWait}
	if p.log == nil {
		p.log = hclog.NewNullLogger()
	}
	if p.wait <= 0 {
		p.wait = DefaultLockWait
	}
	p.open = func(f family) (ipTables, error) { return openIPTables(f, p.wait) }
	p.flows = conntrackTable{}
	p.hostIPv6 = hostIPv6Addr
	p.localAddrs = flowcut.LocalAddrs
	return p
}

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

// readAll reads the live rules of every family in use.
func (b backend) readAll() ([]liveFamily, error) {
	var out []liveFamily
	for _, t := range b.tabs {
		lf, err := t.read()
		if err != nil {
			return nil, err
		}
		out = append(out, lf)
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
// when they relate to a connection the rules allow. It builds the new
// generation's chains complete, checks them, links them in at the top of
// INPUT, OUTPUT and FORWARD, then unlinks and deletes any earlier
// generation; on any error it undoes what it did, leaving an earlier
// generation as it was. Isolating with the policy already in place changes
// nothing and returns the same digest.
//
// Once the rules are in place it deletes the conntrack entries of flows pol
// does not allow and counts them in FlowsCut; a conntrack failure is logged,
// not returned, since the drop rules already stop those flows' packets.
//
// Applied.Rules are Cordon's rules as read back (see Status) and
// Applied.Digest their SHA-256. Errors: firewall.ErrInvalidPolicy when pol
// cannot be applied (it fails Validate, names no controller of an IP family
// in use, or allows a /0); firewall.ErrUnavailable when iptables does not
// work.
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
	var j journal
	final, err := swap(ctx, b, live, pl, &j)
	if err != nil {
		if rerr := j.rollback(); rerr != nil {
			log.Error("undoing a failed isolation failed: rules may be half-applied", "error", rerr)
			err = errors.Join(err, fmt.Errorf("rollback: %w", rerr))
		}
		log.Error("isolation failed", "generation", pl.gen, "error", err)
		return firewall.Applied{}, err
	}
	lines := ruleLines(final)
	a := firewall.Applied{Digest: digestLines(lines), Rules: lines}
	a.FlowsCut = p.cutFlows(eff, b, log)
	return a, nil
}

// swap puts plan pl in place of whatever Cordon rules live describes,
// recording how to undo each change in j, and returns the rules read back.
func swap(ctx context.Context, b backend, live []liveFamily, pl plan, j *journal) ([]liveFamily, error) {
	// 1. Move aside chains whose names the new generation needs: leftovers
	// of this generation that are damaged or not linked right. Jumps follow
	// a renamed chain, so what they enforce stays in force.
	moved := false
	for i, t := range b.tabs {
		for _, c := range pl.chains[t.fam] {
			if _, ok := live[i].chains[c.name]; !ok {
				continue
			}
			stash := stashName(live[i], c.name)
			if err := t.rename(c.name, stash); err != nil {
				return nil, err
			}
			j.add("rename "+c.name, func() error { return t.rename(stash, c.name) })
			live[i].chains[stash] = nil
			moved = true
		}
	}
	if moved {
		var err error
		if live, err = b.readAll(); err != nil {
			return nil, err
		}
	}
	// 2. Build the new chains complete, and check them, before linking.
	for _, t := range b.tabs {
		for _, c := range pl.chains[t.fam] {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
			if err := t.newChain(c.name); err != nil {
				return nil, err
			}
			j.add("create "+c.name, func() error { return errors.Join(t.flush(c.name), t.deleteChain(c.name)) })
			for _, r := range c.rules {
				if err := t.appendRule(r); err != nil {
					return nil, err
				}
			}
			got, err := t.rules(c.name)
			if err != nil {
				return nil, err
			}
			if !slices.Equal(got, c.rules) {
				return nil, fmt.Errorf("%s: chain %s reads back differently from what was written:\nwrote:\n%s\nread:\n%s",
					t.fam.command(), c.name, strings.Join(c.rules, "\n"), strings.Join(got, "\n"))
			}
		}
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	// 3. Link: a jump at the top of INPUT, OUTPUT and FORWARD.
	for _, t := range b.tabs {
		for _, c := range pl.chains[t.fam] {
			jump := c.jump()
			if err := t.insertRule(1, jump); err != nil {
				return nil, err
			}
			j.add("link "+c.name, func() error { return t.deleteRule(jump) })
		}
	}
	// 4. Unlink every other jump to a Cordon chain, bottom up so that the
	// recorded positions stay right for the undo.
	for i, t := range b.tabs {
		for _, bi := range builtins {
			rules, err := t.rules(bi)
			if err != nil {
				return nil, err
			}
			for k := len(rules) - 1; k >= 0; k-- {
				r := rules[k]
				if !strings.HasPrefix(ruleTarget(r), ChainPrefix) || (k == 0 && isJumpOf(pl.chains[t.fam], r)) {
					continue
				}
				if err := t.deleteRule(r); err != nil {
					return nil, err
				}
				pos := k + 1
				j.add("unlink "+r, func() error { return t.insertRule(pos, r) })
			}
		}
		// 5. Delete the old chains.
		for _, c := range live[i].sortedChains() {
			if isChainOf(pl.chains[t.fam], c) {
				continue
			}
			rules, err := t.rules(c)
			if err != nil {
				return nil, err
			}
			if err := t.flush(c); err != nil {
				return nil, err
			}
			j.add("flush "+c, func() error {
				var errs []error
				for _, r := range rules {
					errs = append(errs, t.appendRule(r))
				}
				return errors.Join(errs...)
			})
			if err := t.deleteChain(c); err != nil {
				return nil, err
			}
			j.add("delete "+c, func() error { return t.newChain(c) })
		}
	}
	// 6. Read everything back and check it is exactly the plan.
	final, err := b.readAll()
	if err != nil {
		return nil, fmt.Errorf("verify: %w", err)
	}
	ev := evaluate(final)
	var want []liveFamily
	for _, f := range pl.fams {
		want = append(want, pl.expected(f))
	}
	if ev.gen != pl.gen || len(ev.problems) > 0 || !slices.Equal(ruleLines(final), ruleLines(want)) {
		return nil, fmt.Errorf("verify: rules read back are not the ones written: %s", strings.Join(ev.problems, "; "))
	}
	return final, nil
}

// stashName returns a free name to move chain c aside to.
func stashName(lf liveFamily, c string) string {
	for n := 1; ; n++ {
		s := c + "-X" + strconv.Itoa(n)
		if _, ok := lf.chains[s]; !ok {
			return s
		}
	}
}

func isJumpOf(cs []chainPlan, rule string) bool {
	return slices.ContainsFunc(cs, func(c chainPlan) bool { return c.jump() == rule })
}

func isChainOf(cs []chainPlan, name string) bool {
	return slices.ContainsFunc(cs, func(c chainPlan) bool { return c.name == name })
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
// Isolate included. It returns how many rules and chains it removed (each
// jump, each rule of a removed chain, each chain) and succeeds when there was
// nothing to remove. On an error it still removes what it can and returns
// the errors joined. When ip6tables does not work it removes the IPv4 rules
// and logs that IPv6 could not be checked.
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
	removed := 0
	var errs []error
	for _, t := range b.tabs {
		n, err := releaseFamily(t)
		removed += n
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		log.Error("release failed", "removed", removed, "error", err)
		return removed, fmt.Errorf("release: %w", err)
	}
	log.Info("released", "removed", removed)
	return removed, nil
}

// releaseFamily removes Cordon's jumps and chains from one family and checks
// that none is left.
func releaseFamily(t tab) (int, error) {
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
