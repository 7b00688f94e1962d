package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ec2/types"

	"github.com/cordon-ir/cordon/pkg/cloud"
	"github.com/cordon-ir/cordon/pkg/policy"
)

// What a security group cannot do, said with every Isolate.
const (
	noteDNS = "DNS: the VPC's own resolver (Route 53 Resolver at the VPC's base address +2, and 169.254.169.253) " +
		"is not filtered by security groups, so the host can still resolve names and tunnel data through DNS: " +
		"the host layer must block DNS"
	noteLinkLocal = "metadata: the instance metadata service (169.254.169.254), time sync and DHCP are not filtered " +
		"by security groups either; the host can still fetch its role's credentials, which work from anywhere " +
		"(revoke the role's sessions)"
	noteTracked = "tracking: flows that stay tracked whatever the rules (ICMP, and what AWS calls automatically " +
		"tracked connections, such as through a NAT gateway or Network Load Balancer) survive the group change " +
		"until they idle out; the host layer cuts them"
)

// rollbackTimeout bounds putting interfaces back after a failure, which
// runs even when the caller's context is done.
const rollbackTimeout = 2 * time.Minute

// Isolate moves every network interface of the instance to the isolation
// group of p in its VPC, by way of cordon-untrack.
//
// Security groups track connections, and a tracked flow survives a change
// to a group that would not allow it. A flow that rules allow for all
// addresses and ports in both directions is not tracked, so each
// interface first goes to cordon-untrack (everything allowed both ways),
// which turns its flows untracked, then at once to the isolation group,
// which cuts them (AWS's incident response guidance for EC2). The
// original groups are recorded in instance tags before any change.
//
// On an error, the interfaces this call changed are put back to the groups
// they had, and the tags it wrote are put back too; what could not be put
// back is said in the error. Options are carried out after the network is
// cut, and each one's result, failure included, is a note: the network
// isolation stands whatever they do.
func (p *Plugin) Isolate(ctx context.Context, inst cloud.Instance, pol policy.Policy, o cloud.Options, orderID string) (cloud.Applied, error) {
	if err := pol.Validate(); err != nil {
		return cloud.Applied{}, fmt.Errorf("%w: %w", cloud.ErrInvalid, err)
	}
	if len(o.Incident) > maxTagValue || len(orderID) > maxTagValue {
		return cloud.Applied{}, fmt.Errorf("%w: incident name or order id longer than %d characters (an EC2 tag value)", cloud.ErrInvalid, maxTagValue)
	}
	pol = pol.Canonical()
	digest := pol.Digest()

	p.mu.Lock()
	defer p.mu.Unlock()
	log := p.log.With("order_id", orderID, "instance", inst.ID, "incident", o.Incident)
	c, err := p.client(ctx, inst.Region)
	if err != nil {
		return cloud.Applied{}, err
	}
	in, err := describeInstance(ctx, c, inst.ID)
	if err != nil {
		return cloud.Applied{}, err
	}
	enis := interfaces(in)
	if len(enis) == 0 {
		return cloud.Applied{}, fmt.Errorf("%w: %s has no network interface", cloud.ErrInvalid, inst.ID)
	}
	rec := readRecord(in.Tags)

	groups := map[string]vpcGroups{}
	for _, n := range enis {
		vpc := aws.ToString(n.VpcId)
		if _, ok := groups[vpc]; ok {
			continue
		}
		g, err := p.ensureGroups(ctx, c, vpc, pol, digest)
		if err != nil {
			return cloud.Applied{}, err
		}
		groups[vpc] = g
	}

	// Record the original groups and the policy before changing anything.
	var tags []types.Tag
	for _, n := range enis {
		id := aws.ToString(n.NetworkInterfaceId)
		if _, ok := rec.originals[id]; ok {
			continue
		}
		for _, g := range n.Groups {
			if isCordonGroup(aws.ToString(g.GroupName)) {
				return cloud.Applied{}, fmt.Errorf("%w: interface %s is in Cordon's group %s but its original groups are not recorded (tag %s%s): set its groups by hand, then isolate again",
					cloud.ErrInvalid, id, aws.ToString(g.GroupName), tagOriginal, id)
			}
		}
		tags = append(tags, originalTags(id, groupIDs(n.Groups))...)
	}
	set := func(k, v string) {
		if cur, ok := tagValue(in.Tags, k); !ok || cur != v {
			tags = append(tags, types.Tag{Key: aws.String(k), Value: aws.String(v)})
		}
	}
	set(tagPolicy, digest)
	if rec.since.IsZero() {
		set(tagSince, time.Now().UTC().Format(time.RFC3339))
		set(tagOrder, orderID)
	}
	prev := map[string]*string{} // the tags' values before, nil when absent
	for _, t := range tags {
		k := aws.ToString(t.Key)
		if v, ok := tagValue(in.Tags, k); ok {
			prev[k] = aws.String(v)
		} else {
			prev[k] = nil
		}
	}
	if len(tags) > 0 {
		if _, err := c.CreateTags(ctx, &ec2.CreateTagsInput{Resources: []string{inst.ID}, Tags: tags}); err != nil {
			return cloud.Applied{}, fmt.Errorf("record original groups on %s: %w", inst.ID, apiError(err))
		}
	}

	var changed []change
	for _, n := range enis {
		id, cur := aws.ToString(n.NetworkInterfaceId), groupIDs(n.Groups)
		g := groups[aws.ToString(n.VpcId)]
		if slices.Equal(cur, []string{g.isolation}) {
			continue
		}
		for i, to := range []string{g.untrack, g.isolation} {
			if err := p.setGroups(ctx, c, id, []string{to}); err != nil {
				// The interface changed if the first step went through, and
				// may have if the call's outcome is unknown.
				if i > 0 || errorCode(err) == "" {
					changed = append(changed, change{id, cur})
				}
				err = fmt.Errorf("move interface %s to %s: %w", id, to, err)
				return cloud.Applied{}, p.rollback(ctx, c, log, inst.ID, changed, prev, err)
			}
		}
		changed = append(changed, change{id, cur})
		log.Info("interface isolated", "eni", id, "group", g.isolation, "was", strings.Join(cur, " "))
	}

	var notes []string
	if o.TerminationProtection {
		notes = append(notes, p.protect(ctx, c, log, inst.ID))
	}
	if o.Tag {
		notes = append(notes, p.tagIncident(ctx, c, log, inst.ID, in.Tags, o.Incident))
	}
	if o.Snapshot {
		notes = append(notes, p.snapshot(ctx, c, log, in, o.Incident, orderID)...)
	}
	if o.Detach {
		notes = append(notes, p.detach(ctx, p.config(inst.Region), log, in)...)
	}
	if o.RevokeSessions {
		notes = append(notes, p.revokeSessions(ctx, p.config(inst.Region), log, in))
	}
	notes = append(notes, noteDNS, noteLinkLocal, noteTracked)

	state, err := p.readState(ctx, c, inst.ID)
	if err != nil {
		// The isolation is in place; only the read-back failed.
		notes = append(notes, "read-back failed: "+err.Error())
	}
	return cloud.Applied{State: state, Notes: notes}, nil
}

// change is an interface this call moved, and the groups it had before.
type change struct {
	eni    string
	before []string
}

func (p *Plugin) setGroups(ctx context.Context, c *ec2.Client, eni string, groups []string) error {
	_, err := c.ModifyNetworkInterfaceAttribute(ctx, &ec2.ModifyNetworkInterfaceAttributeInput{
		NetworkInterfaceId: aws.String(eni),
		Groups:             groups,
	})
	return apiError(err)
}

// rollback puts the changed interfaces back, last first, then the tags
// this call wrote (only when every interface is back: the record is what
// Release needs for one that is not). It returns cause joined with what
// could not be put back.
func (p *Plugin) rollback(ctx context.Context, c *ec2.Client, log *slog.Logger, instID string, changed []change, prev map[string]*string, cause error) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), rollbackTimeout)
	defer cancel()
	errs := []error{cause}
	for i := len(changed) - 1; i >= 0; i-- {
		ch := changed[i]
		if err := p.setGroups(ctx, c, ch.eni, ch.before); err != nil {
			errs = append(errs, fmt.Errorf("interface %s could not be put back to %s (see tag %s%s): %w",
				ch.eni, strings.Join(ch.before, " "), tagOriginal, ch.eni, err))
			continue
		}
		log.Warn("interface put back", "eni", ch.eni, "groups", strings.Join(ch.before, " "))
	}
	if len(errs) > 1 {
		return errors.Join(errs...)
	}
	var del []types.Tag
	var restore []types.Tag
	for k, v := range prev {
		if v == nil {
			del = append(del, types.Tag{Key: aws.String(k)})
		} else {
			restore = append(restore, types.Tag{Key: aws.String(k), Value: v})
		}
	}
	if len(del) > 0 {
		if _, err := c.DeleteTags(ctx, &ec2.DeleteTagsInput{Resources: []string{instID}, Tags: del}); err != nil {
			errs = append(errs, fmt.Errorf("remove the isolation record from %s: %w", instID, apiError(err)))
		}
	}
	if len(restore) > 0 {
		if _, err := c.CreateTags(ctx, &ec2.CreateTagsInput{Resources: []string{instID}, Tags: restore}); err != nil {
			errs = append(errs, fmt.Errorf("put back the isolation record of %s: %w", instID, apiError(err)))
		}
	}
	return errors.Join(errs...)
}

func (p *Plugin) protect(ctx context.Context, c *ec2.Client, log *slog.Logger, instID string) string {
	_, err := c.ModifyInstanceAttribute(ctx, &ec2.ModifyInstanceAttributeInput{
		InstanceId:            aws.String(instID),
		DisableApiTermination: &types.AttributeBooleanValue{Value: aws.Bool(true)},
	})
	if err != nil {
		err = apiError(err)
		log.Warn("termination protection failed", "err", err)
		return "termination protection: failed: " + err.Error()
	}
	log.Info("termination protection on")
	return "termination protection: on (Release leaves it on)"
}

func (p *Plugin) tagIncident(ctx context.Context, c *ec2.Client, log *slog.Logger, instID string, tags []types.Tag, incident string) string {
	if incident == "" {
		return "tag: the order names no incident; nothing tagged"
	}
	done := fmt.Sprintf("tag: %s=%s (Release leaves it)", tagIncident, incident)
	if v, ok := tagValue(tags, tagIncident); ok && v == incident {
		return done
	}
	_, err := c.CreateTags(ctx, &ec2.CreateTagsInput{
		Resources: []string{instID},
		Tags:      []types.Tag{{Key: aws.String(tagIncident), Value: aws.String(incident)}},
	})
	if err != nil {
		err = apiError(err)
		log.Warn("incident tag failed", "err", err)
		return "tag: failed: " + err.Error()
	}
	return done
}

// snapshot starts a snapshot of every EBS volume of the instance, once per
// order: volumes that already have a snapshot tagged with this order and
// instance are not snapshotted again.
func (p *Plugin) snapshot(ctx context.Context, c *ec2.Client, log *slog.Logger, in types.Instance, incident, orderID string) []string {
	instID := aws.ToString(in.InstanceId)
	var vols []string
	for _, b := range in.BlockDeviceMappings {
		if b.Ebs != nil && b.Ebs.VolumeId != nil {
			vols = append(vols, aws.ToString(b.Ebs.VolumeId))
		}
	}
	if len(vols) == 0 {
		return []string{"snapshot: the instance has no EBS volume"}
	}
	taken := map[string]string{}
	if orderID != "" {
		out, err := c.DescribeSnapshots(ctx, &ec2.DescribeSnapshotsInput{
			OwnerIds: []string{"self"},
			Filters: []types.Filter{
				{Name: aws.String("tag:" + tagOrder), Values: []string{orderID}},
				{Name: aws.String("tag:" + tagInstance), Values: []string{instID}},
			},
		})
		if err != nil {
			err = apiError(err)
			log.Warn("snapshot lookup failed", "err", err)
			return []string{"snapshot: failed: " + err.Error()}
		}
		for _, s := range out.Snapshots {
			taken[aws.ToString(s.VolumeId)] = aws.ToString(s.SnapshotId)
		}
	}
	tags := []types.Tag{
		{Key: aws.String(tagInstance), Value: aws.String(instID)},
		{Key: aws.String(tagOrder), Value: aws.String(orderID)},
	}
	desc := "Cordon: " + instID
	if incident != "" {
		tags = append(tags, types.Tag{Key: aws.String(tagIncident), Value: aws.String(incident)})
		desc += ", incident " + incident
	}
	if orderID != "" {
		desc += ", order " + orderID
	}
	if len(desc) > 255 {
		desc = desc[:255]
	}
	var notes []string
	for _, v := range vols {
		if s, ok := taken[v]; ok {
			notes = append(notes, fmt.Sprintf("snapshot: %s of %s (taken earlier for this order)", s, v))
			continue
		}
		out, err := c.CreateSnapshot(ctx, &ec2.CreateSnapshotInput{
			VolumeId:          aws.String(v),
			Description:       aws.String(desc),
			TagSpecifications: []types.TagSpecification{{ResourceType: types.ResourceTypeSnapshot, Tags: tags}},
		})
		if err != nil {
			err = apiError(err)
			log.Warn("snapshot failed", "volume", v, "err", err)
			notes = append(notes, fmt.Sprintf("snapshot: %s failed: %v", v, err))
			continue
		}
		log.Info("snapshot started", "volume", v, "snapshot", aws.ToString(out.SnapshotId))
		notes = append(notes, fmt.Sprintf("snapshot: %s of %s (%s)", aws.ToString(out.SnapshotId), v, out.State))
	}
	return notes
}
