package main

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/network/armnetwork/v6"

	"github.com/cordon-ir/cordon/pkg/cloud"
	"github.com/cordon-ir/cordon/pkg/policy"
)

// Cordon's quarantine NSGs: one per resource group, location and policy,
// found by name and tagged cordon:managed=quarantine. They are shared by
// every VM of the resource group isolated with the same policy, and never
// deleted by Cordon (another VM may use them).
const (
	quarantinePrefix = "cordon-quarantine-"
	kindQuarantine   = "quarantine"

	// Rule priorities: Azure evaluates the lowest number first, from 100
	// to 4096. The allows start at 100; the platform denies and the deny
	// alls come last, after every allow.
	firstAllowPriority = 100
	denyIMDSPriority   = 4094
	denyDNSPriority    = 4095
	denyAllPriority    = 4096
)

// quarantineName names the quarantine NSG of a policy digest
// ("sha256:<hex>") in a location: cordon-quarantine-<location>-<first 16
// hex digits>. The location is in the name because a resource group may
// hold VMs of several locations, and an NSG serves only NICs of its own.
func quarantineName(location, digest string) string {
	h := strings.TrimPrefix(digest, "sha256:")
	if len(h) > 16 {
		h = h[:16]
	}
	loc := strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9':
			return r
		case r >= 'A' && r <= 'Z':
			return r + 'a' - 'A'
		}
		return -1
	}, location)
	return quarantinePrefix + loc + "-" + h
}

// isCordonNSG reports whether an NSG id names one of Cordon's NSGs.
func isCordonNSG(id string) bool {
	return strings.HasPrefix(strings.ToLower(lastName(id)), quarantinePrefix)
}

func nsgID(sub, rg, name string) string {
	return "/subscriptions/" + sub + "/resourceGroups/" + rg + "/providers/Microsoft.Network/networkSecurityGroups/" + name
}

// rule is one NSG security rule, in the fields Cordon sets.
type rule struct {
	name      string
	inbound   bool
	allow     bool
	proto     armnetwork.SecurityRuleProtocol
	priority  int32
	src, dst  string // address prefixes: an address, a CIDR, "*" or a service tag
	dstPort   string // "*" or a port
	desc      string
	unmanaged bool // has fields Cordon does not set (lists, ASGs)
}

// key is what must match between a rule as wanted and as read.
func (r rule) key() string {
	return fmt.Sprintf("%s/%t/%t/%s/%d/%s/%s/%s/%t", strings.ToLower(r.name), r.inbound, r.allow,
		strings.ToLower(string(r.proto)), r.priority, strings.ToLower(r.src), strings.ToLower(r.dst), r.dstPort, r.unmanaged)
}

func addrPrefix(a netip.Addr) string { return a.Unmap().String() }

// quarantineRules let the VM reach the controller endpoints (TCP, to their
// port; the replies come back through the NSG's flow state), the policy's
// DNS resolvers (UDP and TCP 53), and the allowlist in both directions.
// Then they deny, explicitly, Azure's DNS and the instance metadata
// service, which NSGs let through unless a rule names their service
// tags, and last everything else both ways, before Azure's default rules
// (which allow the virtual network and outbound Internet) are reached.
func quarantineRules(p policy.Policy) []rule {
	var rs []rule
	prio := int32(firstAllowPriority)
	add := func(r rule) {
		r.priority = prio
		prio++
		rs = append(rs, r)
	}
	for i, e := range p.Controllers {
		add(rule{name: "cordon-controller-" + strconv.Itoa(i), allow: true, proto: armnetwork.SecurityRuleProtocolTCP,
			src: "*", dst: addrPrefix(e.Addr), dstPort: strconv.Itoa(int(e.Port)), desc: "cordon: controller " + e.String()})
	}
	for i, a := range p.DNS {
		for _, proto := range []armnetwork.SecurityRuleProtocol{armnetwork.SecurityRuleProtocolUDP, armnetwork.SecurityRuleProtocolTCP} {
			add(rule{name: "cordon-dns-" + strconv.Itoa(i) + "-" + strings.ToLower(string(proto)), allow: true, proto: proto,
				src: "*", dst: addrPrefix(a), dstPort: "53", desc: "cordon: dns " + a.String()})
		}
	}
	for i, a := range p.Allow {
		s := a.Masked().String()
		add(rule{name: "cordon-allow-in-" + strconv.Itoa(i), inbound: true, allow: true, proto: armnetwork.SecurityRuleProtocolAsterisk,
			src: s, dst: "*", dstPort: "*", desc: "cordon: allowlist " + s})
		add(rule{name: "cordon-allow-out-" + strconv.Itoa(i), allow: true, proto: armnetwork.SecurityRuleProtocolAsterisk,
			src: "*", dst: s, dstPort: "*", desc: "cordon: allowlist " + s})
	}
	all := armnetwork.SecurityRuleProtocolAsterisk
	rs = append(rs,
		rule{name: "cordon-deny-imds-out", proto: all, priority: denyIMDSPriority, src: "*", dst: "AzurePlatformIMDS", dstPort: "*",
			desc: "cordon: deny the instance metadata service (managed identity tokens)"},
		rule{name: "cordon-deny-azure-dns-out", proto: all, priority: denyDNSPriority, src: "*", dst: "AzurePlatformDNS", dstPort: "*",
			desc: "cordon: deny Azure DNS"},
		rule{name: "cordon-deny-all-in", inbound: true, proto: all, priority: denyAllPriority, src: "*", dst: "*", dstPort: "*",
			desc: "cordon: deny everything else"},
		rule{name: "cordon-deny-all-out", proto: all, priority: denyAllPriority, src: "*", dst: "*", dstPort: "*",
			desc: "cordon: deny everything else"},
	)
	return rs
}

func (r rule) sdk() *armnetwork.SecurityRule {
	dir, access := armnetwork.SecurityRuleDirectionOutbound, armnetwork.SecurityRuleAccessDeny
	if r.inbound {
		dir = armnetwork.SecurityRuleDirectionInbound
	}
	if r.allow {
		access = armnetwork.SecurityRuleAccessAllow
	}
	return &armnetwork.SecurityRule{
		Name: ptr(r.name),
		Properties: &armnetwork.SecurityRulePropertiesFormat{
			Access:                   &access,
			Direction:                &dir,
			Priority:                 ptr(r.priority),
			Protocol:                 ptr(r.proto),
			SourceAddressPrefix:      ptr(r.src),
			SourcePortRange:          ptr("*"),
			DestinationAddressPrefix: ptr(r.dst),
			DestinationPortRange:     ptr(r.dstPort),
			Description:              ptr(r.desc),
		},
	}
}

// fromSDK reads a rule as Azure returns it.
func fromSDK(s *armnetwork.SecurityRule) rule {
	var r rule
	if s == nil {
		return rule{unmanaged: true}
	}
	r.name = deref(s.Name)
	pr := s.Properties
	if pr == nil {
		r.unmanaged = true
		return r
	}
	r.inbound = pr.Direction != nil && *pr.Direction == armnetwork.SecurityRuleDirectionInbound
	r.allow = pr.Access != nil && *pr.Access == armnetwork.SecurityRuleAccessAllow
	r.proto = deref(pr.Protocol)
	r.priority = deref(pr.Priority)
	r.src, r.dst, r.dstPort = deref(pr.SourceAddressPrefix), deref(pr.DestinationAddressPrefix), deref(pr.DestinationPortRange)
	r.unmanaged = deref(pr.SourcePortRange) != "*" || len(pr.SourceAddressPrefixes) > 0 || len(pr.DestinationAddressPrefixes) > 0 ||
		len(pr.SourcePortRanges) > 0 || len(pr.DestinationPortRanges) > 0 ||
		len(pr.SourceApplicationSecurityGroups) > 0 || len(pr.DestinationApplicationSecurityGroups) > 0
	return r
}

func deref[T any](p *T) T {
	var zero T
	if p == nil {
		return zero
	}
	return *p
}

// ensureNSG finds or creates the quarantine NSG of the policy in the VM's
// resource group and location, and brings it to exactly the wanted rules
// with flushConnection on, in one write that replaces its whole rule set.
// It returns the NSG's id.
func (p *Plugin) ensureNSG(ctx context.Context, c *clients, log *slog.Logger, vm vmRef, pol policy.Policy, digest string) (string, error) {
	name := quarantineName(vm.location, digest)
	want := quarantineRules(pol)
	resp, err := c.nsgs.Get(ctx, vm.rg, name, nil)
	found := err == nil
	if err != nil && !isStatus(err, 404) {
		return "", apiError("Microsoft.Network/networkSecurityGroups/read", "get network security group "+name, err)
	}
	tags := map[string]*string{tagManaged: ptr(kindQuarantine), tagPolicy: ptr(digest)}
	if found {
		sg := resp.SecurityGroup
		if v := tagValue(sg.Tags, tagManaged); v != kindQuarantine {
			return "", fmt.Errorf("%w: network security group %s in %s is not Cordon's (no %s=%s tag): rename or delete it",
				cloud.ErrInvalid, name, vm.rg, tagManaged, kindQuarantine)
		}
		if !strings.EqualFold(normLocation(deref(sg.Location)), normLocation(vm.location)) {
			return "", fmt.Errorf("%w: network security group %s is in %s, not %s", cloud.ErrInvalid, name, deref(sg.Location), vm.location)
		}
		if sg.Properties != nil && deref(sg.Properties.FlushConnection) && sameRules(sg.Properties.SecurityRules, want) {
			return deref(sg.ID), nil
		}
		for k, v := range sg.Tags {
			if _, ours := tags[k]; !ours {
				tags[k] = v
			}
		}
	}
	rules := make([]*armnetwork.SecurityRule, 0, len(want))
	for _, r := range want {
		rules = append(rules, r.sdk())
	}
	poller, err := c.nsgs.BeginCreateOrUpdate(ctx, vm.rg, name, armnetwork.SecurityGroup{
		Location: ptr(vm.location),
		Tags:     tags,
		Properties: &armnetwork.SecurityGroupPropertiesFormat{
			FlushConnection: ptr(true),
			SecurityRules:   rules,
		},
	}, nil)
	if err != nil {
		return "", apiError("Microsoft.Network/networkSecurityGroups/write", "write network security group "+name, err)
	}
	out, err := poller.PollUntilDone(ctx, pollOptions(p.poll))
	if err != nil {
		return "", apiError("Microsoft.Network/networkSecurityGroups/write", "write network security group "+name+" (long-running operation)", err)
	}
	id := deref(out.ID)
	if id == "" {
		id = nsgID(vm.sub, vm.rg, name)
	}
	if found {
		log.Info("network security group rules set", "nsg", id, "rules", len(want))
	} else {
		log.Info("network security group created", "nsg", id, "rules", len(want))
	}
	return id, nil
}

func sameRules(have []*armnetwork.SecurityRule, want []rule) bool {
	if len(have) != len(want) {
		return false
	}
	h := make([]string, 0, len(have))
	for _, s := range have {
		h = append(h, fromSDK(s).key())
	}
	w := make([]string, 0, len(want))
	for _, r := range want {
		w = append(w, r.key())
	}
	slices.Sort(h)
	slices.Sort(w)
	return slices.Equal(h, w)
}

func normLocation(l string) string { return strings.ToLower(strings.ReplaceAll(l, " ", "")) }

// tagValue is the value of a tag, matched case-insensitively, "" when
// absent.
func tagValue(tags map[string]*string, key string) string {
	for k, v := range tags {
		if strings.EqualFold(k, key) && v != nil {
			return *v
		}
	}
	return ""
}
