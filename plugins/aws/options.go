package main

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/autoscaling"
	"github.com/aws/aws-sdk-go-v2/service/ec2/types"
	elbv2 "github.com/aws/aws-sdk-go-v2/service/elasticloadbalancingv2"
	elbtypes "github.com/aws/aws-sdk-go-v2/service/elasticloadbalancingv2/types"
	"github.com/aws/aws-sdk-go-v2/service/iam"
)

// revokePolicyName is the inline policy RevokeSessions puts on the
// instance's role.
const revokePolicyName = "cordon-revoke-older-sessions"

// detach takes the instance out of its Auto Scaling group, keeping the
// group's desired capacity (so the group launches a replacement and the
// isolated instance is kept for forensics), and deregisters it from every
// load balancer target group of its VPC that holds it, by instance id or
// by one of its private addresses. Every result, failure included, is a
// note; Release re-attaches nothing.
func (p *Plugin) detach(ctx context.Context, cfg aws.Config, log *slog.Logger, in types.Instance) []string {
	instID := aws.ToString(in.InstanceId)
	var notes []string

	as := autoscaling.NewFromConfig(cfg, func(o *autoscaling.Options) {
		if p.asEP != "" {
			o.BaseEndpoint = aws.String(p.asEP)
		}
	})
	out, err := as.DescribeAutoScalingInstances(ctx, &autoscaling.DescribeAutoScalingInstancesInput{InstanceIds: []string{instID}})
	switch {
	case err != nil:
		err = serviceError("autoscaling", err)
		log.Warn("detach: Auto Scaling lookup failed", "err", err)
		notes = append(notes, "detach: Auto Scaling group: failed: "+err.Error())
	case len(out.AutoScalingInstances) == 0:
		notes = append(notes, "detach: the instance is in no Auto Scaling group")
	default:
		group := aws.ToString(out.AutoScalingInstances[0].AutoScalingGroupName)
		_, err := as.DetachInstances(ctx, &autoscaling.DetachInstancesInput{
			AutoScalingGroupName:           aws.String(group),
			InstanceIds:                    []string{instID},
			ShouldDecrementDesiredCapacity: aws.Bool(false),
		})
		if err != nil {
			err = serviceError("autoscaling", err)
			log.Warn("detach from Auto Scaling group failed", "group", group, "err", err)
			notes = append(notes, fmt.Sprintf("detach: Auto Scaling group %s: failed: %v", group, err))
		} else {
			log.Info("detached from Auto Scaling group", "group", group)
			notes = append(notes, fmt.Sprintf("detach: taken out of Auto Scaling group %s, desired capacity kept "+
				"(the group launches a replacement; the instance is kept; Release does not re-attach it)", group))
		}
	}

	elb := elbv2.NewFromConfig(cfg, func(o *elbv2.Options) {
		if p.elbEP != "" {
			o.BaseEndpoint = aws.String(p.elbEP)
		}
	})
	ids := map[string]bool{instID: true} // what a target's id may be
	for _, n := range in.NetworkInterfaces {
		for _, a := range n.PrivateIpAddresses {
			ids[aws.ToString(a.PrivateIpAddress)] = true
		}
		for _, a := range n.Ipv6Addresses {
			ids[aws.ToString(a.Ipv6Address)] = true
		}
	}
	vpcs := map[string]bool{aws.ToString(in.VpcId): true}
	for _, n := range in.NetworkInterfaces {
		vpcs[aws.ToString(n.VpcId)] = true
	}
	found := 0
	pages := elbv2.NewDescribeTargetGroupsPaginator(elb, &elbv2.DescribeTargetGroupsInput{})
	for pages.HasMorePages() {
		page, err := pages.NextPage(ctx)
		if err != nil {
			err = serviceError("elasticloadbalancing", err)
			log.Warn("detach: target group lookup failed", "err", err)
			return append(notes, "detach: target groups: failed: "+err.Error())
		}
		for _, tg := range page.TargetGroups {
			if !vpcs[aws.ToString(tg.VpcId)] || (tg.TargetType != elbtypes.TargetTypeEnumInstance && tg.TargetType != elbtypes.TargetTypeEnumIp) {
				continue
			}
			arn, name := aws.ToString(tg.TargetGroupArn), aws.ToString(tg.TargetGroupName)
			h, err := elb.DescribeTargetHealth(ctx, &elbv2.DescribeTargetHealthInput{TargetGroupArn: tg.TargetGroupArn})
			if err != nil {
				err = serviceError("elasticloadbalancing", err)
				notes = append(notes, fmt.Sprintf("detach: target group %s (%s): failed: %v", name, arn, err))
				continue
			}
			var targets []elbtypes.TargetDescription
			var what []string
			for _, d := range h.TargetHealthDescriptions {
				if d.Target == nil || !ids[aws.ToString(d.Target.Id)] {
					continue
				}
				targets = append(targets, elbtypes.TargetDescription{Id: d.Target.Id, Port: d.Target.Port, AvailabilityZone: d.Target.AvailabilityZone})
				what = append(what, fmt.Sprintf("%s:%d", aws.ToString(d.Target.Id), aws.ToInt32(d.Target.Port)))
			}
			if len(targets) == 0 {
				continue
			}
			found++
			if _, err := elb.DeregisterTargets(ctx, &elbv2.DeregisterTargetsInput{TargetGroupArn: tg.TargetGroupArn, Targets: targets}); err != nil {
				err = serviceError("elasticloadbalancing", err)
				log.Warn("deregister failed", "target_group", arn, "err", err)
				notes = append(notes, fmt.Sprintf("detach: target group %s (%s): failed: %v", name, arn, err))
				continue
			}
			slices.Sort(what)
			log.Info("deregistered from target group", "target_group", arn, "targets", strings.Join(what, " "))
			notes = append(notes, fmt.Sprintf("detach: deregistered %s from target group %s (%s) (Release does not register it again)",
				strings.Join(what, " "), name, arn))
		}
	}
	if found == 0 {
		notes = append(notes, "detach: the instance is in no load balancer target group")
	}
	return notes
}

// revokePolicy is the policy AWS documents for revoking a role's
// temporary credentials (the console's AWSRevokeOlderSessions): deny
// everything to credentials issued before t.
func revokePolicy(t time.Time) string {
	type statement struct {
		Effect    string                       `json:"Effect"`
		Action    string                       `json:"Action"`
		Resource  string                       `json:"Resource"`
		Condition map[string]map[string]string `json:"Condition"`
	}
	doc := struct {
		Version   string    `json:"Version"`
		Statement statement `json:"Statement"`
	}{"2012-10-17", statement{
		Effect: "Deny", Action: "*", Resource: "*",
		Condition: map[string]map[string]string{
			"DateLessThan": {"aws:TokenIssueTime": t.UTC().Format(time.RFC3339)},
		},
	}}
	b, _ := json.Marshal(doc)
	return string(b)
}

// revokeSessions puts revokePolicy, as of now, on the role of the
// instance's profile, as an inline policy. The result, failure included,
// is a note.
func (p *Plugin) revokeSessions(ctx context.Context, cfg aws.Config, log *slog.Logger, in types.Instance) string {
	if in.IamInstanceProfile == nil || aws.ToString(in.IamInstanceProfile.Arn) == "" {
		return "revoke sessions: the instance has no instance profile, so no role sessions to revoke"
	}
	profileARN := aws.ToString(in.IamInstanceProfile.Arn)
	profile := profileARN[strings.LastIndex(profileARN, "/")+1:]
	c := iam.NewFromConfig(cfg, func(o *iam.Options) {
		if p.iamEP != "" {
			o.BaseEndpoint = aws.String(p.iamEP)
		}
	})
	out, err := c.GetInstanceProfile(ctx, &iam.GetInstanceProfileInput{InstanceProfileName: aws.String(profile)})
	if err != nil {
		err = serviceError("iam", err)
		log.Warn("revoke sessions: instance profile lookup failed", "profile", profileARN, "err", err)
		return fmt.Sprintf("revoke sessions: instance profile %s: failed: %v", profileARN, err)
	}
	if out.InstanceProfile == nil || len(out.InstanceProfile.Roles) == 0 {
		return fmt.Sprintf("revoke sessions: instance profile %s has no role, so no role sessions to revoke", profileARN)
	}
	role := aws.ToString(out.InstanceProfile.Roles[0].RoleName)
	now := time.Now().UTC().Truncate(time.Second)
	// A second later, so that credentials issued within the current second
	// are revoked too.
	cut := now.Add(time.Second)
	_, err = c.PutRolePolicy(ctx, &iam.PutRolePolicyInput{
		RoleName:       aws.String(role),
		PolicyName:     aws.String(revokePolicyName),
		PolicyDocument: aws.String(revokePolicy(cut)),
	})
	if err != nil {
		err = serviceError("iam", err)
		log.Warn("revoke sessions failed", "role", role, "err", err)
		return fmt.Sprintf("revoke sessions: role %s: failed: %v", role, err)
	}
	log.Info("role sessions revoked", "role", role, "before", cut.Format(time.RFC3339))
	return fmt.Sprintf("revoke sessions: role %s now denies everything to credentials issued before %s (inline policy %s). "+
		"This also cuts the role's other instances and users, until they get new credentials; the isolated instance "+
		"can still get new ones from the metadata service, which security groups do not filter (block it at the host layer "+
		"or remove the instance profile). Release does not remove the policy: delete it by hand when the incident allows",
		role, cut.Format(time.RFC3339), revokePolicyName)
}
