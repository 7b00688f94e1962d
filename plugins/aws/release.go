package main

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ec2/types"

	"github.com/cordon-ir/cordon/pkg/cloud"
)

// Release gives every interface recorded on the instance its original
// groups back and removes the record. An original group deleted meanwhile
// is left out (the interface keeps the others); an interface none of whose
// groups is left gets its VPC's default group; both are said in the notes.
// An interface in one of Cordon's groups with no record is left as it is,
// and the error says so. It succeeds when nothing of Cordon's is in place,
// and returns ErrNotFound when the instance is gone. Cordon's groups stay
// in the VPC, where other isolations may use them.
func (p *Plugin) Release(ctx context.Context, inst cloud.Instance, orderID string) (cloud.Applied, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	log := p.log.With("order_id", orderID, "instance", inst.ID)
	c, err := p.client(ctx, inst.Region)
	if err != nil {
		return cloud.Applied{}, err
	}
	in, err := describeInstance(ctx, c, inst.ID)
	if err != nil {
		return cloud.Applied{}, err
	}
	rec := readRecord(in.Tags)

	attached := map[string]types.InstanceNetworkInterface{}
	var ids []string
	for _, n := range interfaces(in) {
		id := aws.ToString(n.NetworkInterfaceId)
		attached[id] = n
		ids = append(ids, id)
	}
	// Interfaces recorded but detached since are restored too.
	var detached []string
	for id := range rec.originals {
		if _, ok := attached[id]; !ok {
			detached = append(detached, id)
		}
	}
	slices.Sort(detached)
	ids = append(ids, detached...)

	var notes []string
	var errs []error
	var del []string
	for _, id := range ids {
		n, isAttached := attached[id]
		orig, recorded := rec.originals[id]
		if !recorded {
			for _, g := range n.Groups {
				if isCordonGroup(aws.ToString(g.GroupName)) {
					errs = append(errs, fmt.Errorf("%w: interface %s is in Cordon's group %s but its original groups are not recorded (tag %s%s): set its groups by hand",
						cloud.ErrInvalid, id, aws.ToString(g.GroupName), tagOriginal, id))
					break
				}
			}
			continue
		}
		if isAttached && sameSet(groupIDs(n.Groups), orig) {
			del = append(del, rec.keys[id]...)
			continue
		}
		vpc := aws.ToString(in.VpcId)
		if isAttached {
			vpc = aws.ToString(n.VpcId)
		}
		got, note, err := p.restore(ctx, c, id, vpc, orig)
		switch {
		case errorCode(err) == "InvalidNetworkInterfaceID.NotFound":
			notes = append(notes, fmt.Sprintf("interface %s no longer exists; its record is removed", id))
			del = append(del, rec.keys[id]...)
			continue
		case err != nil:
			errs = append(errs, fmt.Errorf("restore interface %s to %s: %w", id, strings.Join(orig, " "), err))
			continue
		}
		if note != "" {
			notes = append(notes, note)
		}
		del = append(del, rec.keys[id]...)
		log.Info("interface released", "eni", id, "groups", strings.Join(got, " "))
	}
	if len(errs) == 0 {
		for _, k := range []string{tagPolicy, tagSince, tagOrder} {
			if _, ok := tagValue(in.Tags, k); ok {
				del = append(del, k)
			}
		}
	}
	if len(del) > 0 {
		tags := make([]types.Tag, 0, len(del))
		for _, k := range del {
			tags = append(tags, types.Tag{Key: aws.String(k)})
		}
		if _, err := c.DeleteTags(ctx, &ec2.DeleteTagsInput{Resources: []string{inst.ID}, Tags: tags}); err != nil {
			errs = append(errs, fmt.Errorf("remove the isolation record from %s: %w", inst.ID, apiError(err)))
		}
	}
	if rec.empty() && len(errs) == 0 {
		notes = append(notes, "nothing of Cordon's was in place")
	} else {
		notes = append(notes, "Cordon's security groups (cordon-untrack, cordon-isolation-*) stay in the VPC for other isolations")
	}
	if v, ok := tagValue(in.Tags, tagIncident); ok {
		notes = append(notes, fmt.Sprintf("the %s=%s tag, snapshots and termination protection are left in place", tagIncident, v))
	}
	state, rerr := p.readState(ctx, c, inst.ID)
	if rerr != nil {
		notes = append(notes, "read-back failed: "+rerr.Error())
	}
	return cloud.Applied{State: state, Notes: notes}, errors.Join(errs...)
}

// restore sets an interface's groups back to orig. When EC2 says a group
// does not exist, it keeps those of orig still in the VPC, or the VPC's
// default group when none is, and returns a note saying which.
func (p *Plugin) restore(ctx context.Context, c *ec2.Client, eni, vpc string, orig []string) ([]string, string, error) {
	err := p.setGroups(ctx, c, eni, orig)
	if err == nil || errorCode(err) != "InvalidGroup.NotFound" {
		return orig, "", err
	}
	// A filter, unlike GroupIds, answers with the groups that exist
	// instead of failing on the first that does not.
	out, derr := c.DescribeSecurityGroups(ctx, &ec2.DescribeSecurityGroupsInput{
		Filters: []types.Filter{
			{Name: aws.String("vpc-id"), Values: []string{vpc}},
			{Name: aws.String("group-id"), Values: orig},
		},
	})
	if derr != nil {
		return nil, "", errors.Join(err, apiError(derr))
	}
	exists := map[string]bool{}
	for _, sg := range out.SecurityGroups {
		exists[aws.ToString(sg.GroupId)] = true
	}
	var keep, gone []string
	for _, g := range orig {
		if exists[g] {
			keep = append(keep, g)
		} else {
			gone = append(gone, g)
		}
	}
	var note string
	if len(keep) == 0 {
		def, derr := defaultGroup(ctx, c, vpc)
		if derr != nil {
			return nil, "", errors.Join(err, derr)
		}
		keep = []string{def}
		note = fmt.Sprintf("interface %s: its original groups %s were deleted meanwhile; it now has the VPC's default group %s",
			eni, strings.Join(gone, ", "), def)
	} else {
		note = fmt.Sprintf("interface %s: original group %s was deleted meanwhile; it has the others back: %s",
			eni, strings.Join(gone, ", "), strings.Join(keep, ", "))
	}
	if err := p.setGroups(ctx, c, eni, keep); err != nil {
		return nil, "", err
	}
	return keep, note, nil
}

func defaultGroup(ctx context.Context, c *ec2.Client, vpc string) (string, error) {
	out, err := c.DescribeSecurityGroups(ctx, &ec2.DescribeSecurityGroupsInput{
		Filters: []types.Filter{
			{Name: aws.String("vpc-id"), Values: []string{vpc}},
			{Name: aws.String("group-name"), Values: []string{"default"}},
		},
	})
	if err != nil {
		return "", fmt.Errorf("find the default group of %s: %w", vpc, apiError(err))
	}
	for _, sg := range out.SecurityGroups {
		if aws.ToString(sg.GroupName) == "default" {
			return aws.ToString(sg.GroupId), nil
		}
	}
	return "", fmt.Errorf("%s has no default security group", vpc)
}

// Status reads what is in place: isolated when the record is on the
// instance and every interface has only the isolation group of the
// recorded policy.
func (p *Plugin) Status(ctx context.Context, inst cloud.Instance) (cloud.Status, error) {
	c, err := p.client(ctx, inst.Region)
	if err != nil {
		return cloud.Status{}, err
	}
	in, err := describeInstance(ctx, c, inst.ID)
	if err != nil {
		return cloud.Status{}, err
	}
	rec := readRecord(in.Tags)
	st := cloud.Status{Since: rec.since, State: stateLines(in, rec)}
	iso := ""
	if rec.policy != "" {
		iso = isolationName(rec.policy)
	}
	var missing []string
	cordon := false
	enis := interfaces(in)
	for _, n := range enis {
		id := aws.ToString(n.NetworkInterfaceId)
		names := make([]string, 0, len(n.Groups))
		for _, g := range n.Groups {
			name := aws.ToString(g.GroupName)
			names = append(names, name)
			cordon = cordon || isCordonGroup(name)
		}
		orig, recorded := rec.originals[id]
		switch {
		case iso != "" && slices.Equal(names, []string{iso}) && recorded:
		case iso != "" && slices.Equal(names, []string{iso}):
			missing = append(missing, id+" is isolated but its original groups are not recorded")
		case recorded && sameSet(groupIDs(n.Groups), orig):
			missing = append(missing, id+" has its original groups")
		case !recorded && iso != "":
			missing = append(missing, id+" is not isolated (attached after isolation?)")
		default:
			missing = append(missing, fmt.Sprintf("%s has %s", id, strings.Join(names, ", ")))
		}
	}
	st.Isolated = iso != "" && len(enis) > 0 && len(missing) == 0
	if !st.Isolated && (!rec.empty() || cordon) {
		st.Partial = strings.Join(missing, "; ")
	}
	return st, nil
}

// readState describes the instance's interfaces as EC2 now reports them.
func (p *Plugin) readState(ctx context.Context, c *ec2.Client, id string) ([]string, error) {
	in, err := describeInstance(ctx, c, id)
	if err != nil {
		return nil, err
	}
	return stateLines(in, readRecord(in.Tags)), nil
}

// stateLines are "eni-1: sg-iso (was sg-web, sg-db)" for a recorded
// interface, "eni-1: sg-web, sg-db" for another.
func stateLines(in types.Instance, rec record) []string {
	var lines []string
	for _, n := range interfaces(in) {
		id := aws.ToString(n.NetworkInterfaceId)
		line := id + ": " + strings.Join(groupIDs(n.Groups), ", ")
		if orig, ok := rec.originals[id]; ok {
			line += " (was " + strings.Join(orig, ", ") + ")"
		}
		lines = append(lines, line)
	}
	return lines
}
