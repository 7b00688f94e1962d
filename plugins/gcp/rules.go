package main

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"log/slog"
	"net/netip"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"cloud.google.com/go/compute/apiv1/computepb"
	"google.golang.org/protobuf/proto"

	"github.com/cordon-ir/cordon/pkg/cloud"
	"github.com/cordon-ir/cordon/pkg/policy"
)

// Cordon's network tags and VPC firewall rules.
//
// Every isolated instance gets the tag cordon-quarantine, which the deny
// rules target, and cordon-quarantine-<policy>, which the allow rules of
// its policy target, so that two instances isolated under different
// policies do not share their allowlists. The rules are per network (a
// VPC firewall rule belongs to one network, and lives in the network's
// project, the host project under Shared VPC), named with a hash of the
// network, marked as Cordon's in their description, and never deleted by
// Cordon: other isolations use them, and an instance without the tags is
// not affected by them.
//
// Priorities: VPC firewall rules are applied by priority, 0 the highest,
// and when an allow and a deny rule of the same priority match, the deny
// rule applies (VPC firewall rules, "Priority" and its example of a deny
// and an allow rule both at 1000, cloud.google.com/vpc/docs/firewalls). So
// the allow rules have priority 0 and the deny rules 1: at 0 both, the
// deny rules would win and the allow rules would never apply. The price is that another ALLOW rule at
// priority 0 that applies to the instance is evaluated before Cordon's
// deny: Isolate finds such rules and says so.
const (
	tagQuarantine = "cordon-quarantine"
	rulePrefix    = "cordon-quarantine-"
	allowPriority = 0
	denyPriority  = 1
	// descMarker starts the description of every rule Cordon made; a rule
	// of one of Cordon's names without it is someone else's and is
	// refused, not changed.
	descMarker = "Cordon-managed"
)

// shortDigest is the first 12 hex digits of a policy digest
// ("sha256:<hex>"), which names the policy's tag and allow rules.
func shortDigest(digest string) string {
	h := strings.TrimPrefix(digest, "sha256:")
	if len(h) > 12 {
		h = h[:12]
	}
	return h
}

// policyTag is the network tag of a policy's allow rules.
func policyTag(d12 string) string { return tagQuarantine + "-" + d12 }

var policyTagRE = regexp.MustCompile(`^` + tagQuarantine + `-[0-9a-f]{12}$`)

func isPolicyTag(t string) bool { return policyTagRE.MatchString(t) }

// isCordonTag reports whether t is one of Cordon's tags.
func isCordonTag(t string) bool { return t == tagQuarantine || isPolicyTag(t) }

// network is a VPC network: its project and name.
type network struct {
	project, name string
}

var networkRE = regexp.MustCompile(`(?:^|/)projects/([^/]+)/global/networks/([^/]+)$`)

// parseNetwork reads a network's URL, full
// (https://www.googleapis.com/compute/v1/projects/p/global/networks/n) or
// partial (projects/p/global/networks/n).
func parseNetwork(url string) (network, error) {
	m := networkRE.FindStringSubmatch(url)
	if m == nil {
		return network{}, fmt.Errorf("%w: network URL %q is not projects/<project>/global/networks/<name>", cloud.ErrInvalid, url)
	}
	return network{project: m[1], name: m[2]}, nil
}

func (n network) path() string { return "projects/" + n.project + "/global/networks/" + n.name }

// hash names the network in Cordon's rule names: the first 8 hex digits
// of the SHA-256 of its path (a network name may be 63 characters, as
// long as a rule name may be).
func (n network) hash() string {
	s := sha256.Sum256([]byte(n.path()))
	return hex.EncodeToString(s[:4])
}

// networks are the networks of the instance's interfaces, in interface
// order, each once.
func networks(in *computepb.Instance) ([]network, error) {
	var out []network
	for _, ni := range in.GetNetworkInterfaces() {
		n, err := parseNetwork(ni.GetNetwork())
		if err != nil {
			return nil, fmt.Errorf("interface %s: %w", ni.GetName(), err)
		}
		if !slices.Contains(out, n) {
			out = append(out, n)
		}
	}
	return out, nil
}

// ruleSpec is a firewall rule as Cordon wants it.
type ruleSpec struct {
	name, desc string
	ingress    bool
	deny       bool
	priority   int32
	// ranges are the source ranges of an ingress rule, the destination
	// ranges of an egress one; one address family per rule, as the API
	// requires.
	ranges    []string
	protos    []protoPorts
	targetTag string
}

type protoPorts struct {
	proto string
	ports []string
}

func (s ruleSpec) direction() string {
	if s.ingress {
		return "INGRESS"
	}
	return "EGRESS"
}

var everything = []protoPorts{{proto: "all"}}

// denyRules deny all traffic, both ways and both families, to and from
// instances tagged cordon-quarantine.
func denyRules(n network) []ruleSpec {
	var rs []ruleSpec
	for _, ingress := range []bool{true, false} {
		for _, r := range []string{"0.0.0.0/0", "::/0"} {
			dir, suffix := "egress", ""
			if ingress {
				dir = "ingress"
			}
			if strings.Contains(r, ":") {
				suffix = "6"
			}
			rs = append(rs, ruleSpec{
				name:      fmt.Sprintf("%sdeny-%s%s-%s", rulePrefix, dir, suffix, n.hash()),
				desc:      fmt.Sprintf("%s: deny all %s of instances tagged %s (network %s)", descMarker, dir, tagQuarantine, n.path()),
				ingress:   ingress,
				deny:      true,
				priority:  denyPriority,
				ranges:    []string{r},
				protos:    everything,
				targetTag: tagQuarantine,
			})
		}
	}
	return rs
}

// allowRules let instances tagged with the policy's tag reach the
// controller endpoints (TCP, to their port; the replies come back through
// connection tracking), the DNS resolvers of the policy (UDP and TCP 53),
// and the allowlist both ways. Nothing else: no rule lets the controller
// or anyone else open a connection to the host, except the allowlist.
func allowRules(n network, p policy.Policy, d12 string) []ruleSpec {
	var rs []ruleSpec
	add := func(what string, ingress bool, ranges []string, protos []protoPorts) {
		if len(ranges) == 0 {
			return
		}
		dir := "egress to"
		if ingress {
			dir = "ingress from"
		}
		rs = append(rs, ruleSpec{
			name: fmt.Sprintf("%sallow-%s-%d-%s", rulePrefix, d12, len(rs), n.hash()),
			desc: fmt.Sprintf("%s: allow %s %s %s of instances tagged %s (policy %s, network %s)",
				descMarker, what, dir, strings.Join(ranges, " "), policyTag(d12), d12, n.path()),
			ingress:   ingress,
			priority:  allowPriority,
			ranges:    ranges,
			protos:    protos,
			targetTag: policyTag(d12),
		})
	}
	for _, v6 := range []bool{false, true} {
		byPort := map[uint16][]string{}
		for _, e := range p.Controllers {
			if e.Addr.Unmap().Is6() == v6 {
				byPort[e.Port] = append(byPort[e.Port], hostPrefix(e.Addr))
			}
		}
		ports := make([]uint16, 0, len(byPort))
		for port := range byPort {
			ports = append(ports, port)
		}
		slices.Sort(ports)
		for _, port := range ports {
			ps := strconv.Itoa(int(port))
			add("TCP "+ps+" (controller)", false, byPort[port], []protoPorts{{"tcp", []string{ps}}})
		}
		var dns []string
		for _, a := range p.DNS {
			if a.Unmap().Is6() == v6 {
				dns = append(dns, hostPrefix(a))
			}
		}
		add("DNS", false, dns, []protoPorts{{"udp", []string{"53"}}, {"tcp", []string{"53"}}})
		var allow []string
		for _, a := range p.Allow {
			if a.Addr().Unmap().Is6() == v6 {
				allow = append(allow, a.String())
			}
		}
		add("all (allowlist)", false, allow, everything)
		add("all (allowlist)", true, allow, everything)
	}
	return rs
}

func hostPrefix(a netip.Addr) string {
	a = a.Unmap()
	return netip.PrefixFrom(a, a.BitLen()).String()
}

// firewall is the API resource of s in network n.
func (s ruleSpec) firewall(n network) *computepb.Firewall {
	fw := &computepb.Firewall{
		Name:        proto.String(s.name),
		Description: proto.String(s.desc),
		Network:     proto.String(n.path()),
		Priority:    proto.Int32(s.priority),
		Direction:   proto.String(s.direction()),
		TargetTags:  []string{s.targetTag},
		Disabled:    proto.Bool(false),
	}
	if s.ingress {
		fw.SourceRanges = s.ranges
	} else {
		fw.DestinationRanges = s.ranges
	}
	for _, pp := range s.protos {
		if s.deny {
			fw.Denied = append(fw.Denied, &computepb.Denied{IPProtocol: proto.String(pp.proto), Ports: pp.ports})
		} else {
			fw.Allowed = append(fw.Allowed, &computepb.Allowed{IPProtocol: proto.String(pp.proto), Ports: pp.ports})
		}
	}
	return fw
}

// isCordons reports whether fw carries Cordon's mark.
func isCordons(fw *computepb.Firewall) bool {
	return strings.HasPrefix(fw.GetDescription(), descMarker+":")
}

// drift says how fw differs from s in network n, "" when it does not.
func drift(fw *computepb.Firewall, s ruleSpec, n network) string {
	var d []string
	if got, err := parseNetwork(fw.GetNetwork()); err != nil || got != n {
		d = append(d, "network "+fw.GetNetwork())
	}
	if fw.GetDisabled() {
		d = append(d, "disabled")
	}
	if fw.GetPriority() != s.priority {
		d = append(d, fmt.Sprintf("priority %d", fw.GetPriority()))
	}
	if fw.GetDirection() != s.direction() {
		d = append(d, "direction "+fw.GetDirection())
	}
	if !sameSet(fw.GetTargetTags(), []string{s.targetTag}) || len(fw.GetTargetServiceAccounts()) > 0 {
		d = append(d, "targets")
	}
	src, dst := fw.GetSourceRanges(), fw.GetDestinationRanges()
	if s.ingress {
		src, dst = dst, src
	}
	if !sameSet(dst, s.ranges) || len(src) > 0 || len(fw.GetSourceTags()) > 0 || len(fw.GetSourceServiceAccounts()) > 0 {
		d = append(d, "ranges")
	}
	var got []string
	for _, a := range fw.GetAllowed() {
		got = append(got, "allow "+a.GetIPProtocol()+":"+strings.Join(a.GetPorts(), ","))
	}
	for _, a := range fw.GetDenied() {
		got = append(got, "deny "+a.GetIPProtocol()+":"+strings.Join(a.GetPorts(), ","))
	}
	var want []string
	for _, pp := range s.protos {
		verb := "allow "
		if s.deny {
			verb = "deny "
		}
		want = append(want, verb+pp.proto+":"+strings.Join(pp.ports, ","))
	}
	if !sameSet(got, want) {
		d = append(d, "protocols "+strings.Join(got, " "))
	}
	return strings.Join(d, ", ")
}

// sameSet reports whether a and b hold the same strings, in any order.
func sameSet(a, b []string) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(slices.Compact(a), slices.Compact(b))
}

// listRules returns the project's firewall rules by name.
func (p *Plugin) listRules(ctx context.Context, c *clients, project string) (map[string]*computepb.Firewall, error) {
	out := map[string]*computepb.Firewall{}
	it := c.firewalls.List(ctx, &computepb.ListFirewallsRequest{Project: project}, p.callOpts(true)...)
	for fw, err := range it.All() {
		if err != nil {
			return nil, apiError(err, "compute.firewalls.list", "projects/"+project)
		}
		out[fw.GetName()] = fw
	}
	return out, nil
}

// ensureRules brings the deny rules and the allow rules of policy d12 to
// exactly what they must be in each network, creating those missing and
// updating those that drifted. It refuses a rule of one of Cordon's names
// that is not Cordon's. It returns notes on other rules that apply to in
// and come before Cordon's deny rules.
func (p *Plugin) ensureRules(ctx context.Context, c *clients, log *slog.Logger, nets []network, pol policy.Policy, d12 string, in *computepb.Instance) ([]string, error) {
	var notes []string
	listed := map[string]map[string]*computepb.Firewall{}
	for _, n := range nets {
		rules, ok := listed[n.project]
		if !ok {
			var err error
			if rules, err = p.listRules(ctx, c, n.project); err != nil {
				return nil, err
			}
			listed[n.project] = rules
		}
		for _, s := range append(denyRules(n), allowRules(n, pol, d12)...) {
			if err := p.ensureRule(ctx, c, log, n, s, rules[s.name]); err != nil {
				return nil, err
			}
		}
		notes = append(notes, overriding(rules, n, in, tagQuarantine, policyTag(d12))...)
	}
	return notes, nil
}

func (p *Plugin) ensureRule(ctx context.Context, c *clients, log *slog.Logger, n network, s ruleSpec, cur *computepb.Firewall) error {
	res := "projects/" + n.project + "/global/firewalls/" + s.name
	if cur == nil {
		op, err := c.firewalls.Insert(ctx, &computepb.InsertFirewallRequest{Project: n.project, FirewallResource: s.firewall(n)}, p.callOpts(false)...)
		if err != nil {
			err = apiError(err, "compute.firewalls.insert", res)
		} else {
			err = p.wait(ctx, op, "compute.firewalls.insert", res)
		}
		if err != nil {
			return fmt.Errorf("create firewall rule %s in %s: %w", s.name, n.path(), err)
		}
		log.Info("firewall rule created", "rule", s.name, "network", n.path(), "direction", s.direction(), "priority", s.priority)
		return nil
	}
	if !isCordons(cur) {
		return fmt.Errorf("%w: firewall rule %s exists but is not Cordon's (its description does not start with %q): rename or delete it, then isolate again",
			cloud.ErrInvalid, s.name, descMarker)
	}
	d := drift(cur, s, n)
	if d == "" {
		return nil
	}
	op, err := c.firewalls.Update(ctx, &computepb.UpdateFirewallRequest{Project: n.project, Firewall: s.name, FirewallResource: s.firewall(n)}, p.callOpts(false)...)
	if err != nil {
		err = apiError(err, "compute.firewalls.update", res)
	} else {
		err = p.wait(ctx, op, "compute.firewalls.update", res)
	}
	if err != nil {
		return fmt.Errorf("restore firewall rule %s in %s: %w", s.name, n.path(), err)
	}
	log.Warn("firewall rule restored", "rule", s.name, "network", n.path(), "was", d)
	return nil
}

// overriding names the rules that are not Cordon's, allow traffic, apply
// to in (with the tags it is about to get) and have a priority that puts
// them before Cordon's deny rules.
func overriding(rules map[string]*computepb.Firewall, n network, in *computepb.Instance, adding ...string) []string {
	tags := append(slices.Clone(in.GetTags().GetItems()), adding...)
	var sas []string
	for _, sa := range in.GetServiceAccounts() {
		sas = append(sas, sa.GetEmail())
	}
	var out []*computepb.Firewall
	for _, fw := range rules {
		if isCordons(fw) || fw.GetDisabled() || len(fw.GetAllowed()) == 0 || fw.GetPriority() >= denyPriority {
			continue
		}
		if got, err := parseNetwork(fw.GetNetwork()); err != nil || got != n {
			continue
		}
		tt, ts := fw.GetTargetTags(), fw.GetTargetServiceAccounts()
		applies := len(tt) == 0 && len(ts) == 0
		for _, t := range tt {
			applies = applies || slices.Contains(tags, t)
		}
		for _, s := range ts {
			applies = applies || slices.Contains(sas, s)
		}
		if applies {
			out = append(out, fw)
		}
	}
	slices.SortFunc(out, func(a, b *computepb.Firewall) int { return cmp.Compare(a.GetName(), b.GetName()) })
	var notes []string
	for _, fw := range out {
		notes = append(notes, fmt.Sprintf("firewall rule %s (%s ALLOW, priority %d, network %s) applies to this instance and comes before Cordon's deny rules (priority %d): "+
			"what it allows still flows; give it a priority above %d or remove it", fw.GetName(), fw.GetDirection(), fw.GetPriority(), n.path(), denyPriority, denyPriority))
	}
	return notes
}

// checkRules says what is missing or changed of Cordon's rules for policy
// d12 in n, "" when they are as Isolate leaves them. The allow rules are
// checked for presence only: without the policy, their ranges are not
// known here.
func checkRules(rules map[string]*computepb.Firewall, n network, d12 string) string {
	var bad []string
	for _, s := range denyRules(n) {
		fw := rules[s.name]
		switch {
		case fw == nil:
			bad = append(bad, s.name+" is missing")
		case !isCordons(fw):
			bad = append(bad, s.name+" is not Cordon's")
		default:
			if d := drift(fw, s, n); d != "" {
				bad = append(bad, s.name+" has changed ("+d+")")
			}
		}
	}
	prefix, suffix := fmt.Sprintf("%sallow-%s-", rulePrefix, d12), "-"+n.hash()
	found := false
	for name, fw := range rules {
		if strings.HasPrefix(name, prefix) && strings.HasSuffix(name, suffix) && isCordons(fw) && !fw.GetDisabled() {
			found = true
		}
	}
	if !found {
		bad = append(bad, "no allow rule "+prefix+"*"+suffix)
	}
	if len(bad) == 0 {
		return ""
	}
	return n.path() + ": " + strings.Join(bad, ", ")
}
