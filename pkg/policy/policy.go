// Package policy is the isolation policy model shared by the controller, the
// agent and the firewall plugins: what stays reachable while a host is
// contained. Everything not named here is dropped, inbound, outbound and
// forwarded, over IPv4 and IPv6.
//
// A Policy holds IP addresses only, never names: nothing is resolved on a host
// once isolation starts (DESIGN.md §3), because a lookup after the drop rules
// are in place would lock the agent out.
package policy

import (
	"cmp"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/netip"
	"slices"
)

// Endpoint is a controller endpoint that must stay reachable while a host is
// isolated: an IP address and a TCP port.
type Endpoint struct {
	Addr netip.Addr `json:"addr"`
	Port uint16     `json:"port"`
}

// String returns "addr:port", with brackets around IPv6 addresses.
func (e Endpoint) String() string { return netip.AddrPortFrom(e.Addr, e.Port).String() }

// Policy says what a contained host may still talk to.
//
// Controllers are the controller endpoints (TCP); traffic to and from them on
// that port is allowed so the agent's SSH session survives. Allow lists CIDRs
// that stay reachable in both directions (forensic workstations, jump hosts).
// Loopback is always allowed. DNS and DHCP keep two services a host
// needs to stay reachable by its owners, and nothing more.
type Policy struct {
	Controllers []Endpoint     `json:"controllers"`
	Allow       []netip.Prefix `json:"allow,omitempty"`
	// DNS lists resolvers the host may still query: UDP and TCP to their
	// port 53, and the replies (conntrack established), nothing else from
	// them. Without it, every lookup of the host's own services fails
	// while it is isolated; with it, a resolver that forwards is a channel
	// to the outside (DNS tunnelling), so name only resolvers the IR team
	// controls.
	DNS []netip.Addr `json:"dns,omitempty"`
	// DHCP keeps the host's DHCP client working, so that it keeps its
	// address (and with it the connection to the controller) when its
	// lease must be renewed: DHCPv4 from client port 68 to server port 67
	// at any address and only replies back (RFC 2131); DHCPv6 546 to 547
	// at ff02::1:2 or a link-local address, and back from link-local
	// servers (RFC 8415). A client talks through packet sockets, which
	// netfilter does not see, until it has an address. A process with root
	// on the host can send UDP from port 68 to port 67 of any address:
	// keep DHCP only where losing the address is the worse risk.
	DHCP bool `json:"dhcp,omitempty"`
}

// Maximum sizes of a policy, so that a malformed order cannot ask a plugin to
// write an unbounded ruleset.
const (
	MaxControllers = 16
	MaxAllow       = 256
	MaxDNS         = 8
)

// Validate reports whether p can be applied: at least one controller endpoint,
// every address valid and specified, every port non-zero, every prefix valid,
// and no more than MaxControllers, MaxAllow and MaxDNS entries.
func (p Policy) Validate() error {
	if len(p.Controllers) == 0 {
		return errors.New("policy: no controller endpoint: isolation would cut the agent off")
	}
	if len(p.Controllers) > MaxControllers {
		return fmt.Errorf("policy: %d controller endpoints, at most %d", len(p.Controllers), MaxControllers)
	}
	if len(p.Allow) > MaxAllow {
		return fmt.Errorf("policy: %d allowlist entries, at most %d", len(p.Allow), MaxAllow)
	}
	for _, e := range p.Controllers {
		if !e.Addr.IsValid() || e.Addr.IsUnspecified() {
			return fmt.Errorf("policy: controller address %q is not a usable IP", e.Addr)
		}
		if e.Addr.Zone() != "" {
			return fmt.Errorf("policy: controller address %s has a zone; zones are not supported", e.Addr)
		}
		if e.Port == 0 {
			return fmt.Errorf("policy: controller %s has port 0", e.Addr)
		}
	}
	if len(p.DNS) > MaxDNS {
		return fmt.Errorf("policy: %d DNS resolvers, at most %d", len(p.DNS), MaxDNS)
	}
	for _, a := range p.DNS {
		if !a.IsValid() || a.IsUnspecified() || a.Zone() != "" {
			return fmt.Errorf("policy: DNS resolver %q is not a usable IP (no zones)", a)
		}
	}
	for _, a := range p.Allow {
		if !a.IsValid() {
			return fmt.Errorf("policy: allowlist entry %q is not a valid CIDR", a)
		}
		if a.Addr().Zone() != "" {
			return fmt.Errorf("policy: allowlist entry %s has a zone; zones are not supported", a)
		}
		if err := checkWidth(netip.PrefixFrom(a.Addr().Unmap(), a.Bits()-unmapBits(a))); err != nil {
			return fmt.Errorf("policy: %w", err)
		}
	}
	if err := checkCoverage(p.Allow); err != nil {
		return fmt.Errorf("policy: %w", err)
	}
	return nil
}

// Canonical returns a copy of p with IPv4-mapped IPv6 addresses unmapped,
// prefixes masked, and both lists sorted and free of duplicates, so that two
// policies that allow the same traffic compare and digest equal.
func (p Policy) Canonical() Policy {
	var c Policy
	for _, e := range p.Controllers {
		c.Controllers = append(c.Controllers, Endpoint{Addr: e.Addr.Unmap(), Port: e.Port})
	}
	for _, a := range p.Allow {
		a = netip.PrefixFrom(a.Addr().Unmap(), a.Bits()-unmapBits(a)).Masked()
		c.Allow = append(c.Allow, a)
	}
	slices.SortFunc(c.Controllers, func(a, b Endpoint) int {
		return cmp.Or(a.Addr.Compare(b.Addr), cmp.Compare(a.Port, b.Port))
	})
	c.Controllers = slices.Compact(c.Controllers)
	slices.SortFunc(c.Allow, func(a, b netip.Prefix) int {
		return cmp.Or(a.Addr().Compare(b.Addr()), cmp.Compare(a.Bits(), b.Bits()))
	})
	c.Allow = slices.Compact(c.Allow)
	for _, a := range p.DNS {
		c.DNS = append(c.DNS, a.Unmap())
	}
	slices.SortFunc(c.DNS, netip.Addr.Compare)
	c.DNS = slices.Compact(c.DNS)
	c.DHCP = p.DHCP
	return c
}

// unmapBits is 96 for an IPv4-mapped IPv6 prefix (::ffff:a.b.c.d/n) whose
// length covers the mapping, so that it becomes the IPv4 prefix a.b.c.d/(n-96).
func unmapBits(a netip.Prefix) int {
	if a.Addr().Is4In6() && a.Bits() >= 96 {
		return 96
	}
	return 0
}

// Digest returns "sha256:" and the hex SHA-256 of the canonical policy's JSON
// encoding. Equal policies have equal digests.
func (p Policy) Digest() string {
	b, err := json.Marshal(p.Canonical())
	if err != nil {
		// Marshalling netip values cannot fail for valid or zero values.
		panic("policy: " + err.Error())
	}
	sum := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// Widest allowlist entries: a forensic workstation, a jump host or an IR
// subnet, not a large part of the Internet. Wider entries (a /0, or two /1
// that together allow everything) would be no isolation.
const (
	MinAllowBits4 = 8
	MinAllowBits6 = 32
)

// nat64 is the well-known NAT64 prefix (RFC 6052): an IPv6 host reaches all
// of IPv4 through it, so entries inside it are IPv4 entries in disguise.
var nat64 = netip.MustParsePrefix("64:ff9b::/96")

func checkWidth(p netip.Prefix) error {
	min := MinAllowBits6
	switch {
	case p.Addr().Unmap().Is4():
		min = MinAllowBits4
	case p.Overlaps(nat64) && p.Bits() < nat64.Bits():
		return fmt.Errorf("allowlist entry %s covers the NAT64 prefix %s, through which all of IPv4 is reachable: that would be no isolation", p, nat64)
	case p.Overlaps(nat64):
		min = nat64.Bits() + MinAllowBits4
	}
	if p.Bits() < min {
		return fmt.Errorf("allowlist entry %s is wider than /%d: that would be no isolation", p, min)
	}
	return nil
}

// CheckAllow checks an allowlist as a whole, as Validate does: at most
// MaxAllow entries that together cover no more than one /8 of IPv4 or one
// /32 of IPv6. Each entry should come from ParsePrefix.
func CheckAllow(allow []netip.Prefix) error {
	if len(allow) > MaxAllow {
		return fmt.Errorf("%d allowlist entries, at most %d", len(allow), MaxAllow)
	}
	return checkCoverage(allow)
}

// checkCoverage refuses allowlists whose entries together cover more than
// one /8 of IPv4 or one /32 of IPv6 (NAT64 counted as IPv4): many narrow
// entries can be as open as one wide one. Overlapping entries count twice,
// which errs on the side of refusing.
func checkCoverage(allow []netip.Prefix) error {
	var v4, v6 float64
	for _, a := range allow {
		a = netip.PrefixFrom(a.Addr().Unmap(), a.Bits()-unmapBits(a))
		switch {
		case a.Addr().Is4():
			v4 += math.Ldexp(1, 32-a.Bits())
		case a.Overlaps(nat64):
			v4 += math.Ldexp(1, 128-a.Bits())
		default:
			v6 += math.Ldexp(1, 128-a.Bits())
		}
	}
	if v4 > math.Ldexp(1, 32-MinAllowBits4) {
		return fmt.Errorf("the allowlist entries together cover more IPv4 addresses than one /%d: that would be no isolation", MinAllowBits4)
	}
	if v6 > math.Ldexp(1, 128-MinAllowBits6) {
		return fmt.Errorf("the allowlist entries together cover more IPv6 addresses than one /%d: that would be no isolation", MinAllowBits6)
	}
	return nil
}

// ParsePrefix parses an allowlist entry: a CIDR ("10.0.0.0/8", "fd00::/64") or
// a bare IP, which becomes a single-address prefix (/32 or /128). Host bits
// set in a CIDR are an error, since they usually mean a typo, and so is a
// prefix wider than MinAllowBits4 or MinAllowBits6. An IPv4-mapped IPv6
// prefix is returned as the IPv4 prefix it stands for.
func ParsePrefix(s string) (netip.Prefix, error) {
	if a, err := netip.ParseAddr(s); err == nil {
		if a.Zone() != "" {
			return netip.Prefix{}, fmt.Errorf("allowlist entry %q: zones are not supported", s)
		}
		return netip.PrefixFrom(a, a.BitLen()), nil
	}
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("allowlist entry %q is neither an IP nor a CIDR", s)
	}
	if p.Masked() != p {
		return netip.Prefix{}, fmt.Errorf("allowlist entry %q has host bits set; did you mean %s?", s, p.Masked())
	}
	// ::ffff:a.b.c.d/n is IPv4 in disguise.
	p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-unmapBits(p))
	if p.Addr().Is4In6() {
		return netip.Prefix{}, fmt.Errorf("allowlist entry %q covers the IPv4-mapped space: that is no isolation", s)
	}
	if err := checkWidth(p); err != nil {
		return netip.Prefix{}, err
	}
	return p, nil
}
