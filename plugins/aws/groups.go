package main

import (
	"cmp"
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ec2/types"

	"github.com/cordon-ir/cordon/pkg/cloud"
	"github.com/cordon-ir/cordon/pkg/policy"
)

// Cordon's security groups, one of each per VPC and policy, found by name
// and tagged cordon:managed. They are shared by every isolated instance of
// the VPC and never deleted by Cordon (another instance may use them).
const (
	untrackName     = "cordon-untrack"
	isolationPrefix = "cordon-isolation-"
	kindUntrack     = "untrack"
	kindIsolation   = "isolation"
)

// isolationName names the isolation group of a policy digest
// ("sha256:<hex>"): cordon-isolation-<first 16 hex digits>.
func isolationName(digest string) string {
	h := strings.TrimPrefix(digest, "sha256:")
	if len(h) > 16 {
		h = h[:16]
	}
	return isolationPrefix + h
}

func isCordonGroup(name string) bool {
	return name == untrackName || strings.HasPrefix(name, isolationPrefix)
}

// rule is one security group rule: a direction, a protocol ("-1" for all,
// "tcp", "udp"), a port range (zero for "-1") and a CIDR.
type rule struct {
	egress   bool
	proto    string
	from, to int32
	cidr     string
}

type ruleDesc struct {
	rule
	desc string
}

func hostPrefix(a netip.Addr) string {
	return netip.PrefixFrom(a, a.BitLen()).String()
}

// untrackRules allow everything both ways: a flow that such rules allow in
// both directions, for all ports and 0.0.0.0/0 (or ::/0), is not tracked,
// so the next group change cuts it at once (EC2 security group connection
// tracking, "Untracked connections").
func untrackRules() []ruleDesc {
	var rs []ruleDesc
	for _, egress := range []bool{false, true} {
		for _, c := range []string{"0.0.0.0/0", "::/0"} {
			rs = append(rs, ruleDesc{rule{egress: egress, proto: "-1", cidr: c}, "cordon: untrack existing flows"})
		}
	}
	return rs
}

// isolationRules let the host reach the controller endpoints (TCP, to
// their port; the replies come back through the group's connection
// tracking), the DNS resolvers of the policy (UDP and TCP 53), and the
// allowlist in both directions. Nothing else: no rule lets the controller
// or anyone else open a connection to the host, except the allowlist.
func isolationRules(p policy.Policy) []ruleDesc {
	var rs []ruleDesc
	for _, e := range p.Controllers {
		rs = append(rs, ruleDesc{rule{egress: true, proto: "tcp", from: int32(e.Port), to: int32(e.Port), cidr: hostPrefix(e.Addr)}, "cordon: controller"})
	}
	for _, a := range p.DNS {
		for _, proto := range []string{"udp", "tcp"} {
			rs = append(rs, ruleDesc{rule{egress: true, proto: proto, from: 53, to: 53, cidr: hostPrefix(a)}, "cordon: dns"})
		}
	}
	for _, a := range p.Allow {
		for _, egress := range []bool{false, true} {
			rs = append(rs, ruleDesc{rule{egress: egress, proto: "-1", cidr: a.String()}, "cordon: allowlist"})
		}
	}
	return rs
}

// vpcGroups are Cordon's two groups in one VPC.
type vpcGroups struct {
	untrack, isolation string
}

// ensureGroups finds or creates the untrack and isolation groups in vpc
// and brings their rules to exactly what they must be.
func (p *Plugin) ensureGroups(ctx context.Context, c *ec2.Client, vpc string, pol policy.Policy, digest string) (vpcGroups, error) {
	u, err := p.ensureGroup(ctx, c, vpc, untrackName, kindUntrack, "",
		"Cordon: allows all traffic so that tracked flows become untracked; used for a moment while isolating",
		untrackRules())
	if err != nil {
		return vpcGroups{}, err
	}
	i, err := p.ensureGroup(ctx, c, vpc, isolationName(digest), kindIsolation, digest,
		"Cordon isolation: controller endpoints and allowlist of policy "+digest,
		isolationRules(pol))
	if err != nil {
		return vpcGroups{}, err
	}
	return vpcGroups{untrack: u, isolation: i}, nil
}

func (p *Plugin) ensureGroup(ctx context.Context, c *ec2.Client, vpc, name, kind, digest, desc string, want []ruleDesc) (string, error) {
	sg, found, err := findGroup(ctx, c, vpc, name)
	if err != nil {
		return "", err
	}
	if !found {
		tags := []types.Tag{{Key: aws.String(tagManaged), Value: aws.String(kind)}}
		if digest != "" {
			tags = append(tags, types.Tag{Key: aws.String(tagPolicy), Value: aws.String(digest)})
		}
		out, err := c.CreateSecurityGroup(ctx, &ec2.CreateSecurityGroupInput{
			GroupName:   aws.String(name),
			Description: aws.String(desc),
			VpcId:       aws.String(vpc),
			TagSpecifications: []types.TagSpecification{{
				ResourceType: types.ResourceTypeSecurityGroup,
				Tags:         tags,
			}},
		})
		if err != nil && errorCode(err) != "InvalidGroup.Duplicate" {
			return "", fmt.Errorf("create security group %s in %s: %w", name, vpc, apiError(err))
		}
		if err == nil {
			p.log.Info("security group created", "group", aws.ToString(out.GroupId), "name", name, "vpc", vpc)
		}
		// Read it back: a new group comes with an allow-all egress rule,
		// which the reconcile below removes.
		if sg, found, err = findGroup(ctx, c, vpc, name); err != nil {
			return "", err
		}
		if !found {
			return "", fmt.Errorf("security group %s in %s: created but not found", name, vpc)
		}
	}
	if v, _ := tagValue(sg.Tags, tagManaged); v != kind {
		return "", fmt.Errorf("%w: security group %s (%s) in %s is not Cordon's (no %s=%s tag): rename or delete it",
			cloud.ErrInvalid, name, aws.ToString(sg.GroupId), vpc, tagManaged, kind)
	}
	if err := p.reconcile(ctx, c, sg, want); err != nil {
		return "", fmt.Errorf("security group %s (%s): %w", name, aws.ToString(sg.GroupId), err)
	}
	return aws.ToString(sg.GroupId), nil
}

func findGroup(ctx context.Context, c *ec2.Client, vpc, name string) (types.SecurityGroup, bool, error) {
	out, err := c.DescribeSecurityGroups(ctx, &ec2.DescribeSecurityGroupsInput{
		Filters: []types.Filter{
			{Name: aws.String("vpc-id"), Values: []string{vpc}},
			{Name: aws.String("group-name"), Values: []string{name}},
		},
	})
	if err != nil {
		return types.SecurityGroup{}, false, fmt.Errorf("find security group %s in %s: %w", name, vpc, apiError(err))
	}
	for _, sg := range out.SecurityGroups {
		if aws.ToString(sg.GroupName) == name && aws.ToString(sg.VpcId) == vpc {
			return sg, true, nil
		}
	}
	return types.SecurityGroup{}, false, nil
}

// reconcile brings the group's rules to exactly want: it first revokes
// every other rule (whatever its form: CIDR, group, prefix list), then
// authorizes what is missing, so that the group is at no moment more open
// than it was before or will be after.
func (p *Plugin) reconcile(ctx context.Context, c *ec2.Client, sg types.SecurityGroup, want []ruleDesc) error {
	wanted := map[rule]string{}
	for _, r := range want {
		wanted[r.rule] = r.desc
	}
	have := map[rule]bool{}
	extra := func(perms []types.IpPermission, egress bool) []types.IpPermission {
		var rev []types.IpPermission
		for _, perm := range perms {
			proto := normProto(aws.ToString(perm.IpProtocol))
			from, to := aws.ToInt32(perm.FromPort), aws.ToInt32(perm.ToPort)
			if proto == "-1" {
				from, to = 0, 0
			}
			base := types.IpPermission{IpProtocol: perm.IpProtocol, FromPort: perm.FromPort, ToPort: perm.ToPort}
			for _, r := range perm.IpRanges {
				k := rule{egress, proto, from, to, normCIDR(aws.ToString(r.CidrIp))}
				if _, ok := wanted[k]; ok {
					have[k] = true
					continue
				}
				x := base
				x.IpRanges = []types.IpRange{{CidrIp: r.CidrIp}}
				rev = append(rev, x)
			}
			for _, r := range perm.Ipv6Ranges {
				k := rule{egress, proto, from, to, normCIDR(aws.ToString(r.CidrIpv6))}
				if _, ok := wanted[k]; ok {
					have[k] = true
					continue
				}
				x := base
				x.Ipv6Ranges = []types.Ipv6Range{{CidrIpv6: r.CidrIpv6}}
				rev = append(rev, x)
			}
			for _, g := range perm.UserIdGroupPairs {
				x := base
				x.UserIdGroupPairs = []types.UserIdGroupPair{{GroupId: g.GroupId}}
				rev = append(rev, x)
			}
			for _, pl := range perm.PrefixListIds {
				x := base
				x.PrefixListIds = []types.PrefixListId{{PrefixListId: pl.PrefixListId}}
				rev = append(rev, x)
			}
		}
		return rev
	}
	revIn := extra(sg.IpPermissions, false)
	revOut := extra(sg.IpPermissionsEgress, true)
	var addIn, addOut []types.IpPermission
	keys := make([]rule, 0, len(wanted))
	for k := range wanted {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b rule) int {
		return cmp.Or(cmp.Compare(a.cidr, b.cidr), cmp.Compare(a.proto, b.proto), cmp.Compare(a.from, b.from))
	})
	for _, k := range keys {
		if have[k] {
			continue
		}
		perm := types.IpPermission{IpProtocol: aws.String(k.proto)}
		if k.proto != "-1" {
			perm.FromPort, perm.ToPort = aws.Int32(k.from), aws.Int32(k.to)
		}
		if strings.Contains(k.cidr, ":") {
			perm.Ipv6Ranges = []types.Ipv6Range{{CidrIpv6: aws.String(k.cidr), Description: aws.String(wanted[k])}}
		} else {
			perm.IpRanges = []types.IpRange{{CidrIp: aws.String(k.cidr), Description: aws.String(wanted[k])}}
		}
		if k.egress {
			addOut = append(addOut, perm)
		} else {
			addIn = append(addIn, perm)
		}
	}
	id := sg.GroupId
	if len(revIn) > 0 {
		if _, err := c.RevokeSecurityGroupIngress(ctx, &ec2.RevokeSecurityGroupIngressInput{GroupId: id, IpPermissions: revIn}); err != nil {
			return fmt.Errorf("revoke ingress: %w", apiError(err))
		}
	}
	if len(revOut) > 0 {
		if _, err := c.RevokeSecurityGroupEgress(ctx, &ec2.RevokeSecurityGroupEgressInput{GroupId: id, IpPermissions: revOut}); err != nil {
			return fmt.Errorf("revoke egress: %w", apiError(err))
		}
	}
	if len(addIn) > 0 {
		if _, err := c.AuthorizeSecurityGroupIngress(ctx, &ec2.AuthorizeSecurityGroupIngressInput{GroupId: id, IpPermissions: addIn}); err != nil {
			return fmt.Errorf("authorize ingress: %w", apiError(err))
		}
	}
	if len(addOut) > 0 {
		if _, err := c.AuthorizeSecurityGroupEgress(ctx, &ec2.AuthorizeSecurityGroupEgressInput{GroupId: id, IpPermissions: addOut}); err != nil {
			return fmt.Errorf("authorize egress: %w", apiError(err))
		}
	}
	if n := len(revIn) + len(revOut) + len(addIn) + len(addOut); n > 0 {
		p.log.Info("security group rules set", "group", aws.ToString(id), "name", aws.ToString(sg.GroupName),
			"revoked", len(revIn)+len(revOut), "authorized", len(addIn)+len(addOut))
	}
	return nil
}

// normProto maps EC2's protocol spellings to the names rules use.
func normProto(p string) string {
	switch strings.ToLower(p) {
	case "6":
		return "tcp"
	case "17":
		return "udp"
	case "all":
		return "-1"
	}
	return strings.ToLower(p)
}

func normCIDR(s string) string {
	if p, err := netip.ParsePrefix(s); err == nil {
		return p.Masked().String()
	}
	return s
}
