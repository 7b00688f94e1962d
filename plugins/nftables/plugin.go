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

	"github.com/google/nftables"
	"github.com/hashicorp/go-hclog"

	"github.com/cordon-ir/cordon/internal/flowcut"
	"github.com/cordon-ir/cordon/pkg/firewall"
	"github.com/cordon-ir/cordon/pkg/policy"
)

// Name is the plugin's name, as Info reports it and as its executable is
// called (cordon-plugin-nftables).
const Name = "nftables"

// Version is the plugin's version as Info reports it.
const Version = "0.1.0"

// Options configure a Plugin. The zero value is usable.
type Options struct {
	// Logger receives the plugin's log lines; under go-plugin it writes to
	// stderr, which the host reads. Nil discards them.
	Logger hclog.Logger
}

// Plugin is the nftables implementation of firewall.Firewall. It isolates
// a host with one table of its own, inet cordon, holding three base chains
// (input, output and forward, at Priority, policy drop) that accept only
// what the policy allows. The table is put in place, replaced and removed
// in single netlink transactions (one batch each, which the kernel applies
// entirely or not at all), so the host is never half isolated. It keeps
// no state of its own: everything it knows it reads back from the kernel.
//
// It speaks to the kernel's nf_tables over netlink through google/nftables
// (no nft binary needed) and cuts established flows through the conntrack
// netlink interface (flowcut). Calls are serialised. It must run in the
// host's network namespace with CAP_NET_ADMIN.
type Plugin struct {
	log hclog.Logger
	mu  sync.Mutex

	// Operating-system boundaries; tests replace them.
	dial       func() (*nftables.Conn, error)
	flowsOK    func() error
	cut        func(v6 bool, keep func(flowcut.Flow) bool) (uint64, error)
	localAddrs func() func(netip.Addr) bool
	// beforeCommit, when set, is called with the batch of an Isolate
	// just before it is sent; tests use it to make the commit fail.
	beforeCommit func(c *nftables.Conn)
	// afterCommit, when set, is called after each commit of an Isolate,
	// before the rules are read back; tests use it to change them
	// meanwhile.
	afterCommit func()
}

var _ firewall.Firewall = (*Plugin)(nil)

// New returns a Plugin configured by o.
func New(o Options) *Plugin {
	p := &Plugin{log: o.Logger}
	if p.log == nil {
		p.log = hclog.NewNullLogger()
	}
	p.dial = func() (*nftables.Conn, error) { return nftables.New() }
	p.flowsOK = flowcut.Available
	p.cut = flowcut.Cut
	p.localAddrs = flowcut.LocalAddrs
	return p
}

// maxAttempts bounds how often Isolate applies the table again when what
// reads back differs from what it wrote.
const maxAttempts = 3

// table is Cordon's table as google/nftables names it.
var table = &nftables.Table{Name: TableName, Family: nftables.TableFamilyINet}

// liveRule is a rule of Cordon's table as read back.
type liveRule struct {
	ruleSpec
	commented bool
	// kinds are the kinds of all its expressions as the kernel lists
	// them, those google/nftables cannot decode included (exprKinds).
	kinds []string
}

// live is what is in place of Cordon's table.
type live struct {
	present bool
	flags   uint32            // the table's flags (NFT_TABLE_F_DORMANT unhooks every chain)
	chains  []*nftables.Chain // in the kernel's order
	rules   []liveRule        // chain by chain, in order
}

// open connects to nf_tables; it returns firewall.ErrUnavailable (wrapped)
// when netlink or nf_tables does not answer.
func (p *Plugin) open() (*nftables.Conn, error) {
	c, err := p.dial()
	if err != nil {
		return nil, fmt.Errorf("%w: nftables netlink: %v", firewall.ErrUnavailable, err)
	}
	return c, nil
}

// read reads Cordon's table back from the kernel.
func read(c *nftables.Conn) (live, error) {
	var l live
	tables, err := c.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		return l, fmt.Errorf("%w: list nftables tables: %v", firewall.ErrUnavailable, err)
	}
	i := slices.IndexFunc(tables, func(t *nftables.Table) bool { return t.Name == TableName })
	if i < 0 {
		return l, nil
	}
	l.present, l.flags = true, tables[i].Flags
	kinds, err := exprKinds()
	if err != nil {
		return l, err
	}
	chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil {
		return l, fmt.Errorf("list chains of inet %s: %w", TableName, err)
	}
	for _, ch := range chains {
		if ch.Table == nil || ch.Table.Name != TableName {
			continue
		}
		l.chains = append(l.chains, ch)
		rules, err := c.GetRules(table, ch)
		if err != nil {
			return l, fmt.Errorf("list rules of inet %s %s: %w", TableName, ch.Name, err)
		}
		for _, r := range rules {
			c, ok := comment(r.UserData)
			role, text := parseComment(c)
			l.rules = append(l.rules, liveRule{ruleSpec: ruleSpec{chain: ch.Name, role: role, text: text, exprs: r.Exprs},
				commented: ok, kinds: kinds[r.Handle]})
		}
	}
	return l, nil
}

// evaluation is what read back means.
type evaluation struct {
	lines    []string      // the table as text lines (see Status)
	pol      policy.Policy // the policy the rule comments name, canonical
	problems []string      // how the table differs from newPlan(pol); none when it is exactly that
}

// evaluate compares what is in place with the rules for the policy the
// rules in place name.
func evaluate(l live) evaluation {
	var ev evaluation
	if !l.present {
		return ev
	}
	ev.lines = append(ev.lines, tableLine())
	if l.flags != 0 {
		// Dormant (NFT_TABLE_F_DORMANT) unhooks every chain of the table:
		// the rules stay, and filter nothing.
		ev.lines = append(ev.lines, fmt.Sprintf("# table flags %#x", l.flags))
		ev.problems = append(ev.problems, fmt.Sprintf("the table has flags %#x (dormant: none of its chains filters)", l.flags))
	}
	byName := map[string]*nftables.Chain{}
	for _, ch := range l.chains {
		byName[ch.Name] = ch
	}
	for _, spec := range chainSpecs {
		ch := byName[spec.name]
		if ch == nil {
			ev.problems = append(ev.problems, "chain "+spec.name+" missing")
			continue
		}
		line, ok := describeChain(ch)
		ev.lines = append(ev.lines, line)
		if want := chainLine(spec.name, spec.name, Priority, "drop"); !ok || line != want {
			ev.problems = append(ev.problems, fmt.Sprintf("chain %s is %q, want %q", spec.name, line, want))
		}
	}
	for _, ch := range l.chains {
		if !slices.ContainsFunc(chainSpecs, func(c chainSpec) bool { return c.name == ch.Name }) {
			line, _ := describeChain(ch)
			ev.lines = append(ev.lines, line)
			ev.problems = append(ev.problems, "chain "+ch.Name+" is not Cordon's")
		}
	}
	var specs []ruleSpec
	for _, r := range l.rules {
		text := r.text
		if !r.commented {
			text = "# a rule without Cordon's comment: " + renderExprs(r.exprs)
		}
		ev.lines = append(ev.lines, ruleLine(r.chain, r.role, text))
		if len(r.kinds) != len(r.exprs) {
			// Whatever the rest decodes to, the rule is not one of ours.
			msg := fmt.Sprintf("chain %s: rule %q holds expressions this plugin cannot read (%s)", r.chain, r.text, strings.Join(r.kinds, " "))
			ev.problems = append(ev.problems, msg)
			ev.lines = append(ev.lines, "# "+msg)
		}
		specs = append(specs, r.ruleSpec)
	}
	ev.pol = reconstruct(specs)
	want := newPlan(ev.pol).rules
	// Compare chain by chain, in chainSpecs order, as the plan lists them.
	for _, spec := range chainSpecs {
		var got, exp []ruleSpec
		for _, r := range specs {
			if r.chain == spec.name {
				got = append(got, r)
			}
		}
		for _, r := range want {
			if r.chain == spec.name {
				exp = append(exp, r)
			}
		}
		diff := diffRules(spec.name, got, exp)
		ev.problems = append(ev.problems, diff...)
		// The lines name each difference too, so that the digest of a
		// table whose expressions differ from its comments differs.
		for _, d := range diff {
			ev.lines = append(ev.lines, "# "+d)
		}
	}
	return ev
}

// diffRules says how the rules got of a chain differ from exp: rules
// missing, extra, or out of place (found by a longest common subsequence
// over text and expressions), and rules whose expressions are not what
// their comment says.
func diffRules(chain string, got, exp []ruleSpec) []string {
	key := func(r ruleSpec) string { return r.role + "\x00" + r.text + "\x00" + renderExprs(r.exprs) }
	// lcs[i][j] is the length of the longest common subsequence of got[i:]
	// and exp[j:].
	lcs := make([][]int, len(got)+1)
	for i := range lcs {
		lcs[i] = make([]int, len(exp)+1)
	}
	for i := len(got) - 1; i >= 0; i-- {
		for j := len(exp) - 1; j >= 0; j-- {
			if key(got[i]) == key(exp[j]) {
				lcs[i][j] = lcs[i+1][j+1] + 1
			} else {
				lcs[i][j] = max(lcs[i+1][j], lcs[i][j+1])
			}
		}
	}
	texts := map[string]bool{}
	for _, r := range exp {
		texts[r.text] = true
	}
	var out []string
	i, j := 0, 0
	for i < len(got) || j < len(exp) {
		switch {
		case i < len(got) && j < len(exp) && key(got[i]) == key(exp[j]):
			i++
			j++
		case j < len(exp) && (i == len(got) || lcs[i][j+1] >= lcs[i+1][j]):
			out = append(out, fmt.Sprintf("chain %s: rule %q missing", chain, exp[j].text))
			j++
		default:
			if texts[got[i].text] {
				out = append(out, fmt.Sprintf("chain %s: rule %d %q does not match what its comment says, or is out of place", chain, i+1, got[i].text))
			} else {
				out = append(out, fmt.Sprintf("chain %s: rule %d %q is not Cordon's", chain, i+1, got[i].text))
			}
			i++
		}
	}
	return out
}

// describeChain writes a chain as a text line; false when it is not a base
// chain of the filter type with a hook, priority and policy.
func describeChain(ch *nftables.Chain) (string, bool) {
	if ch.Hooknum == nil || ch.Priority == nil || ch.Policy == nil {
		return fmt.Sprintf("add chain inet %s %s", TableName, ch.Name), false
	}
	hook, ok := hookNames[*ch.Hooknum]
	if !ok {
		hook = fmt.Sprintf("hook-%d", *ch.Hooknum)
	}
	pol := "accept"
	if *ch.Policy == nftables.ChainPolicyDrop {
		pol = "drop"
	}
	return chainLine(ch.Name, hook, int32(*ch.Priority), pol), ch.Type == nftables.ChainTypeFilter && ok
}

// Info reports the plugin's name, version and capabilities: "ipv6" (one
// inet table covers both families), and "conntrack" when the conntrack
// netlink interface answers. It returns firewall.ErrUnavailable (wrapped)
// when nf_tables does not.
func (p *Plugin) Info(_ context.Context) (firewall.Info, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	info := firewall.Info{Name: Name, Version: Version}
	c, err := p.open()
	if err != nil {
		return info, fmt.Errorf("info: %w", err)
	}
	if _, err := c.ListTablesOfFamily(nftables.TableFamilyINet); err != nil {
		return info, fmt.Errorf("info: %w: nf_tables does not answer: %v", firewall.ErrUnavailable, err)
	}
	info.Capabilities = append(info.Capabilities, firewall.CapIPv6)
	if p.flowsOK() == nil {
		info.Capabilities = append(info.Capabilities, firewall.CapConntrack)
	}
	return info, nil
}

// Isolate makes the host reachable only as pol allows: loopback, the
// controller endpoints and the allowlist CIDRs, in, out and forwarded, over
// IPv4 and IPv6. The controller endpoints are reached over TCP to their
// port, on connections the host opens: what comes from their address and
// port is let in only as part of such a connection (ct state established),
// so whoever takes the controller's address cannot open one to the host.
// ICMP errors that path-MTU discovery needs are let in when related to a
// tracked connection, and IPv6 neighbour discovery with hop limit 255.
//
// Cordon's table is replaced whole in one transaction (add table, delete
// it, add it again with its chains and rules, in one netlink batch), then
// read back and compared with what was written, expression by expression.
// If it cannot be read back, the table as it was before is put back, again
// in one transaction, and Isolate fails. If it reads back different
// (something else on the host changed it in between), the table is
// applied again, up to maxAttempts times; then the rules written stay in
// place (fail closed) and Isolate fails with firewall.ErrRulesChanged.
// Isolating with the policy already in place changes nothing and returns
// the same digest.
//
// Once the rules are in place it deletes the conntrack entries of flows pol
// does not allow and counts them in FlowsCut; a conntrack failure is
// logged, not returned, since the drop policy already stops those flows'
// packets.
//
// Errors: firewall.ErrInvalidPolicy when pol fails Validate;
// firewall.ErrUnavailable when nf_tables does not answer.
func (p *Plugin) Isolate(ctx context.Context, pol policy.Policy, orderID string) (firewall.Applied, error) {
	start := time.Now()
	log := p.log.With("order_id", orderID)
	if err := pol.Validate(); err != nil {
		return firewall.Applied{}, fmt.Errorf("isolate: %w: %v", firewall.ErrInvalidPolicy, err)
	}
	eff := pol.Canonical()
	pl := newPlan(eff)
	want := pl.lines()
	p.mu.Lock()
	defer p.mu.Unlock()
	c, err := p.open()
	if err != nil {
		return firewall.Applied{}, fmt.Errorf("isolate: %w", err)
	}
	before, err := read(c)
	if err != nil {
		return firewall.Applied{}, fmt.Errorf("isolate: %w", err)
	}
	if ev := evaluate(before); before.present && len(ev.problems) == 0 && slices.Equal(ev.lines, want) {
		d := digestLines(ev.lines)
		log.Info("already isolated by this policy, nothing changed", "digest", d)
		return firewall.Applied{Digest: d, Rules: ev.lines}, nil
	}
	if err := ctx.Err(); err != nil {
		return firewall.Applied{}, fmt.Errorf("isolate: %w", err)
	}
	var ev evaluation
	for attempt := 1; ; attempt++ {
		replaceTable(c, pl.chains(), pl.rules)
		if p.beforeCommit != nil {
			p.beforeCommit(c)
		}
		if err := c.Flush(); err != nil {
			log.Error("isolation failed: the kernel refused the transaction, nothing changed", "error", err)
			return firewall.Applied{}, fmt.Errorf("isolate: apply inet %s (one transaction, nothing changed): %w", TableName, err)
		}
		if p.afterCommit != nil {
			p.afterCommit()
		}
		after, err := read(c)
		if err != nil {
			if rerr := restore(c, before); rerr != nil {
				log.Error("putting back the table as it was failed", "error", rerr)
				err = errors.Join(err, fmt.Errorf("restore: %w", rerr))
			}
			log.Error("isolation failed", "error", err)
			return firewall.Applied{}, fmt.Errorf("isolate: verify: %w", err)
		}
		ev = evaluate(after)
		if len(ev.problems) == 0 && slices.Equal(ev.lines, want) {
			break
		}
		// The kernel applied what was sent (one transaction); what reads
		// back differs because something else changed it since. Try
		// again; then leave the rules written in place: a host that
		// something is fighting to open stays isolated (fail closed).
		mismatch := strings.Join(ev.problems, "; ")
		if attempt == maxAttempts {
			log.Error("the rules were changed by something else as soon as they were applied; left in place", "attempts", attempt, "problems", mismatch)
			return firewall.Applied{}, fmt.Errorf("isolate: verify: %w, %d times: %s; the rules written are left in place",
				firewall.ErrRulesChanged, attempt, mismatch)
		}
		log.Warn("rules read back differ from those written: something else changed them; applying again", "attempt", attempt, "problems", mismatch)
	}
	a := firewall.Applied{Digest: digestLines(ev.lines), Rules: ev.lines}
	a.FlowsCut = p.cutFlows(eff, log)
	log.Info("isolated", "digest", a.Digest, "rules", len(pl.rules), "flows_cut", a.FlowsCut, "took", time.Since(start))
	return a, nil
}

// chains returns Cordon's base chains, as AddChain takes them.
func (pl plan) chains() []*nftables.Chain {
	var out []*nftables.Chain
	prio := nftables.ChainPriorityRef(Priority)
	for _, spec := range chainSpecs {
		out = append(out, &nftables.Chain{
			Name: spec.name, Table: table, Hooknum: spec.hook, Priority: prio,
			Type: nftables.ChainTypeFilter, Policy: ptr(nftables.ChainPolicyDrop),
		})
	}
	return out
}

func ptr[T any](v T) *T { return &v }

// replaceTable queues, in c's batch, the replacement of Cordon's table by
// one holding chains and rules: add the table (a no-op if it is there),
// delete it with everything in it, and add it again. The kernel applies
// the batch as one transaction when c is flushed.
func replaceTable(c *nftables.Conn, chains []*nftables.Chain, rules []ruleSpec) {
	c.AddTable(table)
	c.DelTable(table)
	c.AddTable(table)
	byName := map[string]*nftables.Chain{}
	for _, ch := range chains {
		ch = &nftables.Chain{Name: ch.Name, Table: table, Hooknum: ch.Hooknum, Priority: ch.Priority, Type: ch.Type, Policy: ch.Policy, Device: ch.Device}
		byName[ch.Name] = c.AddChain(ch)
	}
	for _, r := range rules {
		c.AddRule(&nftables.Rule{Table: table, Chain: byName[r.chain], Exprs: r.exprs, UserData: commentData(commentText(r.role, r.text))})
	}
}

// restore puts Cordon's table back as l describes it (removes it when l
// has none), in one transaction.
func restore(c *nftables.Conn, l live) error {
	if !l.present {
		c.AddTable(table)
		c.DelTable(table)
		return c.Flush()
	}
	var specs []ruleSpec
	for _, r := range l.rules {
		specs = append(specs, r.ruleSpec)
	}
	replaceTable(c, l.chains, specs)
	return c.Flush()
}

// cutFlows deletes the conntrack entries of flows eff does not allow, IPv4
// and IPv6, and returns how many it deleted. Failures are logged only.
func (p *Plugin) cutFlows(eff policy.Policy, log hclog.Logger) uint64 {
	local := p.localAddrs()
	keep := func(fl flowcut.Flow) bool { return flowcut.Keep(fl, eff, local) }
	var total uint64
	for _, v6 := range []bool{false, true} {
		n, err := p.cut(v6, keep)
		total += n
		if err != nil {
			log.Warn("cutting established flows failed; the drop rules still stop their packets", "ipv6", v6, "cut", n, "error", err)
		}
	}
	return total
}

// Release removes Cordon's table, with its chains and rules, in one
// transaction, and nothing else. It returns how many rules, chains and
// tables it removed, and succeeds when there was nothing to remove.
func (p *Plugin) Release(_ context.Context, orderID string) (int, error) {
	log := p.log.With("order_id", orderID)
	p.mu.Lock()
	defer p.mu.Unlock()
	c, err := p.open()
	if err != nil {
		return 0, fmt.Errorf("release: %w", err)
	}
	l, err := read(c)
	if err != nil {
		return 0, fmt.Errorf("release: %w", err)
	}
	if !l.present {
		log.Info("released: nothing of Cordon's was in place")
		return 0, nil
	}
	c.DelTable(table)
	if err := c.Flush(); err != nil {
		log.Error("release failed", "error", err)
		return 0, fmt.Errorf("release: delete inet %s: %w", TableName, err)
	}
	after, err := read(c)
	if err != nil {
		return 0, fmt.Errorf("release: %w", err)
	}
	if after.present {
		return 0, fmt.Errorf("release: inet %s is still there after it was deleted", TableName)
	}
	n := len(l.rules) + len(l.chains) + 1
	log.Info("released", "removed", n)
	return n, nil
}

// Status reads Cordon's table back from the kernel. Rules lists it as an
// nft(8) script: "add table inet cordon", each chain ("add chain inet
// cordon input { type filter hook input priority -99; policy drop; }"),
// then each rule with its comment. Digest is "sha256:<hex>" over those
// lines, each ended by a newline, computed as Isolate computes it.
// Isolated is true when the table holds exactly the rules Isolate writes
// for the policy their comments name, expressions included; otherwise
// Partial says what differs. Policy is that policy, canonical; nil when it
// names no controller endpoint. With no table, Status is the zero value.
func (p *Plugin) Status(_ context.Context) (firewall.Status, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	c, err := p.open()
	if err != nil {
		return firewall.Status{}, fmt.Errorf("status: %w", err)
	}
	l, err := read(c)
	if err != nil {
		return firewall.Status{}, fmt.Errorf("status: %w", err)
	}
	if !l.present {
		return firewall.Status{}, nil
	}
	ev := evaluate(l)
	st := firewall.Status{Digest: digestLines(ev.lines), Rules: ev.lines}
	if ev.pol.Validate() == nil {
		pol := ev.pol
		st.Policy = &pol
	}
	st.Isolated = len(ev.problems) == 0 && st.Policy != nil
	if !st.Isolated && len(ev.problems) == 0 {
		ev.problems = append(ev.problems, "the rules name no controller endpoint")
	}
	st.Partial = strings.Join(ev.problems, "; ")
	return st, nil
}
